"""The one place that talks to the Anthropic Messages API (the planner, the extractor and calibrate).

anthropic is imported here, lazily, and only on the Claude path. API failures become PlannerErrors that
say what happened and what to do; the SDK's own retries (exponential backoff, honouring ``retry-after``)
handle rate limits and 529 overloaded before we give up. Usage and an estimated cost are tallied per run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agent.config import ClaudeSettings
from agent.errors import PlannerError

T = TypeVar("T")

RULES_HINT = "use --planner rules to design offline"

# USD per million tokens: (input, output). Cache writes cost 1.25x input (5-minute TTL), cache reads 0.1x.
# Published list prices when this was written; the report calls the result an estimate.
PRICES: dict[str, tuple[float, float]] = {
    "claude-opus-4-6": (5.0, 25.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
}
CACHE_WRITE_MULTIPLIER = 1.25
CACHE_READ_MULTIPLIER = 0.1


def price_for(model: str) -> tuple[float, float] | None:
    """The longest price-table prefix of ``model`` (``claude-sonnet-4-6`` -> ``claude-sonnet-4``)."""
    best = max((p for p in PRICES if model.startswith(p)), key=len, default=None)
    return PRICES[best] if best else None


@dataclass
class UsageTally:
    """Tokens across every call of one run, and what they cost (estimated)."""

    model: str
    calls: list[dict[str, Any]] = field(default_factory=list)

    def add(self, purpose: str, usage: Any) -> None:
        self.calls.append(
            {
                "purpose": purpose,
                "input_tokens": int(getattr(usage, "input_tokens", 0) or 0),
                "output_tokens": int(getattr(usage, "output_tokens", 0) or 0),
                "cache_creation_input_tokens": int(getattr(usage, "cache_creation_input_tokens", 0) or 0),
                "cache_read_input_tokens": int(getattr(usage, "cache_read_input_tokens", 0) or 0),
            }
        )

    def total(self, key: str) -> int:
        return sum(c[key] for c in self.calls)

    def estimated_cost_usd(self) -> float | None:
        price = price_for(self.model)
        if price is None:
            return None
        p_in, p_out = price
        cost = (
            self.total("input_tokens") * p_in
            + self.total("output_tokens") * p_out
            + self.total("cache_creation_input_tokens") * p_in * CACHE_WRITE_MULTIPLIER
            + self.total("cache_read_input_tokens") * p_in * CACHE_READ_MULTIPLIER
        ) / 1_000_000
        return round(cost, 6)

    def report(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "requests": len(self.calls),
            "input_tokens": self.total("input_tokens"),
            "output_tokens": self.total("output_tokens"),
            "cache_creation_input_tokens": self.total("cache_creation_input_tokens"),
            "cache_read_input_tokens": self.total("cache_read_input_tokens"),
            "estimated_cost_usd": self.estimated_cost_usd(),
            "calls": list(self.calls),
        }


def make_client(settings: ClaudeSettings) -> Any:
    """An ``anthropic.Anthropic`` client, or a PlannerError when there is no key."""
    key = os.environ.get("ANTHROPIC_API_KEY", "").strip()
    if not key:
        raise PlannerError(
            "the Claude planner needs an Anthropic API key and ANTHROPIC_API_KEY is not set",
            field="planner",
            hint=f"export ANTHROPIC_API_KEY=..., or {RULES_HINT}",
        )
    import anthropic

    kwargs: dict[str, Any] = {"api_key": key, "max_retries": settings.retries, "timeout": settings.timeout}
    if settings.base_url:
        kwargs["base_url"] = settings.base_url
    return anthropic.Anthropic(**kwargs)


def call(settings: ClaudeSettings, what: str, fn: Callable[[], T]) -> T:
    """Run one API call; turn the SDK's exceptions into PlannerErrors a user can act on."""
    import anthropic

    tries = f"after {settings.retries} retr{'y' if settings.retries == 1 else 'ies'}"
    try:
        return fn()
    except anthropic.AuthenticationError as exc:
        raise PlannerError(
            f"the Anthropic API rejected the API key (401) while {what}: {_detail(exc)}",
            field="ANTHROPIC_API_KEY",
            hint=f"check ANTHROPIC_API_KEY, or {RULES_HINT}",
        ) from None
    except anthropic.PermissionDeniedError as exc:
        raise PlannerError(
            f"the API key may not use model {settings.model!r} (403) while {what}: {_detail(exc)}",
            field="model",
            hint=f"choose another --model, or {RULES_HINT}",
        ) from None
    except anthropic.NotFoundError as exc:
        raise PlannerError(
            f"model {settings.model!r} was not found (404) while {what}: {_detail(exc)}",
            field="model",
            hint="set --model, $DATA_AGENT_MODEL or model in the config file",
        ) from None
    except anthropic.RateLimitError as exc:
        raise PlannerError(
            f"rate limited by the Anthropic API (429) while {what}, still {tries} with backoff: "
            f"{_detail(exc)}",
            hint=f"wait and run again, raise --retries, or {RULES_HINT}",
        ) from None
    except anthropic.InternalServerError as exc:
        status = getattr(exc, "status_code", 500)
        kind = "overloaded" if status == 529 else "failing"
        raise PlannerError(
            f"the Anthropic API is {kind} ({status}) while {what}, still {tries} with backoff: {_detail(exc)}",
            hint=f"try again later, raise --retries, or {RULES_HINT}",
        ) from None
    except anthropic.APITimeoutError:
        raise PlannerError(
            f"the Anthropic API did not answer within {settings.timeout:g}s while {what} ({tries})",
            field="timeout",
            hint=f"raise --timeout (or $DATA_AGENT_TIMEOUT), or {RULES_HINT}",
        ) from None
    except anthropic.APIConnectionError as exc:
        raise PlannerError(
            f"cannot reach the Anthropic API while {what} ({tries}): {exc}",
            hint=f"check the network or base URL, or {RULES_HINT}",
        ) from None
    except anthropic.APIStatusError as exc:
        raise PlannerError(
            f"the Anthropic API refused the request ({exc.status_code}) while {what}: {_detail(exc)}",
            hint=RULES_HINT,
        ) from None


def _detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(exc, "message", exc))
