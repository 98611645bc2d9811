"""The library other agents call: ``from agent import DataEngineerAgent``.

The main test plays an architect agent: it builds the Agent-tool-shaped task an architect would send
(once with a ```yaml request block, once as free text), calls ``handle``, checks the design answers that
task, and checks the returned tasks can be launched as they are.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

from agent import DataEngineerAgent, DelegationTask, DesignRequest, DesignResult
from agent.delegation import MAX_INBOUND_PROMPT_CHARS, known_agents, launch_waves, validate_tasks
from agent.errors import DelegationError, RequestError

ARCHITECT_YAML_TASK = {
    "subagent_type": "data-agent:data-engineer",
    "description": "Design claims data platform",
    "prompt": """We are building the claims analytics platform for an insurer. I own the solution
architecture; you own the data platform. Design it from this request, and hand security, devops and QA
their parts.

```yaml
name: claims_platform
goal: Analytics on insurance claims and policies for actuaries, daily, with member PII protected
domain: insurance
sources:
  - name: claims_db
    kind: postgres
    entities:
      - name: claims
        primary_key: [claim_id]
        columns:
          - {name: claim_id, type: bigint, nullable: false}
          - {name: member_email, type: varchar, pii: true}
          - {name: amount, type: "decimal(12,2)"}
          - {name: updated_at, type: timestamp}
      - name: policies
        primary_key: [policy_id]
        columns:
          - {name: policy_id, type: bigint, nullable: false}
          - {name: holder_name, type: varchar, pii: true}
targets:
  - warehouse: snowflake
freshness: daily
consumers: [tableau, ml]
compliance: [gdpr]
```
""",
}

ARCHITECT_TEXT_TASK = {
    "subagent_type": "data-agent:data-engineer",
    "description": "Design clickstream lakehouse",
    "prompt": "Design a streaming pipeline from Kafka clickstream events into a Delta lakehouse on S3 "
    "with Databricks, refreshed every 15 minutes, for product analytics dashboards. User ids are PII.",
}


def _launchable(result: DesignResult) -> list[list[DelegationTask]]:
    tasks = validate_tasks(result.delegations, known_agents=known_agents())
    waves = launch_waves(tasks)
    assert sum(len(w) for w in waves) == len(tasks) >= 3
    for wave in waves:  # one message per wave: exactly the Agent tool inputs, all independent
        ids = {t.id for t in wave}
        assert all(not (set(t.depends_on) & ids) for t in wave)
        for t in wave:
            assert set(t.agent_tool_input()) == {"subagent_type", "description", "prompt"}
            assert result.design.id in t.prompt
    return waves


def test_architect_sends_a_yaml_request(tmp_path: Path) -> None:
    agent = DataEngineerAgent(memory_dir=tmp_path / "memory")
    result = agent.handle(ARCHITECT_YAML_TASK, out=tmp_path / "claims")
    design = result.design
    # the design answers this task's content
    assert design.request.name == "claims_platform"
    assert [s.name for s in design.request.sources] == ["claims_db"]
    assert design.storage.warehouse == "snowflake"
    assert "gdpr" in design.request.compliance
    tables = " ".join(t.name for t in design.storage.tables)
    assert "claims" in tables and "policies" in tables
    pii = [c for t in design.storage.tables if t.layer != "raw" for c in t.columns if c.pii]
    assert pii and all(c.masking for c in pii)
    assert (result.bundle / "delegations.json").exists()
    assert result.report.remembered
    # ML consumers bring the genai engineer in; the tasks are launchable as they are
    waves = _launchable(result)
    roles = {t.id.rsplit(":", 1)[1] for w in waves for t in w}
    assert {"security-engineer", "qa-engineer", "devops-engineer", "genai-engineer"} <= roles
    security = next(t for w in waves for t in w if t.id.endswith("security-engineer"))
    assert "member_email" in security.prompt and "GDPR" in security.prompt


def test_architect_sends_free_text() -> None:
    agent = DataEngineerAgent(use_memory=False)
    result = agent.handle(DelegationTask(**ARCHITECT_TEXT_TASK))
    req = result.design.request
    assert any(s.kind == "kafka" for s in req.sources)
    assert any((t.lake == "s3" or t.table_format == "delta") for t in req.targets)
    assert result.design.architecture.pattern in ("streaming", "kappa", "lambda")
    _launchable(result)


def test_agent_map_in_handle_and_own_name() -> None:
    agent = DataEngineerAgent(
        use_memory=False, agent_map={"qa-engineer": "qa-expert", "data-engineer": "my-data-engineer"}
    )
    task = {**ARCHITECT_TEXT_TASK, "subagent_type": "my-data-engineer"}
    result = agent.handle(task)
    assert "qa-expert" in {t.subagent_type for t in result.delegations}


@pytest.mark.parametrize(
    ("task", "error", "message"),
    [
        ({**ARCHITECT_TEXT_TASK, "prompt": ""}, DelegationError, "no prompt"),
        (
            {"subagent_type": "data-agent:data-engineer", "description": "Design a platform"},
            DelegationError,
            "no prompt",
        ),
        (
            {**ARCHITECT_TEXT_TASK, "subagent_type": "data-agent:qa-engineer"},
            DelegationError,
            "unknown subagent_type",
        ),
        (
            {**ARCHITECT_TEXT_TASK, "prompt": "x " * (MAX_INBOUND_PROMPT_CHARS // 2 + 1)},
            DelegationError,
            "limit",
        ),
        ({**ARCHITECT_TEXT_TASK, "description": "Design"}, DelegationError, "3 to 5 words"),
        (
            {**ARCHITECT_YAML_TASK, "prompt": "```yaml\nname: x\nsources: []\ntargets: []\n```"},
            RequestError,
            None,
        ),
    ],
)
def test_bad_tasks(task, error, message) -> None:
    with pytest.raises(error, match=message):
        DataEngineerAgent(use_memory=False).handle(task)


def test_async_variants() -> None:
    agent = DataEngineerAgent(use_memory=False)

    async def main() -> tuple[DesignResult, DesignResult, list[DelegationTask]]:
        a, b = await asyncio.gather(
            agent.adesign(ARCHITECT_TEXT_TASK["prompt"]), agent.ahandle(ARCHITECT_TEXT_TASK)
        )
        return a, b, await agent.adelegations(a.design)

    a, b, tasks = asyncio.run(main())
    assert a.design.request.sources[0].kind == b.design.request.sources[0].kind
    assert [t.id for t in tasks] == [t.id for t in a.delegations]


def test_design_accepts_request_objects_and_dicts() -> None:
    agent = DataEngineerAgent(use_memory=False)
    req = agent.handle(ARCHITECT_YAML_TASK).design.request
    assert isinstance(req, DesignRequest)
    assert agent.design(req).design.request.name == "claims_platform"
    assert agent.design(req.model_dump()).design.request.name == "claims_platform"


def test_public_api_is_typed_and_documented() -> None:
    for name in ("design", "handle", "delegations", "adesign", "ahandle", "adelegations"):
        method = getattr(DataEngineerAgent, name)
        assert method.__doc__, name
        hints = inspect.get_annotations(method)
        assert "return" in hints, name
    with pytest.raises(TypeError, match="unknown option"):
        DataEngineerAgent(no_such_option=True)
