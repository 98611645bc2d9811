"""data-agent memory search | show | add | add-result | rate | forget | export | import | stats | reindex."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

KINDS = ["design", "learning", "result"]


def add_parser(sub: Any) -> None:
    from agent.commands import common

    p = sub.add_parser("memory", help="search and manage the memory of past designs and learnings")
    msub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def cmd(name: str, run: Any, help: str) -> argparse.ArgumentParser:
        parser = msub.add_parser(name, help=help)
        common(parser, context=False)
        parser.set_defaults(run=run)
        return parser

    search = cmd("search", run_search, "memories most relevant to a query (same ranking as recall)")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5)
    search.add_argument("--kind", choices=KINDS, action="append")

    show = cmd("show", run_show, "one memory by id")
    show.add_argument("id")

    add = cmd("add", run_add, "store a learning (or design) from text or a file")
    add.add_argument("text", nargs="?", help="the memory's text (or use --file)")
    add.add_argument("--file", help="read the text from a file ('-' for stdin)")
    add.add_argument("--kind", choices=KINDS, default="learning")
    add.add_argument("--id", help="id (default: derived from the text)")
    add.add_argument("--topic", help="e.g. pipeline-patterns, quality-rules, cost, troubleshooting")
    add.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata (repeatable)")

    result = cmd("add-result", run_add_result, "record what a delegated agent returned for a design")
    result.add_argument("design_id", metavar="DESIGN_ID")
    result.add_argument(
        "file", metavar="FILE", help="the agent's output (text, Markdown or JSON; '-' for stdin)"
    )
    result.add_argument("--agent", help="the agent that produced it, e.g. qa-engineer")

    rate = cmd("rate", run_rate, "rate a memory 1-5 stars (ranking uses it)")
    rate.add_argument("id")
    rate.add_argument("stars", type=int, choices=range(1, 6), metavar="1-5")
    rate.add_argument("--note")

    forget = cmd("forget", run_forget, "delete memories by id, age or filter")
    forget.add_argument("--id", action="append", dest="ids", metavar="ID")
    forget.add_argument("--older-than", type=float, metavar="DAYS", help="last updated more than DAYS ago")
    forget.add_argument("--kind", choices=KINDS)
    forget.add_argument("--where", action="append", default=[], metavar="KEY=VALUE", help="metadata match")
    forget.add_argument("--dry-run", action="store_true", help="list what would be deleted")

    export = cmd("export", run_export, "write every memory as JSONL (stdout or --out)")
    export.add_argument("--out", "-o", metavar="FILE")

    imp = cmd("import", run_import, "load memories from a JSONL export (all lines valid, or nothing)")
    imp.add_argument("file", metavar="FILE")

    cmd("stats", run_stats, "counts by kind, embedder, location")
    rebuild = cmd(
        "rebuild",
        run_rebuild,
        "replace a damaged embedded store: move it aside, rebuild from an export and/or saved design bundles",
    )
    rebuild.add_argument("--from-export", metavar="FILE", help="a JSONL file from 'data-agent memory export'")
    rebuild.add_argument(
        "--from-bundles",
        metavar="DIR",
        action="append",
        default=[],
        help="a folder of design bundles (each with design.json); repeatable",
    )
    cmd("reindex", run_reindex, "re-embed every memory with the current embedder")


def _store(args: argparse.Namespace) -> Any:
    from agent.memory import open_store

    return open_store(args.memory_dir, args.memory_url)


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> int:
    if args.json:
        from agent.cli import emit_json

        emit_json(data)
    elif text:
        print(text)
    return 0


def _pairs(items: list[str], option: str) -> dict[str, str]:
    from agent.errors import MemoryStoreError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MemoryStoreError(f"{option} expects KEY=VALUE, got {item!r}", field=option)
        out[key.strip()] = value.strip()
    return out


def _read(path: str) -> str:
    from agent.errors import MemoryStoreError

    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MemoryStoreError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", path=path) from None


def run_search(args: argparse.Namespace) -> int:
    results = _store(args).recall(args.query, k=args.k, kinds=args.kind)
    lines = [f"{r.score:.3f}  {r.memory.id:45} {r.memory.kind:8} {r.memory.text[:80]}" for r in results]
    return _emit(args, {"results": [r.model_dump() for r in results]}, "\n".join(lines))


def run_show(args: argparse.Namespace) -> int:
    memory = _store(args).get(args.id)
    lines = [
        f"{memory.id} ({memory.kind}), rating {memory.rating or '-'}, used {memory.use_count}x, "
        f"updated {memory.updated_at}",
        memory.text,
    ] + [f"  {k}: {v}" for k, v in memory.metadata.items()]
    return _emit(args, memory.model_dump(), "\n".join(lines))


def run_add(args: argparse.Namespace) -> int:
    from agent.errors import MemoryStoreError
    from agent.memory import content_hash
    from agent.models import Memory

    text = _read(args.file) if args.file else args.text
    if not text or not text.strip():
        raise MemoryStoreError("nothing to add: give TEXT or --file", field="text")
    meta: dict[str, Any] = _pairs(args.meta, "--meta")
    for key in ("sources", "targets", "compliance", "tables"):
        if key in meta:
            meta[key] = [v for v in str(meta[key]).split(",") if v]
    if args.topic:
        meta["topic"] = args.topic
    mid = args.id or f"{args.kind}-{content_hash(text)[:12]}"
    store = _store(args)
    stored = store.add(Memory(id=mid, kind=args.kind, text=text.strip(), metadata=meta))
    outcome = store.last_outcomes[0] if store.last_outcomes else "added"
    data = {"id": stored, "outcome": outcome, "deduplicated": outcome != "added"}
    note = {"added": "", "updated": " (updated a near-duplicate)", "duplicate": " (already stored)"}[outcome]
    return _emit(args, data, f"{stored}{note}")


def run_add_result(args: argparse.Namespace) -> int:
    raw = _read(args.file)
    text, agent = _result_text(raw, args.agent)
    stored = _store(args).add_result(args.design_id, text, source=args.file, agent=agent)
    return _emit(args, {"id": stored, "design_id": args.design_id}, stored)


def _result_text(raw: str, agent: str | None) -> tuple[str, str | None]:
    """A delegated agent's output may be plain text or JSON; from JSON take its summary-like field."""
    from agent.errors import MemoryStoreError

    text = raw.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        agent = agent or data.get("subagent_type") or data.get("agent")
        for key in ("learning", "summary", "result", "output", "text", "findings"):
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                text = value.strip()
                break
            if isinstance(value, list) and value:
                text = "\n".join(f"- {v}" if isinstance(v, str) else f"- {json.dumps(v)}" for v in value)
                break
    if not text:
        raise MemoryStoreError("the result file is empty", field="FILE")
    return text[:8000], agent


