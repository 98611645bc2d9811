"""Helpers for the memory tests: a real ``chroma run`` server, synthetic memories, and the worker processes
of the concurrency test (run as ``python tests/memory_helpers.py write|read ...``)."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = [
    f"{a}{b}"
    for a in ("orders", "claims", "sensor", "ledger", "events", "users", "ships", "quotes")
    for b in ("", "_raw", "_hist", "_daily", "_snap", "_agg", "_dim", "_fact")
]
VOCAB = [
    f"{c}{v}{c2}{v2}" for c in "bdfgklmnprstvz" for v in "aeiou" for c2 in "lmnrst" for v2 in ("", "x", "o")
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChromaServer:
    """``chroma run --path TMP --host 127.0.0.1 --port FREE`` until ``stop()``; waits for the heartbeat."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = shutil.which("chroma")
        if exe is None:
            raise RuntimeError("the chroma CLI is not on PATH")
        self.log = open(path.parent / f"chroma-{self.port}.log", "wb")  # noqa: SIM115 closed in stop()
        self.proc = subprocess.Popen(
            [exe, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"chroma run did not come up on {self.url}")
            time.sleep(0.1)

    def reset(self) -> None:
        import chromadb
        from chromadb.config import Settings

        client = chromadb.HttpClient(
            host="127.0.0.1", port=self.port, settings=Settings(anonymized_telemetry=False)
        )
        for col in client.list_collections():
            client.delete_collection(col.name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def synthetic_text(rng: random.Random, words: int = 40) -> str:
    return "Design " + " ".join(rng.choice(VOCAB) for _ in range(words)) + "."


def _open(target: str):
    sys.path.insert(0, str(REPO))
    from agent.memory import MemoryStore

    if target.startswith("http"):
        return MemoryStore(url=target)
    return MemoryStore(target)


def write_worker(target: str, prefix: str, n: int) -> int:
    from agent.models import Memory

    store = _open(target)
    rng = random.Random(prefix)
    ids, errors = [], []
    for i in range(n):
        mid = f"{prefix}-{i:03d}"
        memory = Memory(
            id=mid,
            kind="design",
            text=synthetic_text(rng),
            metadata={
                "sources": ["postgres"],
                "targets": ["snowflake"],
                "pattern": "batch",
                "worker": prefix,
            },
        )
        try:
            got = store.add(memory)
            ids.append(got)
        except Exception as exc:  # report, never swallow
            errors.append(f"{mid}: {type(exc).__name__}: {exc}")
    print(json.dumps({"ids": ids, "errors": errors, "stats": store.stats}))
    return 1 if errors else 0


def read_worker(target: str, stop_file: str) -> int:
    store = _open(target)  # one long-lived store object, as a running agent has
    counts, errors, reads = [], [], 0
    deadline = time.monotonic() + 120
    while not Path(stop_file).exists() and time.monotonic() < deadline:
        try:
            counts.append(store.count())
            store.recall("postgres to snowflake batch design", k=3)
            reads += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        time.sleep(0.02)
    try:
        counts.append(store.count())
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps({"reads": reads, "first": counts[:1], "last": counts[-1:], "errors": errors}))
    return 1 if errors else 0


if __name__ == "__main__":
    action = sys.argv[1]
    if action == "write":
        raise SystemExit(write_worker(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    if action == "read":
        raise SystemExit(read_worker(sys.argv[2], sys.argv[3]))
    raise SystemExit(f"unknown action {action}")
