"""Faults: interrupted runs, repeat runs, a full disk, a busy store, a damaged store, hostile templates.

Everything here is real: signals go to a real ``data-agent`` process, the full disk is a real tmpfs of a
few megabytes (skipped where mounting is not allowed), the busy store is another process holding its lock.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import MemoryStoreError, RenderError
from agent.render import write_bundle
from tests.conftest import EXAMPLES, Cli, assert_clean_failure, bundle_files, leftovers, one_json_object

EXAMPLE = EXAMPLES / "orders_cdc_snowflake.yaml"
OTHER = EXAMPLES / "clickstream_lakehouse.yaml"


def memory_ids(cli: Cli) -> list[str]:
    proc = cli("memory", "export", "--json")
    assert proc.returncode == 0, proc.stderr
    return sorted(m["id"] for m in one_json_object(proc.stdout)["memories"])


# -- interrupted runs ---------------------------------------------------------------------------------


def slow_templates(tmp: Path) -> Path:
    """A user template that renders for tens of seconds, so a signal lands in the middle of rendering."""
    folder = tmp / "slow-templates" / "documentation"
    folder.mkdir(parents=True)
    original = (
        Path(__file__).resolve().parents[1] / "templates" / "documentation" / "lineage.md.j2"
    ).read_text()
    spin = "{% for i in range(100000) %}{% for j in range(10000) %}{% if i == j * 7 %}{% endif %}{% endfor %}{% endfor %}"
    (folder / "lineage.md.j2").write_text(spin + original)
    return tmp / "slow-templates"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_render_keeps_previous_bundle_and_memory(sig: int, run_cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    first = run_cli("design", EXAMPLE, "--out", out, "--json")
    assert first.returncode == 0, first.stderr
    before, ids_before = bundle_files(out), memory_ids(run_cli)

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "design",
            str(OTHER),
            "--out",
            str(out),
            "--templates",
            str(slow_templates(tmp_path)),
        ],
        env=run_cli.env,
        cwd=run_cli.cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell without job control starts background jobs with SIGINT ignored, and Python keeps that:
        # the run under test gets the default disposition, as from a terminal, whoever started pytest
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(
        6
    )  # start-up, steering, recall, pack and plan take a second or two; rendering takes far longer
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert "nothing was half-written" in err and "Traceback" not in err
    assert bundle_files(out) == before
    assert leftovers(tmp_path) == []
    assert memory_ids(run_cli) == ids_before


class ExplodingFiles(dict):
    """A bundle whose sixth file fails to materialise, as if the process were interrupted while writing."""

    def items(self) -> Iterator[tuple[str, str]]:  # type: ignore[override]
        for i, item in enumerate(super().items()):
            if i == 5:
                raise KeyboardInterrupt
            yield item


def test_interrupt_while_writing_leaves_previous_bundle(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    write_bundle(out, {"manifest.json": json.dumps({"tool": "data-agent"}), "a.txt": "old"})
    before = bundle_files(out)
    files = ExplodingFiles({f"dir{i}/f{i}.txt": "new" for i in range(10)})
    files["manifest.json"] = json.dumps({"tool": "data-agent"})
    with pytest.raises(KeyboardInterrupt):
        write_bundle(out, files)
    assert bundle_files(out) == before
    assert leftovers(tmp_path) == []


# -- repeat runs ---------------------------------------------------------------------------------------


def test_same_input_same_bytes(run_cli: Cli, tmp_path: Path) -> None:
    for name in ("a", "b"):
        proc = run_cli("design", EXAMPLE, "--out", tmp_path / name, "--no-memory")
        assert proc.returncode == 0, proc.stderr
    a, b = bundle_files(tmp_path / "a"), bundle_files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert bundle_files(tmp_path / "a", manifest=False) == bundle_files(tmp_path / "b", manifest=False)
    ma, mb = json.loads(a["manifest.json"]), json.loads(b["manifest.json"])
    for m in (ma, mb):  # only timings and timestamps may differ
        m.pop("total_seconds")
        m["report"].pop("started_at")
        m["report"]["stages"] = [s["stage"] for s in m["report"]["stages"]]
    assert ma == mb


def test_same_input_same_bytes_with_memory(run_cli: Cli, tmp_path: Path) -> None:
    for name in ("first", "second", "third"):
        assert run_cli("design", EXAMPLE, "--out", tmp_path / name).returncode == 0
    # the first run starts from an empty history; from then on the design recalls itself identically
    assert bundle_files(tmp_path / "second", manifest=False) == bundle_files(
        tmp_path / "third", manifest=False
    )


# -- the memory store under faults ------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to fill a real disk: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: nothing is left for close() to fail on
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_disk_full_is_a_clear_error_and_the_store_survives(
    tiny_disk: Path, run_cli: Cli, tmp_path: Path
) -> None:
    memory = tiny_disk / "memory"
    env = {**run_cli.env, "DATA_AGENT_MEMORY_DIR": str(memory)}
    cli = Cli(env=env, cwd=run_cli.cwd)
    assert cli("design", EXAMPLE, "--out", tmp_path / "one").returncode == 0
    before = memory_ids(cli)
    filler = fill(tiny_disk)

    line = assert_clean_failure(cli("design", OTHER, "--out", tmp_path / "two"), out=tmp_path / "two")
    assert "disk" in line.lower() or "space" in line.lower()

    filler.unlink()
    assert memory_ids(cli) == before  # nothing lost, nothing half-stored
    assert cli("design", OTHER, "--out", tmp_path / "three").returncode == 0
    assert len(memory_ids(cli)) == len(before) + 1


def test_busy_store_waits_then_fails_clearly(run_cli: Cli, memory_dir: Path) -> None:
    assert run_cli("memory", "stats").returncode == 0  # create the store
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"fh = open({str(memory_dir / '.data-agent.lock')!r}, 'a+')\n"
            "fcntl.flock(fh, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        env = {**run_cli.env, "DATA_AGENT_LOCK_TIMEOUT": "1"}
        # bounded: with a 1 s lock timeout the command gives up long before this subprocess timeout
        proc = run_cli("memory", "stats", env=env, timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == MemoryStoreError.exit_code
    assert "busy" in proc.stderr and "Traceback" not in proc.stderr
    assert run_cli("memory", "stats").returncode == 0  # usable again once the other process is gone


def test_damaged_store_is_detected_and_rebuilt(run_cli: Cli, memory_dir: Path, tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    assert run_cli("design", EXAMPLE, "--out", bundles / "orders").returncode == 0
    export = tmp_path / "export.jsonl"
    assert run_cli("memory", "export", "--out", export).returncode == 0
    exported = [json.loads(line)["id"] for line in export.read_text().splitlines()]

    database = memory_dir / "chroma.sqlite3"
    database.write_bytes(b"this is not a database" * 1000)
    proc = run_cli("memory", "stats")
    assert proc.returncode != 0
    assert "damaged" in proc.stderr and "memory rebuild" in proc.stderr and "Traceback" not in proc.stderr

    rebuilt = run_cli("memory", "rebuild", "--from-export", export, "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert one_json_object(rebuilt.stdout)["moved_aside"]
    assert memory_ids(run_cli) == sorted(exported)

    shutil.rmtree(memory_dir)
    from_bundles = run_cli("memory", "rebuild", "--from-bundles", bundles, "--json")
    assert from_bundles.returncode == 0, from_bundles.stderr
    design_id = json.loads((bundles / "orders" / "design.json").read_text())["id"]
    assert f"design-{design_id}" in memory_ids(run_cli)


def test_rebuild_needs_a_source(run_cli: Cli) -> None:
    proc = run_cli("memory", "rebuild")
    assert proc.returncode != 0 and "nothing to rebuild from" in proc.stderr


# -- user templates are untrusted code ---------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ design.__class__.__init__.__globals__ }}",
        "{{ request.model_config.__class__.__dict__ }}",
    ],
)
def test_user_templates_render_in_the_sandbox(payload: str, tmp_path: Path) -> None:
    from agent.runtime import DataEngineerAgent

    folder = tmp_path / "evil" / "bundle"
    folder.mkdir(parents=True)
    (folder / "README.md.j2").write_text(payload + "\n")
    agent = DataEngineerAgent(use_memory=False, templates=tmp_path / "evil")
    with pytest.raises(RenderError) as info:
        agent.design(EXAMPLE, out=tmp_path / "out")
    assert "unsafe" in str(info.value).lower() or "security" in str(info.value).lower()
    assert not (tmp_path / "out").exists()


def _user_template(tmp_path: Path, text: str) -> Path:
    """A --templates folder overriding bundle/README.md.j2 with ``text``."""
    folder = tmp_path / "t" / "bundle"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md.j2").write_text(text)
    return tmp_path / "t"


@pytest.mark.parametrize("name", ["environ", "env", "os", "getenv"])
def test_environment_is_not_reachable_from_templates(tmp_path: Path, name: str) -> None:
    """No template name leads to the process environment: a user template asking for it fails to render
    (StrictUndefined)."""
    from agent.runtime import DataEngineerAgent

    agent = DataEngineerAgent(use_memory=False, templates=_user_template(tmp_path, f"{{{{ {name} }}}}\n"))
    with pytest.raises(RenderError, match="undefined"):
        agent.design(EXAMPLE)


def test_a_secret_in_the_environment_reaches_no_bundle(tmp_path: Path, monkeypatch) -> None:
    from agent.runtime import DataEngineerAgent

    monkeypatch.setenv("DATA_AGENT_TEST_SECRET", "do-not-render")
    templates = _user_template(tmp_path, "{{ design.name }}\n")
    result = DataEngineerAgent(use_memory=False, templates=templates).design(EXAMPLE)
    assert result.files["README.md"].strip() == result.design.name  # the user template was used
    assert all("do-not-render" not in text for text in result.files.values())