def run_rate(args: argparse.Namespace) -> int:
    memory = _store(args).rate(args.id, args.stars, note=args.note)
    return _emit(args, {"id": memory.id, "rating": memory.rating}, f"{memory.id}: {args.stars}/5")


def run_forget(args: argparse.Namespace) -> int:
    removed = _store(args).forget(
        ids=args.ids,
        older_than_days=args.older_than,
        kind=args.kind,
        where=_pairs(args.where, "--where"),
        dry_run=args.dry_run,
    )
    verb = "would forget" if args.dry_run else "forgot"
    return _emit(
        args, {"ids": removed, "count": len(removed), "dry_run": args.dry_run}, f"{verb} {len(removed)}"
    )


def run_export(args: argparse.Namespace) -> int:
    memories = _store(args).all()
    lines = "".join(json.dumps(m.model_dump(), sort_keys=True, ensure_ascii=False) + "\n" for m in memories)
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(lines, encoding="utf-8")
        tmp.replace(out)
        return _emit(args, {"path": str(out), "count": len(memories)}, f"exported {len(memories)} to {out}")
    if args.json:
        from agent.cli import emit_json

        emit_json({"count": len(memories), "memories": [m.model_dump() for m in memories]})
        return 0
    sys.stdout.write(lines)
    return 0


def run_import(args: argparse.Namespace) -> int:
    from agent.memory import parse_export

    memories = parse_export(_read(args.file), args.file)
    store = _store(args)
    store.seed = False  # a restore into an empty store brings exactly what the file holds
    count = store.import_memories(memories)
    return _emit(args, {"imported": count, "path": args.file}, f"imported {count} from {args.file}")


def run_stats(args: argparse.Namespace) -> int:
    store = _store(args)
    memories = store.all()
    kinds: dict[str, int] = {}
    for m in memories:
        kinds[m.kind] = kinds.get(m.kind, 0) + 1
    data = {
        "location": store.location,
        "backend": store.backend,
        "count": len(memories),
        "by_kind": kinds,
        "rated": sum(m.rating is not None for m in memories),
        "embedder": store.embedder.name,
        "dimension": store.embedder.dimension,
    }
    return _emit(args, data, "\n".join(f"{k}: {v}" for k, v in data.items()))


def run_reindex(args: argparse.Namespace) -> int:
    store = _store(args)
    count = store.reindex()
    return _emit(
        args,
        {"reindexed": count, "embedder": store.embedder.name},
        f"re-embedded {count} with {store.embedder.name}",
    )


def run_rebuild(args: argparse.Namespace) -> int:
    from agent.errors import MemoryStoreError
    from agent.memory import rebuild_store
    from agent.resources import default_memory_dir

    if args.memory_url:
        raise MemoryStoreError("rebuild applies to the embedded store; a Chroma server keeps its own storage")
    path = Path(args.memory_dir) if args.memory_dir else default_memory_dir()
    result = rebuild_store(
        path,
        export=Path(args.from_export) if args.from_export else None,
        bundles=[Path(b) for b in args.from_bundles],
    )
    return _emit(
        args,
        result,
        f"rebuilt {result['path']} with {result['count']} memories"
        + (f"; the damaged store is at {result['moved_aside']}" if result["moved_aside"] else ""),
    )
