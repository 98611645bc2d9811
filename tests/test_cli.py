"""The ``data-agent`` command line, run as a user runs it: a subprocess with its own memory and HOME."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.runtime import STAGES
from tests.conftest import EXAMPLES, Cli, assert_clean_failure, isolated_env, one_json_object

ORDERS = EXAMPLES / "orders_cdc_snowflake.yaml"
FREE_TEXT = "CDC from Postgres orders and customers into Snowflake every hour, emails are PII, GDPR applies"
SIMILAR_TEXT = (
    "Hourly CDC of the Postgres orders and customers tables into Snowflake; emails are PII under GDPR"
)
ROLES = ("security-engineer", "devops-engineer", "qa-engineer")


# ---------------------------------------------------------------------------------------------------
# One design run per shape, shared by the session


class Run:
    def __init__(self, cli: Cli, request: str | Path, out: Path) -> None:
        self.request = request
        self.out = out
        self.proc = cli("design", request, "--out", out, "--json")
        assert self.proc.returncode == 0, self.proc.stderr
        self.data = one_json_object(self.proc.stdout)

    @property
    def report(self) -> dict[str, Any]:
        return self.data["report"]


@pytest.fixture(scope="session")
def yaml_run(session_cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return Run(session_cli, ORDERS, tmp_path_factory.mktemp("bundles") / "orders")


@pytest.fixture(scope="session")
def text_run(session_cli: Cli, yaml_run: Run, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return Run(session_cli, FREE_TEXT, tmp_path_factory.mktemp("bundles") / "free-text")


@pytest.fixture(scope="session")
def recall_run(session_cli: Cli, text_run: Run, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A second, similar request made after ``text_run`` by the same user."""
    return Run(session_cli, SIMILAR_TEXT, tmp_path_factory.mktemp("bundles") / "similar")


@pytest.fixture(params=["yaml", "text"])
def run(request: pytest.FixtureRequest) -> Run:
    return request.getfixturevalue(f"{request.param}_run")


# ---------------------------------------------------------------------------------------------------
# The bundle


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size > 0]


def test_design_json_is_one_object_with_bundle_delegations_report(run: Run) -> None:
    assert {"bundle", "delegations", "report"} <= run.data.keys()
    assert Path(run.data["bundle"]) == run.out.resolve()
    assert run.data["report"]["design_id"] == run.data["design_id"]
    assert run.proc.stderr.strip() == "", "a --json run should print nothing else, not even progress"


@pytest.mark.parametrize(
    "section, expect",
    [
        ("architecture", r"\.md$"),
        ("pipelines", r"\.(ya?ml|py)$"),
        ("storage", r"\.sql$"),
        ("processing", r"\.(sql|ya?ml)$"),
        ("quality", r"\.(sql|ya?ml)$"),
        ("documentation", r"lineage"),
    ],
)
def test_bundle_has_each_section(run: Run, section: str, expect: str) -> None:
    folder = run.out / section
    assert folder.is_dir(), f"{section}/ missing from {sorted(p.name for p in run.out.iterdir())}"
    names = [str(p.relative_to(folder)) for p in _files(folder)]
    assert any(re.search(expect, n) for n in names), f"{section}/ has no file matching {expect}: {names}"


def test_architecture_carries_a_mermaid_flowchart(run: Run) -> None:
    text = next((run.out / "architecture").glob("*.md")).read_text()
    assert "```mermaid" in text and "flowchart" in text


def test_documentation_has_column_lineage(run: Run) -> None:
    events = []
    for path in (run.out / "documentation").rglob("*.json"):
        data = json.loads(path.read_text())
        events += data if isinstance(data, list) else [data]
    assert events, "no OpenLineage events under documentation/"
    facets = [ds.get("facets", {}).get("columnLineage") for e in events for ds in e.get("outputs", []) if ds]
    assert any(f and f.get("fields") for f in facets), "no output dataset carries column lineage"


def test_delegations_yaml_and_json_agree_with_stdout(run: Run) -> None:
    as_json = json.loads((run.out / "delegations.json").read_text())
    as_yaml = yaml.safe_load((run.out / "delegations.yaml").read_text())
    tasks = as_json if isinstance(as_json, list) else as_json["tasks"]
    yaml_tasks = as_yaml if isinstance(as_yaml, list) else as_yaml["tasks"]
    assert tasks == run.data["delegations"]
    assert [t["prompt"] for t in yaml_tasks] == [t["prompt"] for t in tasks]


