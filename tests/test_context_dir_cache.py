"""The whole-directory packing index behind ``data-agent context``: the same packs as the library's
``pack(load_policies(...))``, warm or cold, and never a stale index after an edit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent import compress
from agent.compress import load_index, pack, pack_index
from agent.request import request_from_text
from agent.steering import load_policies
from tests.conftest import forget_caches, record_counted, record_parsed

REQUESTS = [
    "Postgres CDC into Snowflake hourly with PII",
    "stream clickstream events from kafka into snowflake with customer emails",
]


def _ctx(root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"p{i}.md").write_text(
            f"---\nid: p{i}\ntitle: Policy {i}\n---\n## Loads {i}\n- Jobs MUST retry {i + 2} times.\n"
            f"- CDC feeds SHOULD land hourly in Snowflake.\n## PII\n- Emails MUST be masked in zone {i}.\n"
        )
    return root


def _dir_packs(root: Path, encoding: str = "cl100k_base") -> list[dict]:
    index, problems = load_index(root, encoding)
    out = []
    for text in REQUESTS:
        for budget in (60, 120, 4000):
            result = pack_index(index, request_from_text(text), None, (), budget, encoding, 1.0)
            out.append(result.model().model_dump())
    return out + [{"problems": [str(p) for p in problems]}]


def _fork_on(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Load with a forked child from two files on; returns the children forked from now on. The test
    fails, naming the threads, where a thread left behind by an earlier test keeps this process from
    forking, rather than pass without a child."""
    import threading

    if not hasattr(os, "fork") or (os.cpu_count() or 1) < 2:
        pytest.skip("the loader forks only on a POSIX machine with two CPUs or more")
    assert compress._can_fork(), f"threads alive: {threading.enumerate()}"
    monkeypatch.setattr(compress, "PARALLEL_MIN_FILES", 2)
    forked: list[int] = []
    fork = os.fork

    def recording_fork() -> int:
        pid = fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", recording_fork)
    return forked


def _reaped(pids: list[int]) -> bool:
    """Every one of ``pids`` has exited and been waited for (none left running, or a zombie)."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        return False
    return True


def _in_child(monkeypatch: pytest.MonkeyPatch, name: str, replacement: Callable[..., Any]) -> None:
    """``compress.<name>`` as ``replacement(original, *args)`` in a forked child, unchanged in this process."""
    parent, original = os.getpid(), getattr(compress, name)
    monkeypatch.setattr(
        compress,
        name,
        lambda *a, **kw: original(*a, **kw) if os.getpid() == parent else replacement(original, *a, **kw),
    )


def _edit(root: Path, i: int, times: int) -> str:
    """p{i}.md asks for ``times`` retries instead of i + 2; returns the edited clause's pack line (the first
    of its file's lines to be counted: see record_counted)."""
    path = root / f"p{i}.md"
    text = path.read_text()
    assert f"retry {i + 2} times" in text
    path.write_text(text.replace(f"retry {i + 2} times", f"retry {times} times"))
    return f"- [p{i}.loads-{i}.1] Jobs MUST retry {times} times.\n"


