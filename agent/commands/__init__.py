"""One module per command group; each has ``add_parser(subparsers)`` and sets ``run`` on its parser."""

from __future__ import annotations

import argparse

from agent.commands import calibrate, context, delegate, design, mcp, memory, policies

COMMANDS = (design, context, policies, memory, delegate, mcp, calibrate)


def common(parser: argparse.ArgumentParser, *, memory: bool = True, context: bool = True) -> None:
    """Options shared by the commands that touch steering and memory."""
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout and nothing else"
    )
    if context:
        parser.add_argument(
            "--context",
            metavar="DIR",
            help="policy directory (default: $DATA_AGENT_CONTEXT, "
            ".claude/context-engg-system-steering/, .claude/steering/, then the packaged policies)",
        )
    if memory:
        parser.add_argument(
            "--memory-dir",
            metavar="DIR",
            help="embedded memory store (default: $DATA_AGENT_MEMORY_DIR or the user data dir)",
        )
        parser.add_argument(
            "--memory-url",
            metavar="URL",
            help="use a Chroma server instead, e.g. http://127.0.0.1:8000 ($DATA_AGENT_MEMORY_URL)",
        )
