"""data-agent delegate BUNDLE: re-emit the delegation tasks of a saved design."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("delegate", help="re-emit the delegation tasks of a saved design bundle")
    p.add_argument("bundle", help="a design bundle directory (or its delegations.json)")
    p.add_argument(
        "--format",
        choices=["yaml", "json", "agent-tool"],
        default="yaml",
        help="agent-tool: a JSON list of exactly the Agent tool inputs",
    )
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.set_defaults(run=run)


def load_bundle_tasks(bundle: Path) -> list[Any]:
    from agent.delegation import validate_tasks
    from agent.errors import DelegationError

    path = bundle / "delegations.json" if bundle.is_dir() else bundle
    if not path.exists():
        raise DelegationError("no delegations.json in the bundle", path=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DelegationError(f"delegations.json is not valid JSON: {exc}", path=path) from None
    if not isinstance(data, list):
        raise DelegationError("delegations.json must hold a list of tasks", path=path)
    return validate_tasks(data)


def run(args: argparse.Namespace) -> int:
    tasks = load_bundle_tasks(Path(args.bundle))
    fmt = "json" if args.json else args.format
    if fmt == "agent-tool":
        print(json.dumps([t.agent_tool_input() for t in tasks], indent=2))
    elif fmt == "json":
        print(json.dumps({"tasks": [t.model_dump() for t in tasks]}, indent=2))
    else:
        import yaml

        print(yaml.safe_dump({"tasks": [t.model_dump() for t in tasks]}, sort_keys=False, width=110), end="")
    return 0