def test_manifest_holds_the_run_report(run: Run) -> None:
    manifest = json.loads((run.out / "manifest.json").read_text())
    report = manifest["report"]
    assert manifest["design_id"] == run.data["design_id"]
    assert report == run.report, "manifest.json and --json must carry the same, complete report"
    assert [s["stage"] for s in report["stages"]] == list(STAGES)
    assert all(s["seconds"] >= 0 for s in report["stages"])
    assert 0 < report["tokens_after_packing"] <= report["budget"] == 4000
    assert report["tokens_before_packing"] > report["tokens_after_packing"], "nothing was packed away"
    assert report["policies_used"], "no policy clause reached the context"
    assert report["memories_used"], "a fresh store holds starter designs; none was recalled"
    assert report["remembered"], "the design was not stored"


def test_policies_used_are_clauses_of_the_shipped_policies(yaml_run: Run, session_cli: Cli) -> None:
    listing = session_cli.json("policies", "list")
    policy_ids = {p["id"] for p in listing["policies"]}
    used = yaml_run.report["policies_used"]
    assert all(u.split(".")[0] in policy_ids for u in used), (used, policy_ids)


def test_second_similar_request_recalls_the_first(text_run: Run, recall_run: Run) -> None:
    first = text_run.report["remembered"]
    recalled = [m["id"] for m in recall_run.report["memories_used"]]
    assert first in recalled, f"{first} not recalled; got {recalled}"
    assert text_run.data["design_id"] in first


# ---------------------------------------------------------------------------------------------------
# Delegations carry this design's specifics


def _by_role(run: Run) -> dict[str, dict[str, Any]]:
    tasks: dict[str, dict[str, Any]] = {}
    for task in run.data["delegations"]:
        role = task["subagent_type"].rsplit(":", 1)[-1]
        assert role not in tasks, f"two tasks for {role}"
        tasks[role] = task
    return tasks


def test_one_agent_tool_task_per_role(run: Run) -> None:
    tasks = _by_role(run)
    assert set(ROLES) <= tasks.keys()
    for role in ROLES:
        task = tasks[role]
        assert isinstance(task["subagent_type"], str) and task["subagent_type"].endswith(role)
        assert 3 <= len(task["description"].split()) <= 5, task["description"]
        assert len(task["prompt"]) > 300
        assert run.data["design_id"] in task["prompt"]


def test_prompts_carry_sources_pii_components_and_rules(yaml_run: Run) -> None:
    tasks = _by_role(yaml_run)
    request = yaml.safe_load(ORDERS.read_text())
    security, devops, qa = (tasks[r]["prompt"] for r in ROLES)

    for source in request["sources"]:
        assert source["name"] in security
    pii = {c["name"] for s in request["sources"] for e in s["entities"] for c in e["columns"] if c.get("pii")}
    assert pii
    for column in pii:
        assert re.search(rf"\.{column}\b", security), f"PII column {column} not in the security prompt"

    arch = next((yaml_run.out / "architecture").glob("*.md")).read_text()
    table = arch.split("## Components", 1)[1].split("\n## ", 1)[0]
    components = re.findall(r"^\| (\w+) \| (\w+) \|", table, flags=re.M)
    built = [name for name, kind in components if kind not in ("Component", "source")]
    assert len(built) >= 4
    for name in built:
        assert name in devops, f"component {name} not in the devops prompt"

    rule_ids = re.findall(r"^-- check: (\S+)", (yaml_run.out / "quality" / "checks.sql").read_text(), re.M)
    cited = re.findall(r"`(dq_\w+)`", qa)
    assert len(cited) >= min(len(rule_ids), 10), "the qa prompt lists too few of the design's rules"
    assert set(cited) <= set(rule_ids), "the qa prompt cites rules this design does not have"


def test_prompts_differ_between_designs(yaml_run: Run, text_run: Run) -> None:
    a, b = _by_role(yaml_run), _by_role(text_run)
    for role in ROLES:
        assert a[role]["prompt"] != b[role]["prompt"]
    assert "email" in b["security-engineer"]["prompt"]
    assert "orders_db" not in b["security-engineer"]["prompt"]


# ---------------------------------------------------------------------------------------------------
# context


