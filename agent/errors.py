"""Typed errors. Each carries where the problem is (file, line, field) so the CLI can print one line."""

from __future__ import annotations

from pathlib import Path


class DataAgentError(Exception):
    """Base of every error the tool reports to a user. ``exit_code`` is what the CLI returns."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.hint = hint

    def where(self) -> str:
        parts = []
        if self.path:
            parts.append(self.path + (f":{self.line}" if self.line else ""))
        if self.field:
            parts.append(f"field '{self.field}'")
        return ", ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        text = f"{where}: {self.message}" if where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "path": self.path,
            "line": self.line,
            "field": self.field,
            "hint": self.hint,
        }


class RequestError(DataAgentError):
    """The design request is missing, unreadable or invalid."""


class PolicyError(DataAgentError):
    """Steering policies could not be loaded at all, or lint found errors."""


class MemoryStoreError(DataAgentError):
    """The memory store is unavailable, corrupted, busy, or opened with the wrong embedder."""

    exit_code = 3


class RenderError(DataAgentError):
    """A template failed to render, or the bundle could not be written."""


class OutputError(DataAgentError):
    """The output location cannot be written."""


class ValidationFailure(DataAgentError):
    """A generated artifact failed its format's checker."""


class DelegationError(DataAgentError):
    """A delegation task is not launchable (no prompt, unknown agent, cycle, ...)."""


class PlannerError(DataAgentError):
    """The planner could not produce a valid design (no API key, rate limits, invalid replies)."""

    exit_code = 4
