"""The CLI's memory process: a cold single design opens the store in a forked child (agent/memory_process.py).

Each test runs a real ``python -m agent`` (the fork happens only in a fresh, single-threaded process), or a
small script that builds a MemoryProcess itself."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import EXAMPLES, assert_clean_failure, bundle_files, one_json_object

REQUEST = EXAMPLES / "orders_cdc_snowflake.yaml"


def test_same_design_and_memory_with_and_without_the_memory_process(run_cli, tmp_path: Path) -> None:
    runs = {}
    for mode in ("1", "0"):
        env = {**run_cli.env, "DATA_AGENT_MEMORY_PROCESS": mode}
        mem = tmp_path / f"mem{mode}"
        first = run_cli(
            "design", REQUEST, "--out", tmp_path / f"a{mode}", "--memory-dir", mem, "--json", env=env
        )
        again = run_cli(
            "design", REQUEST, "--out", tmp_path / f"b{mode}", "--memory-dir", mem, "--json", env=env
        )
        assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
        report = one_json_object(again.stdout)["report"]
        export = run_cli("memory", "export", "--memory-dir", mem, env=env)
        assert export.returncode == 0, export.stderr
        memories = sorted(
            (m["id"], m["text"], m["use_count"]) for m in map(json.loads, export.stdout.splitlines())
        )
        runs[mode] = (
            bundle_files(tmp_path / f"b{mode}", manifest=False),
            report["remembered"],
            report["memories_used"],
            memories,
        )
    with_child, in_process = runs["1"], runs["0"]
    assert with_child[0] == in_process[0]  # every file of the bundle, byte for byte
    assert with_child[1] == in_process[1] and with_child[1].startswith("design-")
    assert [m["id"] for m in with_child[2]] == [m["id"] for m in in_process[2]]
    assert with_child[3] == in_process[3]  # the same memories, with the same use counts


def test_a_failed_run_does_not_create_the_store(run_cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsources: [{kind: nosuchkind, name: a}]\n")
    mem = tmp_path / "mem"
    proc = run_cli("design", bad, "--out", tmp_path / "out", "--memory-dir", mem)
    assert proc.returncode == 2 and "bad.yaml:1" in proc.stderr
    assert not (mem / "data-agent.json").exists() and not (mem / "chroma.sqlite3").exists()


def test_store_errors_from_the_child_are_reported_as_in_process(run_cli, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "memfile"
    not_a_dir.write_text("x")
    proc = run_cli("design", REQUEST, "--out", tmp_path / "out", "--memory-dir", not_a_dir)
    assert proc.returncode == 3, proc.stderr
    assert "memory directory is a file" in proc.stderr and str(not_a_dir) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


SCRIPT = """
import os, signal, sys
from agent.errors import MemoryStoreError
from agent.memory_process import MemoryProcess
store = MemoryProcess(sys.argv[1], None)
assert len(store.recall("postgres to snowflake", k=2)) == 2
os.kill(store._pid, signal.SIGKILL)
try:
    store.recall("postgres to snowflake", k=2)
except MemoryStoreError as exc:
    print(exc)
    sys.exit(3)
"""


def test_a_child_that_dies_is_a_clear_error(run_cli, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "mem")],
        capture_output=True,
        text=True,
        timeout=120,
        env=run_cli.env,
        cwd=Path(__file__).parents[1],
    )
    assert proc.returncode == 3, proc.stderr
    assert "the memory process ended unexpectedly" in proc.stdout


def test_a_rehearsal_writes_nothing_and_stops_at_the_stage_the_answer_arrives(
    home: Path, tmp_path: Path, monkeypatch
) -> None:
    """While the memory process opens the store, the CLI designs the request once without memories to warm
    what the real design needs; that rehearsal must leave nothing behind and yield as soon as it can."""
    from agent.commands.design import _rehearse
    from agent.runtime import AgentConfig

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    config = AgentConfig(memory_dir=tmp_path / "mem")

    def answered_after(n: int) -> tuple[list[int], Callable[[], bool]]:
        calls: list[int] = []

        def answered() -> bool:
            calls.append(1)
            return len(calls) > n

        return calls, answered

    calls, never = answered_after(10**6)
    _rehearse(config, str(REQUEST), never)
    whole = len(calls)  # asked once before starting, then after every stage
    assert whole >= 8
    calls, soon = answered_after(3)
    _rehearse(config, str(REQUEST), soon)
    assert len(calls) == 4  # stopped at the third stage boundary, without raising
    calls, claude = answered_after(10**6)
    _rehearse(AgentConfig(memory_dir=tmp_path / "mem", planner="claude"), str(REQUEST), claude)
    assert calls == []  # never with a planner that would call the API
    assert list(cwd.iterdir()) == [] and not (tmp_path / "mem").exists()


def test_everything_printed_arrives_before_the_fast_exit(run_cli, tmp_path: Path) -> None:
    """The command leaves through os._exit (no interpreter teardown): output longer than a pipe's buffer
    must still arrive whole, and the exit code must be the command's."""
    from agent.starters import starter_memories

    mem = tmp_path / "mem"
    assert run_cli("memory", "stats", "--memory-dir", mem).returncode == 0  # creates and seeds the store
    proc = run_cli("memory", "export", "--memory-dir", mem)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.encode()) > 65536
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(r["id"] for r in records) == sorted(m.id for m in starter_memories())
    missing = run_cli("memory", "show", "no-such-id", "--memory-dir", mem)
    assert missing.returncode == 3 and "no-such-id" in assert_clean_failure(missing)  # MemoryStoreError
