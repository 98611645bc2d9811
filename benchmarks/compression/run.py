"""Compression benchmark: keep-the-head truncation vs BM25 top paragraphs vs our packer.

    python benchmarks/compression/run.py [--json] [--encoding cl100k_base|o200k_base] [--repeat 3]

Recall = share of a request's must-keep facts found verbatim in the packed text. The corpus is generated
(deterministically) by corpus.py at ~40k tokens and ~1 MB. Latency is per request with the corpus already
loaded/indexed (load and index times are reported on their own lines).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import corpus  # noqa: E402

from agent import tokens  # noqa: E402
from agent.compress import pack  # noqa: E402
from agent.steering import load_policies  # noqa: E402

BUDGETS = (4000, 2000, 1000)
SCALES = {"40k": 1.7, "1MB": 8.2}
GOALS = "mean recall >= 0.95 and min >= 0.85 at 4000; mean >= 0.90 at 2000; never over budget; verbatim"


def meets_goals(ours: dict) -> bool:
    """GOALS, checked on our method's row of one corpus."""
    b = ours["budgets"]
    return (
        b[4000]["mean_recall"] >= 0.95
        and b[4000]["min_recall"] >= 0.85
        and b[2000]["mean_recall"] >= 0.90
        and sum(x["over_budget"] for x in b.values()) == 0
        and not ours.get("not_verbatim")
    )


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def norm(text: str) -> str:
    return " ".join(text.split())


class Head:
    name = "head truncation"

    def __init__(self, root: Path, encoding: str):
        self.enc = tokens.encoding(encoding)
        self.ids = self.enc.encode(
            "\n\n".join(p.read_text() for p in sorted(root.iterdir())), disallowed_special=()
        )

    def __call__(self, query: str, budget: int) -> str:
        n = budget
        while True:
            text = self.enc.decode(self.ids[:n])
            if len(self.enc.encode(text, disallowed_special=())) <= budget:
                return text
            n -= 1


class BM25Paragraphs:
    name = "BM25 paragraphs"

    def __init__(self, root: Path, encoding: str):
        from rank_bm25 import BM25Okapi

        self.encoding = encoding
        self.paras = [p.strip() for f in sorted(root.iterdir()) for p in re.split(r"\n\s*\n", f.read_text())]
        self.paras = [p for p in self.paras if p]
        self.sizes = tokens.count_many([p + "\n\n" for p in self.paras], encoding)
        self.bm25 = BM25Okapi([words(p) for p in self.paras])

    def __call__(self, query: str, budget: int) -> str:
        scores = self.bm25.get_scores(words(query))
        order = sorted(range(len(self.paras)), key=lambda i: (-scores[i], i))
        out, used = [], 0
        for i in order:
            if used + self.sizes[i] <= budget:
                out.append(i)
                used += self.sizes[i]
        text = "".join(self.paras[i] + "\n\n" for i in sorted(out))
        while tokens.count(text, self.encoding) > budget:  # joins can merge tokens
            out.pop()
            text = "".join(self.paras[i] + "\n\n" for i in sorted(out))
        return text


class Ours:
    name = "ours (agent.compress)"

    def __init__(self, root: Path, encoding: str):
        self.encoding = encoding
        self.policies = load_policies(root)
        self.source = {p.id: norm(Path(p.path).read_text()) for p in self.policies.policies}
        self.rules = {r.id: r for r in self.policies.rules}
        self.not_verbatim = 0
        self.last = None

    def __call__(self, query: str, budget: int) -> str:
        self.last = pack(self.policies, query=query, budget=budget, encoding=self.encoding)
        return self.last.text

    def verify(self) -> None:
        """Every kept clause appears verbatim in its source file and in the pack (outside the timing)."""
        for rid in self.last.policy_ids:
            rule = self.rules[rid]
            if (
                norm(rule.text) not in self.source[rule.policy_id]
                or f"[{rid}] {rule.text}" not in self.last.text
            ):
                self.not_verbatim += 1


