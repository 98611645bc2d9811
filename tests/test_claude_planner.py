"""The Claude planner against a fake Messages API over real HTTP, with the real anthropic SDK. No internet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_messages_api import (
    FakeMessagesAPI,
    Reply,
    overloaded,
    rate_limited,
    tool_reply,
    unauthorized,
)

from agent.errors import PlannerError
from agent.models import DesignRequest
from agent.request import request_from_text
from agent.runtime import DataEngineerAgent

TEXT = "CDC from Postgres orders and customers into Snowflake, hourly; emails are PII; GDPR"
DRAFT_FIELDS = {
    "architecture",
    "pipelines",
    "storage",
    "processing",
    "quality",
    "documentation",
    "assumptions",
    "warnings",
    "conflicts",
}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    api = FakeMessagesAPI().start()
    for var in ("DATA_AGENT_MODEL", "DATA_AGENT_MAX_TOKENS", "DATA_AGENT_TIMEOUT", "DATA_AGENT_RETRIES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("CLAUDE_PLUGIN_DATA", raising=False)
    monkeypatch.delenv("DATA_AGENT_BASE_URL", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
    monkeypatch.setenv("DATA_AGENT_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    yield api
    api.stop()


@pytest.fixture(scope="module")
def request_() -> DesignRequest:
    return request_from_text(TEXT)


@pytest.fixture(scope="module")
def draft(request_) -> dict:
    # The valid reply is the rules planner's design for the same request and the same packed context,
    # minus the fields the Claude planner fills itself: a valid Design of the real shape and size.
    design = DataEngineerAgent(planner="rules", use_memory=False).design(request_).design
    return design.model_dump(mode="json", include=DRAFT_FIELDS)


def claude_agent(**claude) -> DataEngineerAgent:
    return DataEngineerAgent(
        planner="claude", use_memory=False, claude={"retries": 2, "timeout": 10, **claude}
    )


def invalid(draft: dict) -> dict:
    bad = json.loads(json.dumps(draft))
    del bad["storage"]
    bad["pipelines"][0]["name"] = "1 bad name"
    return bad


# ---------------------------------------------------------------------------------------------------


def test_valid_design_sends_cached_pack_and_forced_tool(fake, request_, draft, tmp_path):
    from agent.planner.claude import DESIGN_TOOL, DesignDraft

    fake.add(tool_reply(DESIGN_TOOL, draft))
    result = claude_agent(model="claude-sonnet-4-6", max_tokens=20000).design(request_, out=tmp_path / "b")

    [sent] = fake.messages()
    body = sent.body
    # the key travels as x-api-key or (SDK 2.x) an Authorization bearer header
    assert "sk-ant-test-key" in (sent.headers.get("x-api-key", "") + sent.headers.get("authorization", ""))
    assert "anthropic-version" in sent.headers
    assert body["model"] == "claude-sonnet-4-6" and body["max_tokens"] == 20000
    prompt, pack_block = body["system"]
    assert "data-engineer subagent" in prompt["text"] and "cache_control" not in prompt
    assert pack_block["cache_control"] == {"type": "ephemeral"}
    assert pack_block["text"] == result.pack.text
    assert body["tools"] == [
        {
            "name": DESIGN_TOOL,
            "description": body["tools"][0]["description"],
            "input_schema": json.loads(json.dumps(DesignDraft.model_json_schema())),
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": DESIGN_TOOL}
    assert json.loads(body["messages"][0]["content"].split("```json\n")[1].split("```")[0])["name"] == (
        request_.name
    )

    # the same path as a rules design: checks, delegations, rendered and validated bundle
    report = result.report
    assert report.planner == "claude"
    assert result.design.request == request_ and "Claude" in result.design.summary
    assert report.checks and result.delegations and report.artifacts
    assert (tmp_path / "b" / "manifest.json").is_file()
    usage = report.usage
    assert usage["requests"] == 1 and usage["output_tokens"] == 900
    assert usage["cache_creation_input_tokens"] > 0 and usage["cache_read_input_tokens"] == 0
    assert usage["estimated_cost_usd"] > 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["report"]["usage"]["requests"] == 1


def test_invalid_design_is_repaired_through_an_error_tool_result(fake, request_, draft):
    from agent.planner.claude import DESIGN_TOOL

    fake.add(tool_reply(DESIGN_TOOL, invalid(draft)), tool_reply(DESIGN_TOOL, draft))
    result = claude_agent().design(request_)

    first, second = fake.messages()
    msgs = second.body["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    tool_use = msgs[1]["content"][0]
    assert tool_use["type"] == "tool_use" and tool_use["name"] == DESIGN_TOOL
    [tool_result] = msgs[2]["content"]
    assert tool_result["type"] == "tool_result" and tool_result["is_error"] is True
    assert tool_result["tool_use_id"] == tool_use["id"]
    assert "storage: Field required" in tool_result["content"]
    assert "pipelines.0.name" in tool_result["content"]
    assert second.body["system"] == first.body["system"]  # same cached prefix
    usage = result.report.usage
    assert usage["requests"] == 2 and usage["cache_read_input_tokens"] > 0
    assert [c["purpose"] for c in usage["calls"]] == ["design", "design-repair-1"]


def test_invalid_three_times_is_an_error_with_the_messages_and_nothing_written(
    fake, request_, draft, tmp_path
):
    from agent.planner.claude import DESIGN_TOOL

    fake.add(*[tool_reply(DESIGN_TOOL, invalid(draft)) for _ in range(3)])
    out = tmp_path / "never"
    with pytest.raises(PlannerError) as info:
        claude_agent().design(request_, out=out)
    message = str(info.value)
    assert "invalid design 3 times" in message
    assert "storage: Field required" in message and "pipelines.0.name" in message
    assert "nothing was written" in message
    assert len(fake.messages()) == 3
    assert not out.exists()


def test_overloaded_529_is_retried_then_succeeds(fake, request_, draft):
    from agent.planner.claude import DESIGN_TOOL

    fake.add(overloaded(), tool_reply(DESIGN_TOOL, draft))
    start = time.perf_counter()
    result = claude_agent().design(request_)
    assert time.perf_counter() - start < 10
    assert len(fake.messages()) == 2
    assert result.report.usage["requests"] == 1  # only the answered call has usage


def test_rate_limits_exhaust_retries_with_a_clear_error(fake, request_):
    fake.add(*[rate_limited() for _ in range(3)])
    with pytest.raises(PlannerError, match=r"rate limited .*429.* after 2 retries") as info:
        claude_agent(retries=2).design(request_)
    assert "--planner rules" in str(info.value)
    assert len(fake.messages()) == 3


def test_401_is_a_clear_error_and_not_retried(fake, request_, tmp_path):
    fake.add(unauthorized())
    with pytest.raises(PlannerError, match="rejected the API key") as info:
        claude_agent().design(request_, out=tmp_path / "x")
    assert "401" in str(info.value) and "invalid x-api-key" in str(info.value)
    assert len(fake.messages()) == 1
    assert not (tmp_path / "x").exists()


def test_a_reply_slower_than_the_timeout(fake, request_, draft):
    from agent.planner.claude import DESIGN_TOOL

    fake.add(tool_reply(DESIGN_TOOL, draft, delay=1.5))
    start = time.perf_counter()
    with pytest.raises(PlannerError, match=r"did not answer within 0\.3s") as info:
        claude_agent(timeout=0.3, retries=0).design(request_)
    assert time.perf_counter() - start < 1.4
    assert "--timeout" in str(info.value)


def test_no_key_suggests_the_rules_planner(fake, request_, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(PlannerError, match="ANTHROPIC_API_KEY is not set") as info:
        claude_agent().design(request_)
    assert "--planner rules" in str(info.value)
    assert fake.requests == []


def test_max_tokens_cut_off_is_reported(fake, request_, draft):
    from agent.planner.claude import DESIGN_TOOL

    fake.add(tool_reply(DESIGN_TOOL, {"architecture": {}}, stop_reason="max_tokens"))
    with pytest.raises(PlannerError, match="max_tokens=1000"):
        claude_agent(max_tokens=1000).design(request_)


def test_auto_picks_claude_only_with_a_key_and_online(fake, monkeypatch):
    assert DataEngineerAgent(planner="auto")._planner() == "claude"
    assert DataEngineerAgent(planner="auto", offline=True)._planner() == "rules"
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    assert DataEngineerAgent(planner="auto")._planner() == "rules"


def test_free_text_is_extracted_by_claude_through_a_forced_tool(fake, request_, draft):
    from agent.planner.claude import DESIGN_TOOL, REQUEST_TOOL

    extracted = request_.model_dump(mode="json")
    extracted["assumptions"] = ["Assumed the orders table is append-mostly."]
    fake.add(tool_reply(REQUEST_TOOL, extracted), tool_reply(DESIGN_TOOL, draft))
    result = claude_agent().design(TEXT)

    extract, plan = fake.messages()
    assert extract.body["tool_choice"] == {"type": "tool", "name": REQUEST_TOOL}
    assert extract.body["tools"][0]["input_schema"] == json.loads(
        json.dumps(DesignRequest.model_json_schema())
    )
    assert TEXT in extract.body["messages"][0]["content"]
    assert plan.body["tool_choice"]["name"] == DESIGN_TOOL
    assumptions = result.design.assumptions
    assert "Assumed the orders table is append-mostly." in assumptions
    assert any("read from free text by Claude" in a for a in assumptions)
    assert result.design.request.goal == TEXT
    assert [c["purpose"] for c in result.report.usage["calls"]] == ["extract", "design"]


def test_offline_free_text_uses_the_rules_extractor_and_lists_assumptions():
    result = DataEngineerAgent(planner="rules", use_memory=False).design("Kafka clickstream into BigQuery")
    assert result.design.assumptions
    assert result.report.usage == {}


def test_settings_flag_over_env_over_file(fake, tmp_path, monkeypatch):
    from agent.config import resolve

    config = tmp_path / "config.toml"
    config.write_text('[claude]\nmodel = "file-model"\nmax_tokens = 111\ntimeout = 12.5\nretries = 1\n')
    monkeypatch.setenv("DATA_AGENT_CONFIG", str(config))
    s = resolve()
    assert (s.model, s.max_tokens, s.timeout, s.retries) == ("file-model", 111, 12.5, 1)
    monkeypatch.setenv("DATA_AGENT_MODEL", "env-model")
    assert resolve().model == "env-model" and resolve().sources["model"] == "$DATA_AGENT_MODEL"
    assert resolve({"model": "flag-model"}).model == "flag-model"
    assert resolve({"model": None}).model == "env-model"
    monkeypatch.setenv("DATA_AGENT_RETRIES", "lots")
    with pytest.raises(PlannerError, match="retries must be an integer"):
        resolve()
    config.write_text("[claude]\nmodle = 'typo'\n")
    monkeypatch.delenv("DATA_AGENT_RETRIES")
    with pytest.raises(PlannerError, match="unknown setting"):
        resolve()


def test_calibrate_stores_the_factor_that_packing_uses(fake, request_, draft, capsys):
    from agent import tokens
    from agent.cli import main
    from agent.config import calibration_path, claude_safety_factor
    from agent.planner.claude import DESIGN_TOOL

    def count(body: dict) -> int:  # "Claude" counts 2x tiktoken on the system text, plus 7 overhead
        text = "".join(b["text"] for b in body.get("system", []))
        return 7 + 2 * tokens.count(text)

    fake.count_tokens = count
    assert main(["calibrate", "--json", "--model", "claude-sonnet-4-6"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["factor"] == 2.0 and out["stored"] == str(calibration_path())
    assert [r.path for r in fake.requests] == ["/v1/messages/count_tokens"] * 2
    assert fake.requests[0].body["model"] == "claude-sonnet-4-6"
    assert claude_safety_factor("claude-sonnet-4-6") == 2.0
    assert claude_safety_factor("claude-other") == tokens.DEFAULT_CLAUDE_SAFETY_FACTOR

    fake.add(tool_reply(DESIGN_TOOL, draft))
    result = claude_agent(model="claude-sonnet-4-6").design(request_)
    assert result.pack.tokens <= result.pack.budget // 2


def test_cli_offline_refuses_claude_and_auto_falls_back(fake, tmp_path, capsys):
    from agent.cli import main

    assert main(["design", TEXT, "--planner", "claude", "--offline", "--no-memory"]) == 4
    assert "--planner rules" in capsys.readouterr().err
    out = tmp_path / "auto"
    args = ["design", TEXT, "--planner", "auto", "--offline", "--no-memory", "--out", str(out), "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["report"]["planner"] == "rules"
    assert fake.requests == []


def test_rules_design_does_not_import_anthropic(tmp_path):
    code = (
        "import sys\n"
        "from agent.cli import main\n"
        f"rc = main(['design', {TEXT!r}, '--no-memory', '--out', {str(tmp_path / 'd')!r}, '--json'])\n"
        "assert rc == 0, rc\n"
        "assert 'anthropic' not in sys.modules, 'anthropic was imported'\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


def test_fake_server_answers_unknown_paths_with_404(fake):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(fake.url + "/v1/nothing", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 404
    assert isinstance(Reply(), Reply)
