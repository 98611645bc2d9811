"""The memory store: the same suite against the embedded store and a real ``chroma run`` server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import memory_helpers as mh  # noqa: E402

from agent.errors import MemoryStoreError  # noqa: E402
from agent.memory import FORMAT_VERSION, MemoryStore, open_store  # noqa: E402
from agent.models import Memory  # noqa: E402
from agent.starters import starter_memories  # noqa: E402

STARTERS = len(starter_memories())


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    server = mh.ChromaServer(tmp_path_factory.mktemp("chroma") / "db")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["embedded", "server"])
def target(request, tmp_path):
    """Where a store lives: a directory, or the URL of a freshly emptied server."""
    if request.param == "embedded":
        return str(tmp_path / "mem")
    server = request.getfixturevalue("chroma_server")
    server.reset()
    return server.url


def store_at(target: str, **kw) -> MemoryStore:
    return MemoryStore(url=target, **kw) if target.startswith("http") else MemoryStore(target, **kw)


def learning(mid: str, text: str, **meta) -> Memory:
    return Memory(id=mid, kind="learning", text=text, metadata=meta)


def cli(*args: str) -> subprocess.CompletedProcess:
    """``data-agent memory ARGS`` in this process (a child costs ~2 s of imports on a busy machine)."""
    import contextlib
    import io

    from agent.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["memory", *args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def cli_child(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent", "memory", *args], capture_output=True, text=True, timeout=60
    )


def where_args(target: str) -> list[str]:
    return ["--memory-url", target] if target.startswith("http") else ["--memory-dir", target]


# -- the store ----------------------------------------------------------------------------------------


def test_seeds_starters_once_and_recalls(target):
    store = store_at(target)
    assert store.count() == STARTERS >= 12
    assert store_at(target).count() == STARTERS  # a second open does not reseed
    hits = store.recall("kafka streaming events into delta lake", k=5)
    assert len(hits) == 5 and hits[0].score >= hits[-1].score
    assert any("kafka" in h.memory.text.lower() for h in hits)
    assert set(hits[0].why) == {"similarity", "overlap", "rating", "recency", "use"}
    only = store.recall("quality rules", k=3, kinds=["learning"])
    assert only and all(h.memory.kind == "learning" for h in only)


def test_dedupe_exact_and_near(target):
    store = store_at(target, seed=False)
    text = "Use MERGE with a dedupe key on (id, updated_at) so late CDC rows never double count revenue"
    assert store.add(learning("a", text)) == "a"
    assert (
        store.add(
            learning(
                "b",
                "  use merge with a dedupe KEY on (id, updated_at) so late CDC rows never "
                "double count revenue",
            )
        )
        == "a"
    )
    assert store.count() == 1
    near = text.replace("revenue", "revenues.")  # same terms, different bytes: cosine ~1.0
    assert store.add(learning("c", near, topic="quality")) == "a"  # near-duplicate of the same kind
    assert store.count() == 1
    got = store.get("a")
    assert got.text == near and got.metadata["topic"] == "quality"
    # the same text as another kind is not a near-duplicate of a learning, but an exact repeat is kept once
    assert (
        store.add(Memory(id="d", kind="design", text="A totally different design about IoT sensors")) == "d"
    )
    assert store.count() == 2


def test_rate_mark_used_forget(target):
    store = store_at(target, seed=False)
    store.add_many(
        [learning("x", "Partition Iceberg by day"), learning("y", "Compact small Delta files hourly")]
    )
    rated = store.rate("x", 5, note="saved a migration")
    assert rated.rating == 5.0 and rated.metadata["notes"][0]["note"] == "saved a migration"
    store.mark_used(["x", "x", "y"])
    assert store.get("x").use_count == 1
    with pytest.raises(MemoryStoreError):
        store.rate("x", 6)
    with pytest.raises(MemoryStoreError, match="no memory with id 'nope'"):
        store.get("nope")
    with pytest.raises(MemoryStoreError):
        store.forget(ids=["nope"])
    assert store.forget(ids=["y"]) == ["y"]
    assert store.count() == 1
    old = Memory(
        id="old",
        kind="result",
        text="ancient",
        created_at="2020-01-01T00:00:00+00:00",
        updated_at="2020-01-01T00:00:00+00:00",
        metadata={"agent": "qa-engineer"},
    )
    store.import_memories([old])
    assert store.forget(older_than_days=365, dry_run=True) == ["old"] and store.count() == 2
    assert store.forget(kind="result", where={"agent": "qa-engineer"}) == ["old"]
    assert store.count() == 1


def test_export_import_round_trip_and_broken_line(target, tmp_path):
    store = store_at(target)
    store.add(learning("note-1", "Snowflake auto-suspend 60s", sources=["postgres"], nested={"a": [1, 2]}))
    store.rate("note-1", 4)
    store.mark_used(["note-1"])
    out = tmp_path / "export.jsonl"
    assert cli("export", "-o", str(out), *where_args(target)).returncode == 0
    lines = out.read_text().splitlines()
    assert len(lines) == STARTERS + 1
    exported = [json.loads(line) for line in lines]

    fresh = str(tmp_path / "restored")
    res = cli_child("import", str(out), "--memory-dir", fresh, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["imported"] == STARTERS + 1
    again = tmp_path / "again.jsonl"
    cli("export", "-o", str(again), "--memory-dir", fresh)
    assert again.read_text() == out.read_text()
    note = next(m for m in exported if m["id"] == "note-1")
    assert note["rating"] == 4.0 and note["use_count"] == 1 and note["metadata"]["nested"] == {"a": [1, 2]}

    broken = tmp_path / "broken.jsonl"
    bad = dict(exported[0], id="new-one")
    broken.write_text(json.dumps(bad) + "\n" + '{"id": "x", "kind": "nonsense", "text": "t"}\n')
    empty = str(tmp_path / "untouched")
    res = cli("import", str(broken), "--memory-dir", empty, "--json")
    assert res.returncode != 0
    err = json.loads(res.stdout)
    assert err["line"] == 2 and "line 2" in err["message"]
    assert not Path(empty).exists() or store_at(empty, seed=False).count() == 0


def test_cli_every_subcommand_json(target, tmp_path):
    w = where_args(target)

    def run(*args):
        res = cli(*args, *w, "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    assert run("stats")["count"] == STARTERS
    added = run("add", "Backfill Kafka topics with a bounded consumer group", "--topic", "troubleshooting")
    mid = added["id"]
    again = run("add", "backfill kafka topics with a bounded consumer group")
    assert again["deduplicated"] is True and again["outcome"] == "duplicate" and again["id"] == mid
    assert run("show", mid)["metadata"]["topic"] == "troubleshooting"
    assert run("search", "kafka backfill", "-k", "3")["results"][0]["memory"]["id"] == mid
    assert run("rate", mid, "4", "--note", "worked")["rating"] == 4.0
    design_id = next(m.id for m in starter_memories() if m.kind == "design")
    result_file = tmp_path / "qa.json"
    result_file.write_text(
        json.dumps(
            {"subagent_type": "qa-engineer", "summary": "Null checks on claim_id caught 3% orphan rows"}
        )
    )
    res = run("add-result", design_id, str(result_file))
    got = run("show", res["id"])
    assert got["kind"] == "result" and got["metadata"]["design_memory_id"] == design_id
    assert got["metadata"]["agent"] == "qa-engineer"
    hits = run("search", "orphan claim_id null checks", "--kind", "result")["results"]
    assert hits[0]["memory"]["id"] == res["id"]
    assert run("export")["count"] == STARTERS + 2
    assert run("forget", "--id", mid)["count"] == 1
    assert run("reindex")["reindexed"] == STARTERS + 1
    assert run("stats")["by_kind"]["result"] == 1
    missing = cli("show", "nope", *w, "--json")
    assert missing.returncode != 0 and json.loads(missing.stdout)["error"] == "MemoryStoreError"
    missing = cli("add-result", "nope", str(result_file), *w)
    assert missing.returncode != 0 and "no design" in missing.stderr


def test_embedder_mismatch_names_reindex(target):
    store_at(target).count()

    class Other:
        name = "other-v1"
        dimension = 384

        def embed(self, texts):
            return [[1.0] + [0.0] * 383 for _ in texts]

    with pytest.raises(MemoryStoreError, match="data-agent memory reindex"):
        store_at(target, embedder=Other()).count()
    other = store_at(target, embedder=Other())
    assert other.reindex() == STARTERS
    assert other.count() == STARTERS
    with pytest.raises(MemoryStoreError, match="data-agent memory reindex"):
        store_at(target).count()
    assert store_at(target).reindex() == STARTERS


# -- concurrency ----------------------------------------------------------------------------------------


def test_eight_writers_and_a_reader(target, tmp_path):
    """8 processes store 25 designs each while a 9th keeps a store open and reads."""
    store_at(target).count()  # seed first, as an installed plugin would have
    stop = tmp_path / "stop"
    helper = str(Path(mh.__file__))
    reader = subprocess.Popen(
        [sys.executable, helper, "read", target, str(stop)], stdout=subprocess.PIPE, text=True
    )
    writers = [
        subprocess.Popen(
            [sys.executable, helper, "write", target, f"w{i}", "25"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    try:
        outs = [w.communicate(timeout=150) for w in writers]
    finally:
        stop.touch()
        for w in writers:
            if w.poll() is None:
                w.kill()
    rout, _ = reader.communicate(timeout=60)
    ids = []
    for w, (out, err) in zip(writers, outs):
        report = json.loads(out)
        assert w.returncode == 0 and report["errors"] == [], (report["errors"], err[-2000:])
        ids += report["ids"]
    assert len(set(ids)) == 200
    rep = json.loads(rout)
    assert reader.returncode == 0 and rep["errors"] == [] and rep["reads"] > 0
    assert rep["last"] == [200 + STARTERS]  # the long-lived reader sees the other processes' writes
    store = store_at(target)
    assert store.count() == 200 + STARTERS
    assert len(store.all()) == 200 + STARTERS
    got = store.get_many(ids)
    assert len(got) == 200 and all(m.text.startswith("Design ") for m in got)
    assert store.recall("postgres to snowflake batch", k=5)
    with store.session(write=False) as collection:  # the index holds every record: each is its own nearest
        found = collection.query(
            query_embeddings=store.embedder.embed([m.text for m in got]), n_results=1, include=["distances"]
        )
    assert [hit[0] for hit in found["ids"]] == [m.id for m in got]


def test_embedded_client_kept_until_another_process_writes(tmp_path):
    from chromadb.api.shared_system_client import SharedSystemClient

    path = tmp_path / "mem"
    store = store_at(str(path))
    store.count()
    store.recall("postgres to snowflake", k=3)
    store.get_many(["nothing-here"])
    assert store.stats["opens"] == 1  # reads keep the client (and its loaded index)
    other = subprocess.run(
        [sys.executable, str(Path(mh.__file__)), "write", str(path), "other", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode == 0, other.stderr[-2000:]
    # the other process changed the store: the kept client is stale, so the next operation reopens and sees
    assert store.count() == STARTERS + 2
    assert store.stats["opens"] == 2
    store.add(learning("mine", "A learning about Kafka consumer lag alerts written by this process"))
    assert store.count() == STARTERS + 3 and store.stats["opens"] == 2  # its own write keeps it current
    assert str(path) in SharedSystemClient._identifier_to_system
    store.close()
    assert str(path) not in SharedSystemClient._identifier_to_system
    assert MemoryStore(path).count() == STARTERS + 3


def test_failed_operation_drops_the_kept_client(tmp_path):
    path = tmp_path / "mem"
    store = store_at(str(path))
    store.count()
    with pytest.raises(MemoryStoreError), store.session() as collection:
        collection.add(ids=["x"], embeddings=[[0.0, 1.0]], documents=["wrong dimension"])
    assert store.count() == STARTERS and store.stats["opens"] == 2  # reopened after the failure


# -- bad input -----------------------------------------------------------------------------------------


def test_server_down_fails_fast_naming_url():
    url = f"http://127.0.0.1:{mh.free_port()}"
    started = time.monotonic()
    with pytest.raises(MemoryStoreError) as exc:
        open_store(memory_url=url).count()
    assert time.monotonic() - started < 5
    assert url in str(exc.value)
    res = cli_child("stats", "--memory-url", url, "--json")
    assert res.returncode != 0 and url in json.loads(res.stdout)["message"]


def test_memory_dir_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(MemoryStoreError, match="is a file"):
        store_at(str(f)).count()


def test_newer_format_version(tmp_path):
    d = tmp_path / "mem"
    d.mkdir()
    (d / "data-agent.json").write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(MemoryStoreError, match="newer"):
        store_at(str(d)).count()


def test_newer_format_version_in_collection(target):
    import chromadb

    store = store_at(target, seed=False)
    with store.session() as col:
        meta = {k: v for k, v in col.metadata.items() if not k.startswith("hnsw:")}
        col.modify(metadata={**meta, "format_version": FORMAT_VERSION + 1})
    del chromadb
    with pytest.raises(MemoryStoreError, match="newer"):
        store_at(target).count()
