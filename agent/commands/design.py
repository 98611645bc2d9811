"""data-agent design REQUEST... --out DIR"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    from agent.commands import common

    p = sub.add_parser(
        "design",
        help="design a data platform from a request file or free text",
        description="Design a data platform: load steering policies, recall past designs, pack "
        "the context, plan, render and check the deliverables, emit delegations.",
    )
    p.add_argument("requests", nargs="+", metavar="REQUEST", help="a request file (.yaml/.json) or free text")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="bundle directory (default: ./designs/<name>); with several "
        "requests, one sub-directory per request",
    )
    p.add_argument("--budget", type=int, default=4000, help="context token budget (default 4000)")
    p.add_argument("--encoding", default="cl100k_base", choices=["cl100k_base", "o200k_base"])
    p.add_argument(
        "--planner",
        default="rules",
        choices=["rules", "claude", "auto"],
        help="rules (offline, default), claude (anthropic API) or auto (claude when "
        "ANTHROPIC_API_KEY is set and --offline is not given)",
    )
    p.add_argument("--offline", action="store_true", help="never call a network service")
    claude_options(p)
    p.add_argument("--templates", metavar="DIR", help="override templates by relative file name")
    p.add_argument("--no-memory", action="store_true", help="neither recall nor remember")
    p.add_argument("--no-remember", action="store_true", help="recall, but do not store this design")
    p.add_argument("--strict", action="store_true", help="exit non-zero when a policy check fails")
    p.add_argument(
        "--agent-map",
        action="append",
        default=[],
        metavar="ROLE=NAME",
        help="delegate a role to another agent name, e.g. qa-engineer=qa-expert",
    )
    common(p)
    p.set_defaults(run=run)


def claude_options(p: argparse.ArgumentParser) -> None:
    """Settings of the Claude planner; each also reads $DATA_AGENT_* and the config file's [claude]."""
    g = p.add_argument_group("Claude planner (flag > $DATA_AGENT_* > ~/.config/data-agent/config.toml)")
    g.add_argument("--model", help="model id (default claude-sonnet-4-6; $DATA_AGENT_MODEL)")
    g.add_argument("--max-tokens", type=int, help="reply token limit ($DATA_AGENT_MAX_TOKENS)")
    g.add_argument("--timeout", type=float, help="seconds per API request ($DATA_AGENT_TIMEOUT)")
    g.add_argument("--retries", type=int, help="retries on 429/5xx/529 with backoff ($DATA_AGENT_RETRIES)")


def claude_settings(args: argparse.Namespace) -> dict[str, Any]:
    names = ("model", "max_tokens", "timeout", "retries")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def parse_agent_map(items: list[str]) -> dict[str, str]:
    from agent.errors import DataAgentError
    from agent.models import SUBAGENTS

    mapping = {}
    for item in items:
        role, sep, name = item.partition("=")
        if not sep or role not in SUBAGENTS or not name.strip():
            raise DataAgentError(
                f"--agent-map {item!r} must be ROLE=NAME with ROLE one of {', '.join(SUBAGENTS)}",
                field="agent-map",
            )
        mapping[role] = name.strip()
    return mapping


def run(args: argparse.Namespace) -> int:
    from agent.errors import PlannerError
    from agent.runtime import AgentConfig, DataEngineerAgent

    if args.offline and args.planner == "claude":
        raise PlannerError(
            "--planner claude calls the Anthropic API, which --offline forbids", hint="use --planner rules"
        )
    planner = "rules" if args.offline else args.planner
    config = AgentConfig(
        context=args.context,
        memory_dir=args.memory_dir,
        memory_url=args.memory_url,
        use_memory=not args.no_memory,
        remember=not args.no_remember,
        budget=args.budget,
        encoding=args.encoding,
        planner=planner,
        templates=args.templates,
        agent_map=parse_agent_map(args.agent_map),
        offline=args.offline,
        claude=claude_settings(args),
    )
    agent = DataEngineerAgent(config)
    several = len(args.requests) > 1
    results = []
    for i, request in enumerate(args.requests):
        out = _out_dir(args.out, request, i, several)
        results.append(_one(agent, request, out, args))
    if args.json:
        from agent.cli import emit_json

        emit_json(results[0].to_json() if not several else {"designs": [r.to_json() for r in results]})
    failed = any(not r.ok for r in results)
    return 5 if args.strict and failed else 0


def _out_dir(out: str | None, request: str, index: int, several: bool) -> Path:
    from agent.models import slugify

    base = Path(out) if out else Path("designs")
    if out and not several:
        return base
    stem = Path(request).stem if request.endswith((".yaml", ".yml", ".json")) else slugify(request)[:40]
    return base / (f"{index + 1:02d}-{stem}" if several else stem)


def _one(agent: Any, request: str, out: Path, args: argparse.Namespace) -> Any:
    from agent.console import DesignProgress

    with DesignProgress(enabled=not args.json and sys.stdout.isatty(), label=request) as progress:
        result = agent.design(request, out=out, on_stage=progress.stage_done)
    if not args.json:
        from agent.console import print_design_summary

        print_design_summary(result)
    return result
