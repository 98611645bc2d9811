"""The MCP server, driven by the real ``mcp`` client over stdio (``python -m agent mcp``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

mcp = pytest.importorskip("mcp")
anyio = pytest.importorskip("anyio")

from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = str(ROOT / "examples" / "orders_cdc_snowflake.yaml")
TOOLS = {
    "pack_context",
    "recall_designs",
    "plan_design",
    "check_design",
    "plan_delegations",
    "remember_design",
    "rate_memory",
}


def _text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def _session_run(tmp_path: Path, body) -> None:
    env = {
        **os.environ,
        "DATA_AGENT_MEMORY_DIR": str(tmp_path / "memory"),
        "CLAUDE_PLUGIN_DATA": str(tmp_path / "plugin-data"),
    }
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "agent", "mcp"], env=env, cwd=str(tmp_path)
    )
    with open(tmp_path / "server.stderr", "w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            await body(session)


@pytest.mark.slow
def test_tools_valid_and_invalid_calls_and_server_stays_up(tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    async def body(session: ClientSession) -> None:
        listed = await session.list_tools()
        names = {t.name for t in listed.tools}
        assert names == TOOLS
        for tool in listed.tools:
            schema = tool.input_schema
            assert schema["type"] == "object" and schema["properties"], tool.name
        assert "request" in next(t for t in listed.tools if t.name == "plan_design").input_schema["required"]

        # valid calls, one per tool
        out = str(tmp_path / "bundle")
        plan = await session.call_tool("plan_design", {"request": EXAMPLE, "out": out})
        assert not plan.is_error, _text(plan)
        body_ = json.loads(_text(plan))
        assert Path(body_["bundle"], "delegations.json").exists()
        assert set(body_["sections"]) == {
            "architecture",
            "pipelines",
            "storage",
            "processing",
            "quality",
            "documentation",
        }
        assert body_["delegation_waves"] and body_["delegation_waves"][0]
        seen["plan"] = body_

        packed = await session.call_tool("pack_context", {"request": EXAMPLE, "budget": 800})
        assert not packed.is_error, _text(packed)
        assert json.loads(_text(packed))["tokens"] <= 800

        checked = await session.call_tool("check_design", {"request": EXAMPLE})
        assert not checked.is_error and "checks" in json.loads(_text(checked))

        delegated = await session.call_tool(
            "plan_delegations", {"request": EXAMPLE, "agent_map": {"qa-engineer": "qa-expert"}}
        )
        assert not delegated.is_error, _text(delegated)
        agents = {t["subagent_type"] for w in json.loads(_text(delegated))["waves"] for t in w}
        assert "qa-expert" in agents and "data-agent:security-engineer" in agents

        remembered = await session.call_tool("remember_design", {"request": EXAMPLE, "bundle": out})
        assert not remembered.is_error, _text(remembered)
        memory_id = json.loads(_text(remembered))["memory_id"]

        recalled = await session.call_tool("recall_designs", {"request": EXAMPLE, "k": 2})
        assert not recalled.is_error, _text(recalled)
        assert any(m["id"] == memory_id for m in json.loads(_text(recalled))["memories"])

        rated = await session.call_tool("rate_memory", {"memory_id": memory_id, "stars": 5})
        assert not rated.is_error, _text(rated)

        # every output stays under 10k tokens, with a 1.25 margin for Claude's tokenizer
        from agent.tokens import count

        for result in (plan, packed, checked, delegated, remembered, recalled, rated):
            assert count(_text(result)) * 1.25 < 10_000

        # invalid calls: error results, and the server keeps serving
        bad_calls = [
            ("pack_context", {"request": EXAMPLE, "budget": "lots"}),
            ("plan_design", {"request": 42}),
            ("plan_design", {}),
            ("check_design", {"request": "x" * 25_000}),
            ("plan_delegations", {"request": EXAMPLE, "agent_map": {"nobody": "x"}}),
            ("recall_designs", {"request": EXAMPLE, "k": 0}),
            ("rate_memory", {"memory_id": memory_id, "stars": 9}),
            ("rate_memory", {"memory_id": "no-such-memory", "stars": 3}),
            ("plan_design", {"request": str(tmp_path / "missing.yaml")}),
            ("no_such_tool", {}),
        ]
        for name, arguments in bad_calls:
            result = await session.call_tool(name, arguments)
            assert result.is_error, (name, arguments, _text(result))
            assert _text(result).strip(), name
        too_long = await session.call_tool("check_design", {"request": "x" * 25_000})
        assert "limit" in _text(too_long) or "at most" in _text(too_long)

        again = await session.list_tools()
        assert {t.name for t in again.tools} == TOOLS
        still = await session.call_tool("check_design", {"request": EXAMPLE})
        assert not still.is_error

    anyio.run(_session_run, tmp_path, body)
    assert seen["plan"]


def test_clip_truncates_with_a_note() -> None:
    from agent.mcp import MAX_OUTPUT_CHARS, clip

    text = clip("y" * (MAX_OUTPUT_CHARS * 2))
    assert len(text) <= MAX_OUTPUT_CHARS and "truncated" in text
    assert clip("short") == "short"


def test_fit_keeps_json_valid_under_the_limit() -> None:
    from agent.mcp import fit

    body = {"waves": [[{"prompt": "p" * 5000}] for _ in range(20)], "summary": "s" * 20_000, "id": "x"}
    text = fit(body, 10_000)
    data = json.loads(text)
    assert len(text) <= 10_000 and "_truncated" in data and data["id"] == "x"
    assert len(data["waves"]) < 20


def test_schemas_come_from_pydantic_models() -> None:
    from agent.mcp import TOOLS as MODELS
    from agent.mcp import tool_schemas

    for schema in tool_schemas():
        model, _ = MODELS[schema["name"]]
        assert schema["input_schema"] == model.model_json_schema()


def test_cli_help_does_not_import_the_sdk() -> None:
    import subprocess

    code = "import sys; from agent.cli import build_parser; build_parser(); print('mcp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
