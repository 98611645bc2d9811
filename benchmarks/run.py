"""Every benchmark of the project with one command, and one table.

    python benchmarks/run.py [--quick] [--only performance,compression,retrieval]

Runs benchmarks/performance/run.py, benchmarks/compression/run.py and benchmarks/retrieval/run.py (each in
its own process, quick modes where they exist), prints one table (metric, value, goal, ok) and, after a
full run, writes benchmarks/results/ (latest.json with the machine it ran on: CPUs, memory, Python, CPU
model); a quick or partial run leaves the committed results alone. Ratios are
measured side by side inside each benchmark, so a slower machine moves both sides.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "nproc": os.cpu_count(),
        "memory_gb": mem_gb,
        "python": sys.version.split()[0],
        "cpu": cpu,
        "platform": platform.platform(),
    }


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    print("$ " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)


def performance(quick: bool, record: bool) -> list[dict]:
    proc = _run(
        [
            sys.executable,
            "benchmarks/performance/run.py",
            "--json",
            *(["--quick"] if quick else []),
            *([] if record else ["--no-results"]),
        ]
    )
    if proc.returncode != 0:
        return [_failed("performance", proc)]
    rows = []
    for r in json.loads(proc.stdout.strip().splitlines()[-1])["rows"]:
        value = f"{r['value_ms']} ms" if r.get("value_ms") is not None else "error"
        if "ratio" in r:
            value += f" ({r['ratio']}x floor)"
        if "rate_per_s" in r:
            value = f"{r['rate_per_s']}/s, {r['peak_mb']} MB peak ({r['value_ms']} ms)"
        rows.append(
            {
                "benchmark": "performance",
                "metric": r["metric"],
                "value": value,
                "goal": r["goal"],
                "ok": r["ok"],
                "raw": r,
            }
        )
    return rows


def compression(quick: bool, record: bool) -> list[dict]:
    # no quick mode; --repeat 1 is its cheapest honest setting
    with tempfile.TemporaryDirectory() as tmp:
        out = RESULTS / "compression.json" if record else Path(tmp) / "compression.json"
        repeat = "1" if quick else "3"
        proc = _run(
            [sys.executable, "benchmarks/compression/run.py", "--json", "--repeat", repeat, "--out", str(out)]
        )
        if proc.returncode != 0:
            return [_failed("compression", proc)]
        data = json.loads(out.read_text())
    rows = []
    for label, info in data["corpora"].items():
        ours = info["methods"]["ours (agent.compress)"]
        b = ours["budgets"]
        r4, r2 = b["4000"], b["2000"]
        rows.append(
            {
                "benchmark": "compression",
                "metric": f"pack recall, {label} corpus (mean/min @4000, mean @2000)",
                "value": f"{r4['mean_recall']}/{r4['min_recall']}, {r2['mean_recall']}",
                "goal": data["goals"],
                "ok": info["ok"],
                "raw": {
                    "budgets": {
                        k: {kk: vv for kk, vv in v.items() if kk != "per_request"} for k, v in b.items()
                    }
                },
            }
        )
        rows.append(
            {
                "benchmark": "compression",
                "metric": f"pack latency, {label} corpus (p50 / p95)",
                "value": f"{ours['p50_ms']} / {ours['p95_ms']} ms",
                "goal": "reported",
                "ok": True,
                "raw": {k: ours[k] for k in ("first_ms", "p50_ms", "p95_ms", "setup_ms")},
            }
        )
    return rows


def retrieval(quick: bool, record: bool) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = RESULTS / "retrieval.json" if record else Path(tmp) / "retrieval.json"
        args = ["--quick", "--no-server"] if quick else []
        proc = _run([sys.executable, "benchmarks/retrieval/run.py", "--json", "--out", str(out), *args])
        if proc.returncode != 0:
            return [_failed("retrieval", proc)]
        data = json.loads(out.read_text())
    q = data["quality"]
    rows = [
        {
            "benchmark": "retrieval",
            "metric": f"recall@5 / MRR, {q['queries']} queries over {q['designs']} designs (ours vs vector only)",
            "value": f"{q['ours']['recall@5']} / {q['ours']['mrr']} (vector {q['vector']['recall@5']} / "
            f"{q['vector']['mrr']})",
            "goal": "recall@5 >= 0.9, above vector-only",
            "ok": q["ours"]["recall@5"] >= 0.9 and q["ours"]["recall@5"] > q["vector"]["recall@5"],
            "raw": q,
        }
    ]
    # the goals for the embedded store: p50 per query at 10k and 100k memories, batch insert rate
    latency_goal_ms = {10_000: 25, 100_000: 60}
    for s in data["speed"]:
        goal_ms = latency_goal_ms.get(s["memories"]) if s["backend"] == "embedded" else None
        rows.append(
            {
                "benchmark": "retrieval",
                "metric": f"recall, {s['backend']}, {s['memories']:,} memories (per-op / reopen / session p50; "
                "insert)",
                "value": f"{s['per_op_p50_ms']} / {s['reopen_p50_ms']} / {s['session_p50_ms']} ms; "
                f"{s['insert_per_s']:.0f}/s",
                "goal": f"per-op <= {goal_ms} ms, insert >= 500/s" if goal_ms else "insert >= 500/s",
                "ok": (goal_ms is None or s["per_op_p50_ms"] <= goal_ms) and s["insert_per_s"] >= 500,
                "raw": s,
            }
        )
    return rows


def _failed(name: str, proc: subprocess.CompletedProcess) -> dict:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {
        "benchmark": name,
        "metric": f"{name} benchmark",
        "value": "failed",
        "goal": "runs",
        "ok": False,
        "raw": {"returncode": proc.returncode, "stderr_tail": tail},
    }


BENCHMARKS = {"performance": performance, "compression": compression, "retrieval": retrieval}


def table(rows: list[dict]) -> str:
    w_metric = max(len(r["metric"]) for r in rows)
    w_value = max(len(r["value"]) for r in rows)
    lines = [f"{'metric':{w_metric}}  {'value':{w_value}}  {'goal':40}  ok"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(
            f"{r['metric']:{w_metric}}  {r['value']:{w_value}}  {r['goal']:40}  {'yes' if r['ok'] else 'NO'}"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="quick modes: fewer runs, smaller inputs")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}")
    # only a full run replaces benchmarks/results/: its files and latest.json always come from one run
    record = not args.quick and names == list(BENCHMARKS)
    started = time.time()
    rows: list[dict] = []
    for name in names:
        rows += BENCHMARKS[name](args.quick, record)
    result = {
        "machine": machine(),
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "rows": rows,
    }
    m = result["machine"]
    print(f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gb']} GB, Python {m['python']}")
    print(table(rows))
    if not record:
        print("\na quick or partial run: benchmarks/results/ is left as the last full run wrote it")
    else:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {RESULTS / 'latest.json'}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