def evaluate(label: str, scale: float, encoding: str, repeat: int, layout: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        facts = corpus.build(root, scale, layout=layout)
        text = "\n\n".join(p.read_text() for p in sorted(root.iterdir()))
        info = {
            "bytes": len(text.encode()),
            "tokens": tokens.count(text, encoding),
            "facts": sum(map(len, facts.values())),
            "requests": len(facts),
            "methods": {},
        }
        for cls in (Head, BM25Paragraphs, Ours):
            t0 = time.perf_counter()
            method = cls(root, encoding)
            setup_ms = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            method(corpus.REQUESTS["kafka"], BUDGETS[0])  # first call: includes any lazy index build
            first_ms = (time.perf_counter() - t0) * 1000
            row = {"setup_ms": round(setup_ms, 1), "first_ms": round(first_ms, 1), "budgets": {}}
            latencies = []
            for budget in BUDGETS:
                recalls, used, over = {}, [], 0
                for key, request in corpus.REQUESTS.items():
                    for _ in range(repeat if budget == BUDGETS[0] else 1):
                        t = time.perf_counter()
                        packed = method(request, budget)
                        if budget == BUDGETS[0]:
                            latencies.append((time.perf_counter() - t) * 1000)
                    if isinstance(method, Ours):
                        method.verify()
                    n = tokens.count(packed, encoding)
                    used.append(n)
                    over += n > budget
                    flat = norm(packed)
                    recalls[key] = sum(norm(f) in flat for f in facts[key]) / len(facts[key])
                worst = min(recalls, key=lambda k: (recalls[k], k))
                row["budgets"][budget] = {
                    "mean_recall": round(statistics.mean(recalls.values()), 3),
                    "min_recall": round(recalls[worst], 3),
                    "lowest_request": worst,
                    "mean_tokens": round(statistics.mean(used)),
                    "max_tokens": max(used),
                    "over_budget": over,
                    "per_request": recalls,
                }
            latencies.sort()
            row["p50_ms"] = round(statistics.median(latencies), 1)
            row["p95_ms"] = round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1)
            if isinstance(method, Ours):
                row["not_verbatim"] = method.not_verbatim
            info["methods"][method.name] = row
        info["ok"] = meets_goals(info["methods"]["ours (agent.compress)"])
        return info


def table(results: dict) -> str:
    lines = []
    for label, info in results["corpora"].items():
        lines.append(
            f"\n{label} corpus: {info['bytes']:,} bytes, {info['tokens']:,} tokens ({results['encoding']}), "
            f"{info['facts']} must-keep facts over {info['requests']} requests"
        )
        head = f"{'method':24}" + "".join(f" | R@{b} mean/min" for b in BUDGETS)
        head += " | lowest @4000 | tokens 4000/2000/1000 | over | p50 ms | p95 ms | load ms | 1st ms"
        lines.append(head)
        lines.append("-" * len(head))
        for name, row in info["methods"].items():
            cells = [f"{name:24}"]
            for b in BUDGETS:
                r = row["budgets"][b]
                cells.append(f" | {r['mean_recall']:.3f} / {r['min_recall']:.2f}  ")
            r4 = row["budgets"][BUDGETS[0]]
            cells.append(f" | {r4['lowest_request']:12}")
            cells.append(" | " + "/".join(str(row["budgets"][b]["mean_tokens"]) for b in BUDGETS).ljust(20))
            cells.append(f" | {sum(row['budgets'][b]['over_budget'] for b in BUDGETS):4}")
            cells.append(
                f" | {row['p50_ms']:6.1f} | {row['p95_ms']:6.1f} | {row['setup_ms']:7.1f} | {row['first_ms']:6.1f}"
            )
            lines.append("".join(cells))
        ours = info["methods"]["ours (agent.compress)"]
        lines.append(f"ours: clauses not verbatim = {ours['not_verbatim']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="also write the results as JSON (see --out)")
    ap.add_argument(
        "--out",
        type=Path,
        default=HERE.parents[1] / "benchmarks" / "results" / "compression.json",
        help="where --json writes (default: benchmarks/results/compression.json)",
    )
    ap.add_argument("--encoding", default="cl100k_base", choices=tokens.ENCODINGS)
    ap.add_argument("--repeat", type=int, default=3, help="runs per request at 4000 for latency")
    ap.add_argument(
        "--layout", default="scattered", choices=("scattered", "grouped"), help="see corpus.build"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["DATA_AGENT_CACHE_DIR"] = cache
        results = {
            "encoding": args.encoding,
            "layout": args.layout,
            "goals": GOALS,
            "corpora": {
                label: evaluate(label, scale, args.encoding, args.repeat, args.layout)
                for label, scale in SCALES.items()
            },
        }
    print(table(results))
    if args.json:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
