"""Settings for the Claude planner: model, max_tokens, timeout, retries.

Each setting is resolved in this order, first found wins:

1. an explicit override (a command-line flag, or ``AgentConfig(claude={...})`` for library callers);
2. the environment: ``DATA_AGENT_MODEL``, ``DATA_AGENT_MAX_TOKENS``, ``DATA_AGENT_TIMEOUT``,
   ``DATA_AGENT_RETRIES``, ``DATA_AGENT_BASE_URL``;
3. the ``[claude]`` table of the configuration file: ``$DATA_AGENT_CONFIG``, else
   ``$XDG_CONFIG_HOME/data-agent/config.toml`` (``~/.config/data-agent/config.toml``);
4. the defaults below.

The calibrated tokenizer safety factor (``data-agent calibrate``) lives in the user data dir, per model.
Nothing here imports anthropic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.errors import PlannerError

DEFAULT_MODEL = "claude-sonnet-4-6"
DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_MODEL,
    "max_tokens": 32000,
    "timeout": 600.0,
    "retries": 4,
    "base_url": None,
}
ENV = {
    "model": "DATA_AGENT_MODEL",
    "max_tokens": "DATA_AGENT_MAX_TOKENS",
    "timeout": "DATA_AGENT_TIMEOUT",
    "retries": "DATA_AGENT_RETRIES",
    "base_url": "DATA_AGENT_BASE_URL",
}
_TYPES = {"model": str, "max_tokens": int, "timeout": float, "retries": int, "base_url": str}
_LIMITS = {"max_tokens": (1, 128_000), "timeout": (0.01, 3600.0), "retries": (0, 20)}


@dataclass(frozen=True)
class ClaudeSettings:
    model: str
    max_tokens: int
    timeout: float
    retries: int
    base_url: str | None
    sources: dict[str, str]  # setting -> where its value came from (flag, env VAR, file path, default)

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("sources")
        return data


def config_path() -> Path:
    if env := os.environ.get("DATA_AGENT_CONFIG"):
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "data-agent" / "config.toml"


def _file_settings(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PlannerError(f"malformed TOML: {exc}", path=path) from None
    except OSError as exc:
        raise PlannerError(f"cannot read configuration: {exc.strerror}", path=path) from None
    table = data.get("claude", {})
    if not isinstance(table, dict):
        raise PlannerError("[claude] must be a table", path=path, field="claude")
    unknown = sorted(set(table) - set(DEFAULTS))
    if unknown:
        raise PlannerError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}",
            path=path,
            field="claude",
        )
    return table


def _coerce(key: str, value: Any, origin: str) -> Any:
    if value is None:
        return None
    kind = _TYPES[key]
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        out = kind(value)
    except (TypeError, ValueError):
        raise PlannerError(
            f"{key} must be a{'n integer' if kind is int else ' number' if kind is float else ' string'}, "
            f"got {value!r}",
            field=key,
            hint=f"set in {origin}",
        ) from None
    if key in _LIMITS:
        lo, hi = _LIMITS[key]
        if not lo <= out <= hi:
            raise PlannerError(f"{key} must be between {lo:g} and {hi:g}, got {out}", field=key, hint=origin)
    if kind is str and not out.strip():
        raise PlannerError(f"{key} must not be empty", field=key, hint=origin)
    return out


def resolve(overrides: Mapping[str, Any] | None = None) -> ClaudeSettings:
    """The effective settings: ``overrides`` > environment > config file > defaults."""
    explicit = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(explicit) - set(DEFAULTS))
    if unknown:
        raise PlannerError(f"unknown Claude setting(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    path = config_path()
    from_file = _file_settings(path)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, default in DEFAULTS.items():
        if explicit.get(key) is not None:
            values[key], sources[key] = _coerce(key, explicit[key], "a flag"), "flag"
        elif os.environ.get(ENV[key]):
            values[key] = _coerce(key, os.environ[ENV[key]], f"${ENV[key]}")
            sources[key] = f"${ENV[key]}"
        elif from_file.get(key) is not None:
            values[key], sources[key] = _coerce(key, from_file[key], str(path)), str(path)
        else:
            values[key], sources[key] = default, "default"
    return ClaudeSettings(**values, sources=sources)


# ---------------------------------------------------------------------------------------------------
# The calibrated safety factor


def calibration_path() -> Path:
    from agent.resources import user_data_dir

    return user_data_dir() / "calibration.json"


def load_calibration() -> dict[str, Any]:
    path = calibration_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_calibration(model: str, entry: dict[str, Any]) -> Path:
    path = calibration_path()
    data = load_calibration()
    data.setdefault("models", {})[model] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def claude_safety_factor(model: str | None = None) -> float:
    """The measured Claude/tiktoken token ratio for ``model`` (calibrate), else the published default."""
    from agent.tokens import DEFAULT_CLAUDE_SAFETY_FACTOR

    model = model or resolve().model
    entry = load_calibration().get("models", {}).get(model)
    try:
        factor = float(entry["factor"]) if isinstance(entry, dict) else None
    except (KeyError, TypeError, ValueError):
        factor = None
    return factor if factor and 0.5 <= factor <= 3.0 else DEFAULT_CLAUDE_SAFETY_FACTOR
