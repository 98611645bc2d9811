"""data-agent mcp: serve the agent's stages as MCP tools over stdio (the Claude Code plugin's server)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "mcp",
        help="run the MCP server over stdio (used by the Claude Code plugin)",
        description="Serve pack_context, recall_designs, plan_design, check_design, plan_delegations, "
        "remember_design and rate_memory over stdio. Memory location: $DATA_AGENT_MEMORY_DIR, else "
        "$CLAUDE_PLUGIN_DATA/memory, else the user data dir.",
    )
    p.add_argument(
        "--list-tools", action="store_true", help="print the tools and their input schemas, then exit"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.list_tools:
        import json

        from agent.mcp import tool_schemas

        print(json.dumps(tool_schemas(), indent=2))
        return 0
    from agent.mcp import serve

    serve()
    return 0
