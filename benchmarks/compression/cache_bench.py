"""Cold vs warm load of 1,000 policy files: parse, persistent cache (new process), in-process cache.

python benchmarks/compression/cache_bench.py [--files 1000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOC = """---
id: p{i}
title: Policy {i}
applies_to: [pii]
---
# Policy {i}

## Storage
- Tables in domain {i} MUST declare an owner and a retention period.
- Raw extracts for domain {i} MUST NOT be copied outside the landing bucket.
- Partitions SHOULD be daily unless volume exceeds {i} GB per day.

## Quality
Freshness checks MUST alert within {m} minutes. Row counts SHOULD be compared with the source.
Background prose that sets no rule at all about domain {i}.
"""

CHILD = """
import sys, time
import yaml
from agent.steering import load_policies
t = time.perf_counter()
ps = load_policies(sys.argv[1])
print(f"{(time.perf_counter() - t) * 1000:.1f} {len(ps.policies)}")
"""


def run(root: Path, cache: str) -> tuple[float, int]:
    env = dict(os.environ, DATA_AGENT_CACHE_DIR=cache)
    # imports happen before the clock starts, so the figure is the load itself
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(root)], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), int(out[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ctx"
        root.mkdir()
        for i in range(args.files):
            (root / f"p{i:04d}.md").write_text(DOC.format(i=i, m=15 + i % 45))
        cache = str(Path(tmp) / "cache")
        off, n = run(root, "off")
        cold, _ = run(root, cache)
        warm, _ = run(root, cache)
        os.utime(root / "p0001.md")  # touched: stat differs, content hash matches
        (root / "p0002.md").write_text(DOC.format(i=2, m=99))  # edited: re-parsed
        mixed, _ = run(root, cache)
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        os.environ["DATA_AGENT_CACHE_DIR"] = cache
        from agent.steering import load_policies

        load_policies(root)
        t = time.perf_counter()
        load_policies(root)
        hot = (time.perf_counter() - t) * 1000
        print(f"{n} policies from {args.files} files")
        print(f"{'case':44} {'ms':>8}")
        for label, ms in [
            ("no cache (parse everything)", off),
            ("cold persistent cache (parse + write)", cold),
            ("warm persistent cache, new process", warm),
            ("warm, 1 touched + 1 edited file", mixed),
            ("in-process cache, same process", hot),
        ]:
            print(f"{label:44} {ms:8.1f}")


if __name__ == "__main__":
    main()
