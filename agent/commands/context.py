"""data-agent context REQUEST: the packed steering context for a request."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    from agent.commands import common

    p = sub.add_parser(
        "context",
        help="print the packed context (policies + memories) for a request",
        description="Pack the steering policies (and, unless --no-memory, recalled memories) for "
        "a request under the token budget, and print the pack with its token count.",
    )
    p.add_argument("request", metavar="REQUEST", help="a request file (.yaml/.json) or free text")
    p.add_argument("--budget", type=int, default=4000, help="token budget (default 4000)")
    p.add_argument("--encoding", default="cl100k_base", choices=["cl100k_base", "o200k_base"])
    p.add_argument("--for-claude", action="store_true", help="apply the Claude tokenizer safety factor")
    p.add_argument("--no-memory", action="store_true", help="policies only")
    p.add_argument(
        "--explain",
        action="store_true",
        help="list every clause kept, trimmed or dropped, and why (with --json: all of them in items)",
    )
    common(p)
    p.set_defaults(run=run)


# ``--json`` lists every kept or trimmed item, every always-on rule that did not fit, and this many of the
# best-ranked dropped clauses (the near misses); the rest are counted in ``items_omitted``. Over a large
# context directory the full list is tens of thousands of entries (16 MB at 5,000 files); ``--explain``
# with ``--json`` still prints all of them.
JSON_DROPPED_LISTED = 20


def run(args: argparse.Namespace) -> int:
    import gc

    from agent.diskcache import paused_gc
    from agent.errors import DataAgentError

    if args.budget < 50:
        raise DataAgentError("--budget must be at least 50 tokens", field="budget")
    # Loading a large context directory allocates many small objects: cyclic GC passes over them would cost
    # more than the work itself, and there are no cycles worth collecting here. What is still alive after
    # the pack is the process's caches (parsed files, per-file index facts), kept until exit: frozen, so
    # the first collection after GC is back on does not walk them (it did, for 220 ms at 5,000 files).
    with paused_gc():
        try:
            return _pack_and_print(args)
        finally:
            gc.freeze()


def _pack_and_print(args: argparse.Namespace) -> int:
    import sys

    from agent.compress import load_index, pack_index
    from agent.request import load_request  # runtime.to_request's own call for text; no runtime import
    from agent.tokens import DEFAULT_CLAUDE_SAFETY_FACTOR

    request = load_request(args.request)
    # the packing index straight from the whole-directory cache when the directory is unchanged: no policy
    # models are built for a pack that keeps a few hundred of tens of thousands of clauses
    index, problems = load_index(args.context, args.encoding)
    memories = []
    if not args.no_memory:
        from agent.memory import open_store

        memories = open_store(args.memory_dir, args.memory_url).recall(request, k=3)
    result = pack_index(
        index,
        request,
        None,
        memories,
        args.budget,
        args.encoding,
        DEFAULT_CLAUDE_SAFETY_FACTOR if args.for_claude else 1.0,
    )
    if args.json:
        from agent.cli import emit_json

        out = result.to_dict(None if args.explain else JSON_DROPPED_LISTED)
        emit_json({**out, "problems": [str(p) for p in problems]})
        return 0
    print(result.text)
    if args.explain:
        print("\n# Accounting")
        for item in result.items():
            print(f"{item.status:8} {item.origin:6} {item.id:40} {item.tokens:5} tok  {item.reason}")
    print(
        f"\n[{result.tokens} tokens of {result.budget} ({result.encoding}); {len(result.policy_ids)} clauses, "
        f"{len(result.memory_ids)} memories; from {result.tokens_before} tokens]",
        file=sys.stderr,
    )
    return 0
