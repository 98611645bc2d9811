"""data-agent: a data-engineer subagent with a real runtime behind it.

The package root stays import-light: ``data-agent --help`` must not pay for chromadb or anthropic,
so the public names are resolved lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["DataEngineerAgent", "DesignResult", "DelegationTask", "DesignRequest", "__version__"]

if TYPE_CHECKING:
    from agent.models import DelegationTask, DesignRequest
    from agent.runtime import DataEngineerAgent, DesignResult


def __getattr__(name: str) -> Any:
    if name in ("DataEngineerAgent", "DesignResult"):
        from agent import runtime

        return getattr(runtime, name)
    if name in ("DelegationTask", "DesignRequest"):
        from agent import models

        return getattr(models, name)
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
