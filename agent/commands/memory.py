"""data-agent memory search | show | stats (and the rest of the store's management)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    from agent.commands import common

    p = sub.add_parser("memory", help="search and manage the memory of past designs and learnings")
    msub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    search = msub.add_parser("search", help="memories most relevant to a query (same ranking as recall)")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5)
    search.add_argument("--kind", choices=["design", "learning", "result"], action="append")
    common(search, context=False)
    search.set_defaults(run=run_search)
    show = msub.add_parser("show", help="one memory by id")
    show.add_argument("id")
    common(show, context=False)
    show.set_defaults(run=run_show)
    stats = msub.add_parser("stats", help="counts by kind, embedder, location")
    common(stats, context=False)
    stats.set_defaults(run=run_stats)


def _store(args: argparse.Namespace) -> Any:
    from agent.memory import open_store

    return open_store(args.memory_dir, args.memory_url)


def run_search(args: argparse.Namespace) -> int:
    results = _store(args).recall(args.query, k=args.k, kinds=args.kind)
    if args.json:
        from agent.cli import emit_json

        emit_json({"results": [r.model_dump() for r in results]})
        return 0
    for r in results:
        print(f"{r.score:.3f}  {r.memory.id:45} {r.memory.kind:8} {r.memory.text[:80]}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    memory = _store(args).get(args.id)
    if args.json:
        from agent.cli import emit_json

        emit_json(memory.model_dump())
        return 0
    print(
        f"{memory.id} ({memory.kind}), rating {memory.rating or '-'}, used {memory.use_count}x, "
        f"updated {memory.updated_at}"
    )
    print(memory.text)
    for k, v in memory.metadata.items():
        print(f"  {k}: {v}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    store = _store(args)
    memories = store.all()
    kinds: dict[str, int] = {}
    for m in memories:
        kinds[m.kind] = kinds.get(m.kind, 0) + 1
    data = {
        "location": store.location,
        "backend": "server" if store.url else "embedded",
        "count": len(memories),
        "by_kind": kinds,
        "embedder": store.embedder.name,
        "dimension": store.embedder.dimension,
    }
    if args.json:
        from agent.cli import emit_json

        emit_json(data)
        return 0
    for k, v in data.items():
        print(f"{k}: {v}")
    return 0