@pytest.mark.parametrize("budget", [300, 1200])
def test_context_respects_budget_and_counts_with_tiktoken(run_cli: Cli, budget: int) -> None:
    from agent.tokens import count

    data = run_cli.json("context", FREE_TEXT, "--budget", str(budget))
    assert {"text", "tokens"} <= data.keys()
    assert 0 < data["tokens"] <= budget
    assert data["tokens"] == count(data["text"], "cl100k_base")
    assert data["tokens_before"] > budget


def test_context_default_budget_is_4000(run_cli: Cli) -> None:
    data = run_cli.json("context", str(ORDERS), "--no-memory")
    assert data["budget"] == 4000
    assert data["tokens"] <= 4000
    assert "MUST" in data["text"]


def test_context_text_mode_prints_pack_and_count(run_cli: Cli) -> None:
    proc = run_cli("context", FREE_TEXT, "--budget", "400", "--no-memory")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"\[(\d+) tokens of 400", proc.stderr)
    assert "MUST" in proc.stdout


# ---------------------------------------------------------------------------------------------------
# every command's --json, and a light --help / --version


@pytest.mark.parametrize(
    "args",
    [("policies", "list"), ("policies", "lint"), ("memory", "stats"), ("memory", "search", "orders cdc")],
)
def test_other_commands_print_one_json_object(run_cli: Cli, args: tuple[str, ...]) -> None:
    proc = run_cli(*args, "--json")
    assert proc.returncode in (0, 1), proc.stderr  # lint may report problems, still one object
    one_json_object(proc.stdout)


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_import_neither_chromadb_nor_anthropic(flag: str, home: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "agent", flag],
        capture_output=True,
        text=True,
        env=isolated_env(home),
        timeout=60,
    )
    assert proc.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "agent.cli" in imported, "importtime output not captured; the test would prove nothing"
    heavy = sorted(m for m in imported if m.split(".")[0] in ("chromadb", "anthropic"))
    assert heavy == []


def test_version_matches_package(run_cli: Cli) -> None:
    from agent import __version__

    proc = run_cli("--version")
    assert proc.stdout.strip() == f"data-agent {__version__}"


# ---------------------------------------------------------------------------------------------------
# Bad input: one clear line, no traceback, nothing half-written


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_missing_request_file(run_cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    line = assert_clean_failure(run_cli("design", tmp_path / "nope.yaml", "--out", out), out=out)
    assert "nope.yaml" in line and "not found" in line


def test_malformed_yaml_names_file_and_line(run_cli: Cli, write: Any, tmp_path: Path) -> None:
    path = write("broken.yaml", "name: broken\ngoal: test\nsources:\n  - name: a\n   kind: postgres\n")
    out = tmp_path / "out"
    line = assert_clean_failure(run_cli("design", path, "--out", out), out=out)
    assert f"{path}:5" in line, line
    assert "malformed YAML" in line


def test_unknown_source_kind_lists_known_kinds(run_cli: Cli, write: Any, tmp_path: Path) -> None:
    from agent.models import SOURCE_KINDS

    path = write(
        "unknown.yaml",
        "name: x\ngoal: y\nsources:\n  - name: s\n    kind: telepathy\ntargets:\n  - warehouse: duckdb\n",
    )
    out = tmp_path / "out"
    line = assert_clean_failure(run_cli("design", path, "--out", out), out=out)
    assert "telepathy" in line and f"{path}:5" in line
    assert all(kind in line for kind in SOURCE_KINDS)


def test_out_under_a_regular_file(run_cli: Cli, tmp_path: Path) -> None:
    blocker = tmp_path / "somefile"
    blocker.write_text("not a directory\n")
    out = blocker / "out"
    line = assert_clean_failure(run_cli("design", ORDERS, "--out", out))
    assert str(out) in line
    assert blocker.read_text() == "not a directory\n"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(("home", "cwd"))) == [
        "somefile"
    ]