def _reload(root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    """Pack the directory again with this process's caches forgotten (as a new CLI run would) and check
    that the packs are the library's; returns the files parsed and the first line of each batch counted."""
    expected = _library_packs(root)  # before the recorders: the library parses and counts too
    forget_caches()
    parsed, counted = record_parsed(monkeypatch), record_counted(monkeypatch)
    assert _dir_packs(root) == expected
    return parsed, counted


def _rewrite_dir_cache(cache_dir: Path, key: str, change: Callable[[Any], Any]) -> None:
    """The directory cache file with its ``key`` entry replaced by ``change(entry)``."""
    from agent.diskcache import load_mapped, save_mapped

    (path,) = cache_dir.glob("pack-dir-*.map")
    data = load_mapped(path)
    data[key] = change(data[key])
    save_mapped(path, data, prefix=".t-")


def _library_packs(root: Path, encoding: str = "cl100k_base") -> list[dict]:
    ps = load_policies(root)
    out = []
    for text in REQUESTS:
        for budget in (60, 120, 4000):
            out.append(pack(ps, request_from_text(text), budget=budget, encoding=encoding).model_dump())
    return out + [{"problems": [str(p) for p in ps.problems]}]


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_cold_and_warm_directory_index_pack_like_the_library(cache_dir, tmp_path, encoding):
    root = _ctx(tmp_path / "ctx")
    (root / "broken.yaml").write_text("rules: [unclosed\n")
    expected = _library_packs(root, encoding)
    forget_caches()
    cold = _dir_packs(root, encoding)
    assert len(list(cache_dir.glob("pack-dir-*.map"))) == 1
    forget_caches()
    warm = _dir_packs(root, encoding)
    assert cold == expected
    assert warm == expected
    assert "malformed YAML" in warm[-1]["problems"][0]


def test_shipped_context_packs_like_the_library(cache_dir):
    for _ in range(2):  # cold, then from the directory cache
        forget_caches()
        index, _ = load_index(None)
        for text in REQUESTS:
            got = pack_index(index, request_from_text(text), None, (), 4000, "cl100k_base", 1.0).model()
            assert got == pack(load_policies(None), request_from_text(text))


def test_edit_with_same_size_and_mtime_is_seen(cache_dir, tmp_path):
    root = _ctx(tmp_path / "ctx")
    target = root / "p3.md"
    before = target.stat()
    assert "Zqrxwy" not in _dir_packs(root)[2]["text"]
    text = target.read_text().replace("Emails MUST be masked", "Zqrxwy MUST be masked")
    assert len(text) == before.st_size
    target.write_text(text)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size, same mtime
    forget_caches()
    index, _ = load_index(root)
    result = pack_index(index, None, "zqrxwy", (), 4000, "cl100k_base", 1.0)
    assert "Zqrxwy MUST be masked" in result.text


def test_added_and_removed_files_are_seen(cache_dir, tmp_path):
    root = _ctx(tmp_path / "ctx")
    load_index(root)
    (root / "extra.md").write_text("## Ops\n- Pagers MUST reach the zanzibarquux rota.\n")
    forget_caches()
    index, _ = load_index(root)
    assert "extra.ops.1" in index.ids.all()
    (root / "extra.md").unlink()
    forget_caches()
    index, _ = load_index(root)
    assert "extra.ops.1" not in index.ids.all()


def test_corrupt_directory_cache_is_a_cold_cache(cache_dir, tmp_path):
    root = _ctx(tmp_path / "ctx")
    expected = _dir_packs(root)
    (cached,) = cache_dir.glob("pack-dir-*.map")
    cached.write_bytes(b"\x80\x05not a pickle")
    forget_caches()
    assert _dir_packs(root) == expected


@pytest.mark.parametrize("damage", ["truncated", "missing", "not marshal"])
def test_damaged_facts_in_the_directory_cache_mean_those_files_are_read_again(
    cache_dir, tmp_path, monkeypatch, damage
):
    import numpy as np

    def damaged(blobs: list) -> list:
        blob = blobs[0].tobytes()
        return {
            "truncated": [np.frombuffer(blob[: len(blob) // 2], dtype=np.uint8)],
            "missing": [],
            "not marshal": [np.frombuffer(b"\xffnot marshal", dtype=np.uint8)],
        }[damage]

    root = _ctx(tmp_path / "ctx")
    _dir_packs(root)
    _rewrite_dir_cache(cache_dir, "facts", damaged)
    _edit(root, 2, 8)
    parsed, _ = _reload(root, monkeypatch)
    assert sorted(parsed) == [f"p{i}.md" for i in range(6)]  # no facts to trust: every file again


def test_wide_postings_index_like_narrow_ones(cache_dir, tmp_path, monkeypatch):
    """A file with 65,536 or more distinct terms (or words in its document) keeps its postings in 32-bit
    arrays: forced here for every file, then for the larger files only (a mixed corpus), the index is the
    same, array for array."""
    import numpy as np

    monkeypatch.setenv("DATA_AGENT_CACHE_DIR", "off")
    root = _ctx(tmp_path / "ctx", 8)
    for i in range(4):  # files of different sizes, so a threshold between them mixes the two widths
        extra = "".join(f"- Table t{i}_{n} MUST have an owner {n}.\n" for n in range(10 * i))
        (root / f"p{i}.md").write_text((root / f"p{i}.md").read_text() + extra)

    def index_with(threshold: int):
        monkeypatch.setattr(compress, "_WIDE_FROM", threshold)
        forget_caches()
        index, _ = load_index(root)
        return index, {f.wide for f in compress._LOADED.values()}

    (narrow, n), (wide, w), (mixed, m) = index_with(1 << 16), index_with(0), index_with(60)
    assert (n, w, m) == ({False}, {True}, {False, True})
    for other in (wide, mixed):
        for level in ("clause_bm25", "section_bm25", "policy_bm25"):
            a, b = getattr(narrow, level), getattr(other, level)
            for part in ("ptr", "docs", "parts"):
                assert np.array_equal(getattr(a, part), getattr(b, part)), (level, part)
        assert np.array_equal(narrow.specificity_term, other.specificity_term)
        assert narrow.vocab == other.vocab


def test_cache_off_still_packs(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_AGENT_CACHE_DIR", "off")
    root = _ctx(tmp_path / "ctx")
    assert _dir_packs(root) == _library_packs(root)


def test_json_lists_kept_items_and_near_misses(run_cli, tmp_path):
    from agent.commands.context import JSON_DROPPED_LISTED

    root = _ctx(tmp_path / "ctx", 40)
    args = ("context", REQUESTS[0], "--context", str(root), "--no-memory", "--budget", "300")
    short = run_cli.json(*args)
    full = run_cli.json(*args, "--explain")
    assert {k: v for k, v in short.items() if k not in ("items", "items_omitted")} == {
        k: v for k, v in full.items() if k not in ("items", "items_omitted")
    }
    assert full["items_omitted"] == 0
    listed, dropped = [], 0
    for item in full["items"]:  # in rank order: every kept clause and the best-ranked dropped ones
        dropped += item["status"] == "dropped"
        if item["status"] != "dropped" or dropped <= JSON_DROPPED_LISTED:
            listed.append(item)
    assert short["items"] == listed
    assert short["items_omitted"] == dropped - JSON_DROPPED_LISTED > 0
    assert sorted(i["id"] for i in listed if i["status"] == "kept") == sorted(short["policy_ids"])
    assert json.dumps(full["items"])  # plain JSON, every clause accounted for
    assert len(full["items"]) == 40 * 3


def test_an_edit_reparses_only_the_edited_file(cache_dir, tmp_path, monkeypatch):
    root = _ctx(tmp_path / "ctx")
    load_index(root)
    edited = _edit(root, 2, 9)
    parsed, _ = _reload(root, monkeypatch)
    assert parsed == ["p2.md"]
    assert edited in load_index(root)[0].lines.all()


def test_duplicate_ids_and_problems_are_reported_as_the_loader_does(cache_dir, tmp_path):
    root = _ctx(tmp_path / "ctx")
    (root / "zz-copy.md").write_text((root / "p1.md").read_text())
    (root / "notes.txt").write_text("Nothing normative here.\n")
    (root / "blob.md").write_bytes(b"\x00\x01binary")
    expected = _library_packs(root)
    assert any("duplicate policy id 'p1'" in p for p in expected[-1]["problems"])
    for _ in range(2):  # cold, then warm
        forget_caches()
        assert _dir_packs(root) == expected


def test_forked_loading_gives_the_same_index(cache_dir, tmp_path, monkeypatch):
    root = _ctx(tmp_path / "ctx", 12)
    (root / "broken.yaml").write_text("rules: [unclosed\n")  # a load problem in each share
    (root / "zz-broken.yaml").write_text("rules: [unclosed\n")
    expected = _library_packs(root)
    forked = _fork_on(monkeypatch)
    forget_caches()
    assert _dir_packs(root) == expected
    assert len(forked) == 1 and _reaped(forked)
    # the directory cache holds every file's facts (the parent's, and the child's blob as it sent it) and
    # the child's counts: after an edit, only the edited file is parsed and counted again
    edited = _edit(root, 9, 7)
    parsed, counted = _reload(root, monkeypatch)
    assert parsed == ["p9.md"]  # the last file: the child's share
    assert counted == [edited]


@pytest.mark.parametrize("failure", ["dies", "counts that do not fit", "not marshal"])
def test_a_child_that_fails_after_sending_its_facts_leaves_the_counting_to_the_parent(
    cache_dir, tmp_path, monkeypatch, failure
):
    """The child sends its facts first and their token counts later: when the counts never come, or come
    damaged, the parent counts them itself, and the index is the same."""
    import marshal

    def failing(original: Callable[..., bytes], loaded: list) -> bytes:
        if failure == "dies":
            raise RuntimeError("child crashed")
        if failure == "not marshal":
            return b"\xffnot marshal"
        records = marshal.loads(original(loaded))
        return marshal.dumps(
            [(src, {e: n[:-1] for e, n in lt.items()}, sc, pc) for src, lt, sc, pc in records]
        )

    root = _ctx(tmp_path / "ctx", 12)
    forked = _fork_on(monkeypatch)
    _in_child(monkeypatch, "_tokens_to_wire", failing)
    parsed, counted = _reload(root, monkeypatch)
    assert len(forked) == 1 and _reaped(forked)
    # the child's facts arrived: the parent parsed only its own share (the child's ends with p9)...
    assert "p9.md" not in parsed and len(parsed) == len(set(parsed)) < 12
    # ...and counted its own share and then the child's: every file once
    assert sorted(line.split(".")[0] for line in counted) == sorted(f"- [p{i}" for i in range(12))
    # what the cache keeps are the counts the index was built with: an edit counts only the edited file
    edited = _edit(root, 2, 8)
    _, counted = _reload(root, monkeypatch)
    assert counted == [edited]


@pytest.mark.parametrize("failure", ["dies before its facts", "sends damaged facts"])
def test_a_child_whose_facts_do_not_arrive_has_its_share_loaded_by_the_parent(
    cache_dir, tmp_path, monkeypatch, failure
):
    def dies(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("child crashed")

    root = _ctx(tmp_path / "ctx", 12)
    forked = _fork_on(monkeypatch)
    if failure == "dies before its facts":
        _in_child(monkeypatch, "_load_files", dies)
    else:
        _in_child(monkeypatch, "_to_wire", lambda original, loaded: b"\xffdamaged")
    parsed, _ = _reload(root, monkeypatch)
    assert sorted(parsed) == sorted(f"p{i}.md" for i in range(12))  # the child's share too, here
    assert len(forked) == 1 and _reaped(forked)  # stopped and waited for, even one that had signalled


def test_a_forked_reload_of_several_edited_files_keeps_every_count(cache_dir, tmp_path, monkeypatch):
    """Reloading a few edited files forks too (past PARALLEL_MIN_FILES); the cache written then must hold
    every file's facts with its counts, so the next edit is one file parsed and counted."""
    root = _ctx(tmp_path / "ctx", 12)
    forked = _fork_on(monkeypatch)
    _dir_packs(root)
    for i in (3, 5, 9):
        _edit(root, i, 30)
    parsed, _ = _reload(root, monkeypatch)
    assert len(forked) == 2 and _reaped(forked)
    # only edited files were parsed, the child's share of them in the child
    assert set(parsed) < {"p3.md", "p5.md", "p9.md"} and parsed
    edited = _edit(root, 0, 6)
    parsed, counted = _reload(root, monkeypatch)
    assert parsed == ["p0.md"] and counted == [edited]


def test_damaged_token_counts_in_the_directory_cache_are_counted_again(cache_dir, tmp_path, monkeypatch):
    import numpy as np

    def damaged(blobs: list) -> list:
        assert len(blobs) == 1  # the child's counts, sent after its facts
        return [np.frombuffer(b"\xffnot marshal", dtype=np.uint8)]

    root = _ctx(tmp_path / "ctx", 12)
    _fork_on(monkeypatch)
    _dir_packs(root)
    _rewrite_dir_cache(cache_dir, "tokens", damaged)
    edited = _edit(root, 2, 8)
    parsed, counted = _reload(root, monkeypatch)
    assert parsed == ["p2.md"]  # the facts were fine
    # the edited file, and the child's share whose counts were lost (it ends with p9), not the parent's
    assert edited in counted and "- [p9.loads-9.1] Jobs MUST retry 11 times.\n" in counted
    assert "- [p0.loads-0.1] Jobs MUST retry 2 times.\n" not in counted


FORKED_CHILDREN_SCRIPT = """
import os, sys
from pathlib import Path
from agent import compress, steering, validate
validate.warm()  # a DuckDB connection with its worker threads, as a warm design process holds
compress.PARALLEL_MIN_FILES = 2
statuses = []
waitpid = os.waitpid
def recording_waitpid(pid, options):
    got = waitpid(pid, options)
    statuses.append(got[1])
    return got
os.waitpid = recording_waitpid
root = Path(sys.argv[1])
cold, _ = compress.load_index(root)
# an edit in the child's share: the others' facts come from the directory cache (both processes' blobs)
last = sorted(root.iterdir())[-1]
last.write_text(last.read_text().replace("MUST retry", "MUST always retry"))
parsed = []
parse = steering.parse_policy_bytes
steering.parse_policy_bytes = lambda raw, path, root=None, **kw: parsed.append(path.name) or parse(raw, path, root, **kw)
warm, _ = compress.load_index(root)
assert warm.lines.all() == [line.replace("MUST retry", "MUST always retry") if last.stem + "." in line else line
                            for line in cold.lines.all()], "facts differ after the edit"
print(statuses, parsed)
"""


def test_forked_children_finish_their_work_in_a_process_holding_duckdb(tmp_path):
    """The forked loader exits 0 (a child that crashed would be redone, silently, by the parent). In a
    fresh interpreter: forking needs a process with one Python thread."""
    root = _ctx(tmp_path / "ctx", 12)
    env = {**os.environ, "DATA_AGENT_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", FORKED_CHILDREN_SCRIPT, str(root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    # the loader child exited 0; the second load (after an edit) parsed one file and forked nothing
    assert proc.stdout.strip() == "[0] ['p9.md']", proc.stdout + proc.stderr


def test_mapped_cache_file_round_trips_and_rejects_damage(tmp_path):
    import numpy as np

    from agent.diskcache import load_mapped, save_mapped

    path = tmp_path / "c.map"
    data = {"a": np.arange(1000, dtype=np.int64), "b": [1, "x"], "c": np.frombuffer(b"abc", dtype=np.uint8)}
    assert save_mapped(path, data, prefix=".t-")
    got = load_mapped(path)
    assert got["b"] == [1, "x"] and got["a"].tolist() == list(range(1000)) and got["c"].tobytes() == b"abc"
    whole = path.read_bytes()
    for damaged in (b"", whole[:20], whole[: len(whole) // 2], b"\x80\x05not a pickle", b"x" * 100):
        path.write_bytes(damaged)
        assert load_mapped(path) == {}
    assert load_mapped(tmp_path / "missing.map") == {}
    assert load_mapped(None) == {}


@pytest.mark.parametrize(
    "strings", [[], [""], ["- [a] b\n", "", "c"], ["Daten dürfen nicht", "x", "日本語の方針"]]
)
def test_lines_blob_gives_back_every_string(strings):
    """The index keeps clause lines as one UTF-8 blob with end offsets (ASCII and non-ASCII paths)."""
    lines = compress._Lines(strings)
    assert lines.all() == strings and len(lines) == len(strings)
    assert [lines[i] for i in reversed(range(len(strings)))] == strings[::-1]
