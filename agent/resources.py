"""The one place that finds the files shipped with the product.

In a wheel, prompts/, context/, memory/ and templates/ are force-included under ``agent/_data``; in a
source checkout (editable install, tests) they sit beside the package. Nothing is looked up relative to
the current directory, so the tool works from anywhere.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
KINDS = ("prompts", "context", "memory", "templates")


@cache
def shipped(kind: str) -> Path:
    """Directory of a shipped resource kind (``prompts``, ``context``, ``memory``, ``templates``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown resource kind {kind!r}; known: {', '.join(KINDS)}")
    for candidate in (PACKAGE_DIR / "_data" / kind, PACKAGE_DIR.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"shipped resource folder {kind!r} is missing from the installation at {PACKAGE_DIR}"
    )


def user_data_dir() -> Path:
    """Where the agent keeps its state: the plugin's data dir inside Claude Code, else XDG."""
    if plugin_data := os.environ.get("CLAUDE_PLUGIN_DATA"):
        return Path(plugin_data)
    if xdg := os.environ.get("XDG_DATA_HOME"):
        return Path(xdg) / "data-agent"
    return Path.home() / ".local" / "share" / "data-agent"


def default_memory_dir() -> Path:
    if env := os.environ.get("DATA_AGENT_MEMORY_DIR"):
        return Path(env)
    return user_data_dir() / "memory"