def test_out_that_is_a_file(run_cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "bundle.txt"
    target.write_text("keep me\n")
    assert_clean_failure(run_cli("design", ORDERS, "--out", target))
    assert target.read_text() == "keep me\n"


def test_out_never_replaces_a_users_own_folder(run_cli: Cli, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.md").write_text("mine\n")
    line = assert_clean_failure(run_cli("design", ORDERS, "--out", project))
    assert "not a data-agent bundle" in line
    assert (project / "notes.md").read_text() == "mine\n"
    assert [p.name for p in project.iterdir()] == ["notes.md"]


def test_failed_run_leaves_previous_bundle_intact(
    run_cli: Cli, yaml_run: Run, write: Any, tmp_path: Path
) -> None:
    previous = tmp_path / "bundle"
    shutil.copytree(yaml_run.out, previous)
    before = _tree_digest(previous)
    bad = write("bad.yaml", "name: x\ngoal: y\nsources: [\n")
    assert_clean_failure(run_cli("design", bad, "--out", previous))
    assert _tree_digest(previous) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_rerun_replaces_a_previous_bundle(run_cli: Cli, yaml_run: Run, tmp_path: Path) -> None:
    previous = tmp_path / "bundle"
    shutil.copytree(yaml_run.out, previous)
    (previous / "stale.txt").write_text("from an older run\n")
    proc = run_cli("design", ORDERS, "--out", previous, "--json", "--no-memory")
    assert proc.returncode == 0, proc.stderr
    assert not (previous / "stale.txt").exists()
    assert (previous / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "name, content, expect",
    [
        ("list.yaml", "- name: a\n- name: b\n", "must be a mapping"),
        ("empty.yaml", "", "empty"),
        ("wrong-type.json", '{"name": "x", "goal": "y", "sources": "postgres", "targets": []}', "sources"),
        ("bad.json", '{"name": "x",\n "goal": }', "malformed JSON"),
        (
            "bad-freshness.yaml",
            "goal: y\nfreshness: whenever\nsources: [{name: s, kind: kafka}]\n",
            "freshness",
        ),
        (
            "no-target.yaml",
            "goal: y\nsources: [{name: s, kind: kafka}]\ntargets: [{}]\n",
            "warehouse or a lake",
        ),
    ],
)
def test_other_bad_requests(
    run_cli: Cli, write: Any, tmp_path: Path, name: str, content: str, expect: str
) -> None:
    path = write(name, content)
    out = tmp_path / "out"
    line = assert_clean_failure(run_cli("design", path, "--out", out), out=out)
    assert name in line and expect in line, line


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_free_text(run_cli: Cli, tmp_path: Path, text: str) -> None:
    out = tmp_path / "out"
    line = assert_clean_failure(run_cli("design", text, "--out", out), out=out)
    assert "empty" in line


def test_error_with_json_prints_one_json_error_object(run_cli: Cli, tmp_path: Path) -> None:
    proc = run_cli("design", tmp_path / "nope.yaml", "--out", tmp_path / "out", "--json")
    assert_clean_failure(proc, out=tmp_path / "out")
    err = one_json_object(proc.stdout)
    assert err["error"] == "RequestError" and err["path"].endswith("nope.yaml")


def test_context_rejects_a_tiny_budget(run_cli: Cli) -> None:
    line = assert_clean_failure(run_cli("context", FREE_TEXT, "--budget", "10"))
    assert "--budget" in line


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize(
    "args, buffered",
    [
        # unbuffered, argparse itself swallows a failed write of --version (its _print_message)
        (("--version",), True),
        (("context", "CDC into Snowflake", "--no-memory"), True),
        (("context", "CDC into Snowflake", "--no-memory"), False),
        (("context", "x", "--no-memory", "--json"), True),
        (("context", "x", "--no-memory", "--json"), False),
    ],
)
def test_output_that_cannot_be_written_is_an_error(
    run_cli: Cli, args: tuple[str, ...], buffered: bool
) -> None:
    """stdout on a full device: one line on stderr and exit 2, not a traceback or a silent 0, whether the
    write fails mid-command (unbuffered) or only at the final flush (buffered, the usual)."""
    env = {k: v for k, v in run_cli.env.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    with open("/dev/full", "w") as full:  # run_cli captures stdout; this needs it on the device
        proc = subprocess.run(
            [sys.executable, "-m", "agent", *args],
            cwd=run_cli.cwd,
            env=env,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2
    assert assert_clean_failure(proc) == "data-agent: error: cannot write the output: No space left on device"


def test_a_reader_that_goes_away_is_not_an_error(run_cli: Cli, tmp_path: Path) -> None:
    """`data-agent memory export | head -1`: the pipe closes early; the command ends quietly with 0. The
    export (the 51 starters) is over a pipe's 64 KB buffer, so the writer is sure to meet the closed pipe."""
    mem = tmp_path / "mem"
    assert run_cli("memory", "stats", "--memory-dir", mem).returncode == 0  # creates and seeds the store
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "memory", "export", "--memory-dir", str(mem)],
        cwd=run_cli.cwd,
        env=run_cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"{")
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == b""
