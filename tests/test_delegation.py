"""Delegation tasks: planned per design, launchable, configurable targets, and every bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.delegation import (
    DEFAULT_TARGETS,
    MAX_PROMPT_CHARS,
    known_agents,
    launch_waves,
    plan_delegations,
    resolve_targets,
    roles_for,
    validate_tasks,
)
from agent.errors import DelegationError
from agent.models import DelegationTask
from agent.runtime import DataEngineerAgent

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def design():
    return DataEngineerAgent(use_memory=False).design(EXAMPLES / "orders_cdc_snowflake.yaml").design


@pytest.fixture(scope="module")
def ml_design():
    return DataEngineerAgent(use_memory=False).design(EXAMPLES / "ml_feature_store.yaml").design


def task(tid: str, deps: list[str] | None = None, **kw) -> dict:
    return {
        "id": tid,
        "subagent_type": kw.pop("subagent_type", "data-agent:qa-engineer"),
        "description": kw.pop("description", "Test the orders pipeline"),
        "prompt": kw.pop("prompt", "Write the test plan."),
        "depends_on": deps or [],
        **kw,
    }


def test_tasks_are_self_contained_and_specific(design) -> None:
    tasks = plan_delegations(design)
    roles = [t.id.rsplit(":", 1)[1] for t in tasks]
    assert roles[:3] == ["security-engineer", "qa-engineer", "devops-engineer"]
    for t in tasks:
        assert 3 <= len(t.description.split()) <= 5
        assert len(t.prompt) <= MAX_PROMPT_CHARS
        assert "no other context" in t.prompt
        assert design.id in t.prompt and design.name in t.prompt
        assert t.design_ref == design.id and t.expected_output
    security = tasks[0].prompt
    # the security brief names this design's sources, targets and components
    for source in design.request.sources:
        assert source.name in security
    for component in design.architecture.components:
        assert component.name in security
    qa = next(t for t in tasks if t.id.endswith("qa-engineer")).prompt
    assert any(rule.table in qa for rule in design.quality.rules)


def test_waves_parallel_groups_go_out_together(design) -> None:
    tasks = validate_tasks(plan_delegations(design), known_agents=known_agents())
    waves = launch_waves(tasks)
    first = {t.subagent_type for t in waves[0]}
    assert first == {"data-agent:security-engineer", "data-agent:qa-engineer"}
    devops = next(t for t in tasks if t.id.endswith("devops-engineer"))
    assert devops.depends_on == [f"{design.id}:security-engineer"]
    assert devops in waves[1]
    seen: set[str] = set()
    for wave in waves:
        assert all(set(t.depends_on) <= seen for t in wave)
        assert len({t.parallel_group for t in wave}) == 1
        seen |= {t.id for t in wave}
    assert seen == {t.id for t in tasks}


def test_developer_and_genai_when_warranted(design, ml_design) -> None:
    assert "genai-engineer" not in roles_for(design) or "ml" in " ".join(design.request.consumers).lower()
    ml_roles = roles_for(ml_design)
    assert "genai-engineer" in ml_roles
    tasks = plan_delegations(ml_design)
    genai = next(t for t in tasks if t.id.endswith("genai-engineer"))
    assert genai.subagent_type == DEFAULT_TARGETS["genai-engineer"] == "general-purpose"
    api = ml_design.model_copy(
        update={"request": ml_design.request.model_copy(update={"consumers": ["Data API", "BI"]})}
    )
    assert "developer" in roles_for(api)


def test_agent_map_renames_targets(design) -> None:
    tasks = plan_delegations(design, targets={"qa-engineer": "qa-expert", "developer": "backend-dev"})
    qa = next(t for t in tasks if t.id.endswith("qa-engineer"))
    assert qa.subagent_type == "qa-expert"
    validate_tasks(tasks, known_agents=known_agents({"qa-engineer": "qa-expert", "developer": "backend-dev"}))
    with pytest.raises(DelegationError, match="unknown subagent_type 'qa-expert'"):
        validate_tasks(tasks, known_agents=known_agents())
    with pytest.raises(DelegationError, match="not one of"):
        resolve_targets({"tester": "x"})
    with pytest.raises(DelegationError, match="non-empty"):
        resolve_targets({"qa-engineer": " "})


def test_library_agent_map_reaches_the_tasks() -> None:
    agent = DataEngineerAgent(use_memory=False, agent_map={"security-engineer": "sec-reviewer"})
    result = agent.design(EXAMPLES / "orders_cdc_snowflake.yaml")
    assert result.delegations[0].subagent_type == "sec-reviewer"
    assert agent.delegations(result)[0].subagent_type == "sec-reviewer"


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([task("a", prompt="")], "no prompt"),
        ([{"subagent_type": "data-agent:qa-engineer", "description": "Test the pipeline now"}], "no prompt"),
        ([task("a", subagent_type="data-agent:nobody")], "unknown subagent_type"),
        ([task("a", prompt="x" * (MAX_PROMPT_CHARS + 1))], "limit"),
        ([task("a", ["b"]), task("b", ["a"])], "cycle"),
        ([task("a", ["a"])], "cycle"),
        ([task("a", ["ghost"])], "not in this set"),
        ([task("a"), task("a")], "share an id"),
        ([task("a", description="Test")], "3 to 5 words"),
        (["not a task"], "mapping"),
    ],
)
def test_bad_tasks_raise_typed_errors(tasks, message) -> None:
    with pytest.raises(DelegationError, match=message):
        validate_tasks(tasks, known_agents=known_agents())


def test_delegation_task_objects_are_accepted() -> None:
    t = DelegationTask(**task("a"))
    assert validate_tasks([t], known_agents=known_agents()) == [t]


# -- the CLI: data-agent delegate ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "orders"
    DataEngineerAgent(use_memory=False).design(EXAMPLES / "orders_cdc_snowflake.yaml", out=out)
    return out


def test_delegate_formats(run_cli, bundle: Path) -> None:
    agent_tool = run_cli("delegate", bundle, "--format", "agent-tool")
    assert agent_tool.returncode == 0, agent_tool.stderr
    inputs = json.loads(agent_tool.stdout)
    assert all(set(i) == {"subagent_type", "description", "prompt"} for i in inputs)
    waves = json.loads(run_cli("delegate", bundle, "--format", "agent-tool", "--waves").stdout)
    assert [len(w) for w in waves][:2] == [2, len(waves[1])] and len(waves[0]) == 2
    as_json = json.loads(run_cli("delegate", bundle, "--format", "json").stdout)
    assert len(as_json["tasks"]) == len(inputs)
    import yaml

    as_yaml = yaml.safe_load(run_cli("delegate", bundle).stdout)
    assert [t["id"] for t in as_yaml["tasks"]] == [t["id"] for t in as_json["tasks"]]
    mapped = json.loads(
        run_cli("delegate", bundle, "--format", "agent-tool", "--agent-map", "qa-engineer=qa-expert").stdout
    )
    assert "qa-expert" in {i["subagent_type"] for i in mapped}


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([task("a", prompt="")], "no prompt"),
        ([task("a", subagent_type="data-agent:nobody")], "unknown subagent_type"),
        ([task("a", prompt="x" * (MAX_PROMPT_CHARS + 1))], "limit"),
        ([task("a", ["b"]), task("b", ["a"])], "cycle"),
        ([task("a", ["ghost"])], "not in this set"),
    ],
)
def test_delegate_cli_bad_input_exit_code_and_one_line(run_cli, tmp_path: Path, tasks, message) -> None:
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(tasks))
    proc = run_cli("delegate", path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0]


def test_delegate_cli_missing_bundle(run_cli, tmp_path: Path) -> None:
    proc = run_cli("delegate", tmp_path)
    assert proc.returncode == 2 and "no delegations.json" in proc.stderr
