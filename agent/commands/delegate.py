"""data-agent delegate BUNDLE: re-emit (and check) the delegation tasks of a saved design."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "delegate",
        help="re-emit the delegation tasks of a saved design bundle",
        description="Read a bundle's delegations.json (or any JSON file of tasks), check the tasks are "
        "launchable (prompt present and under the limit, known agents, no dependency cycle) and print "
        "them. Exit 2 with one line on stderr when they are not.",
    )
    p.add_argument("bundle", help="a design bundle directory, its delegations.json, or a JSON list of tasks")
    p.add_argument(
        "--format",
        choices=["yaml", "json", "agent-tool"],
        default="yaml",
        help="agent-tool: a JSON list of exactly the Agent tool inputs",
    )
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.add_argument(
        "--agent-map",
        action="append",
        default=[],
        metavar="ROLE=NAME",
        help="send a role to another agent name, e.g. qa-engineer=qa-expert (repeatable)",
    )
    p.add_argument("--waves", action="store_true", help="group the output by launch wave (one message each)")
    p.set_defaults(run=run)


def load_bundle_tasks(bundle: Path, agent_map: dict[str, str] | None = None) -> list[Any]:
    """The tasks of a bundle, remapped per ``agent_map`` and checked; DelegationError otherwise."""
    from agent.delegation import known_agents, resolve_targets, validate_tasks
    from agent.errors import DelegationError

    path = bundle / "delegations.json" if bundle.is_dir() else bundle
    if not path.exists():
        raise DelegationError(
            "no delegations.json in the bundle" if bundle.is_dir() else "no such file", path=path
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DelegationError(f"not valid JSON: {exc}", path=path) from None
    if isinstance(data, dict) and isinstance(data.get("tasks"), list):
        data = data["tasks"]
    if not isinstance(data, list):
        raise DelegationError('must hold a list of tasks (or {"tasks": [...]})', path=path)
    targets = resolve_targets(agent_map)
    for item in data:
        role = str(item.get("id", "")).rsplit(":", 1)[-1] if isinstance(item, dict) else ""
        if agent_map and role in agent_map:
            item["subagent_type"] = targets[role]
    try:
        return validate_tasks(data, known_agents=known_agents(agent_map))
    except DelegationError as exc:
        exc.path = str(path)
        if exc.field == "subagent_type":
            exc.hint = "map it with --agent-map ROLE=NAME"
        raise


def run(args: argparse.Namespace) -> int:
    from agent.commands.design import parse_agent_map
    from agent.delegation import launch_waves

    tasks = load_bundle_tasks(Path(args.bundle), parse_agent_map(args.agent_map))
    fmt = "json" if args.json else args.format
    if fmt == "agent-tool":
        if args.waves:
            out: Any = [[t.agent_tool_input() for t in wave] for wave in launch_waves(tasks)]
        else:
            out = [t.agent_tool_input() for t in tasks]
        print(json.dumps(out, indent=2))
        return 0
    body: dict[str, Any] = {"tasks": [t.model_dump() for t in tasks]}
    if args.waves:
        body["waves"] = [[t.id for t in wave] for wave in launch_waves(tasks)]
    if fmt == "json":
        print(json.dumps(body, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(body, sort_keys=False, width=110), end="")
    return 0
