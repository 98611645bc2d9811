"""``data-agent mcp``: the agent's stages as MCP tools over stdio, on the official ``mcp`` SDK (2.x).

Tools: pack_context, recall_designs, plan_design, check_design, plan_delegations, remember_design,
rate_memory. Each tool's input schema is the JSON Schema of a pydantic model below; arguments are
validated with that model, and any problem (wrong types, a request too long, a failing stage) comes back
as an error result (``isError``) while the server keeps serving. Every output is capped at
``MAX_OUTPUT_CHARS`` (under 10k tokens), truncated with a note.

Import-light: the SDK, pydantic models and the agent stages are imported when the server starts or a tool
runs, never when the CLI builds its parser.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_OUTPUT_CHARS = 26_000  # ~6.5k cl100k tokens (measured ~4 chars/token); with a 1.25 margin for
# Claude's tokenizer still under Claude Code's 10k-token warning
MAX_REQUEST_CHARS = 20_000  # same bound as DesignRequest.goal
SERVER_NAME = "data-agent"


# -- input models (their JSON Schemas are the tools' input schemas) ---------------------------------


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Input):
    request: Annotated[str, Field(max_length=MAX_REQUEST_CHARS)] | dict[str, Any] = Field(
        description="The design request: free text, a path to a .yaml/.json request file, or the request "
        "as an object (name, goal, sources, targets, freshness, consumers, compliance, constraints).",
    )
    context: str | None = Field(default=None, description="Steering policy directory (default: discovered).")


class PackContextInput(RequestInput):
    budget: int = Field(default=4000, ge=50, le=32_000, description="Token budget for the pack.")
    use_memory: bool = Field(default=True, description="Recall past designs into the pack.")


class RecallInput(RequestInput):
    k: int = Field(default=3, ge=1, le=10, description="How many memories to return.")


class PlanDesignInput(RequestInput):
    out: str | None = Field(
        default=None, description="Write the bundle to this directory (default: ./designs/<name>)."
    )
    agent_map: dict[str, str] = Field(
        default_factory=dict, description="Role -> agent name, e.g. {'qa-engineer': 'qa-expert'}."
    )
    use_memory: bool = Field(default=True, description="Recall past designs while planning.")


class CheckDesignInput(RequestInput):
    pass


class PlanDelegationsInput(RequestInput):
    agent_map: dict[str, str] = Field(default_factory=dict, description="Role -> agent name.")
    format: Literal["agent-tool", "full"] = Field(
        default="agent-tool",
        description="agent-tool: waves of exact Agent tool inputs; full: tasks with ids and dependencies.",
    )


class RememberDesignInput(RequestInput):
    bundle: str | None = Field(default=None, description="The bundle directory to record with the memory.")


class RateMemoryInput(_Input):
    memory_id: str = Field(min_length=1, max_length=200, description="Id from recall_designs.")
    stars: int = Field(ge=1, le=5, description="1 (misleading) to 5 (exactly right).")


TOOLS: dict[str, tuple[type[_Input], str]] = {
    "pack_context": (
        PackContextInput,
        "Load the steering policies (and recalled designs) for a request and pack them under a token "
        "budget. Returns the packed text and its accounting.",
    ),
    "recall_designs": (RecallInput, "Past designs and learnings most relevant to a request, with scores."),
    "plan_design": (
        PlanDesignInput,
        "Plan and render a full design bundle (architecture, pipelines, DDL, dbt models, quality tests, "
        "contracts, lineage) for a request, write it to disk, and return the six-section summary, the "
        "checks, the files and the delegation tasks.",
    ),
    "check_design": (
        CheckDesignInput,
        "Plan a request and return its policy checks and artifact validation.",
    ),
    "plan_delegations": (
        PlanDelegationsInput,
        "The delegation tasks for a request's design, grouped in launch waves: send each wave's Agent "
        "tool calls in one message.",
    ),
    "remember_design": (RememberDesignInput, "Plan a request and store the design in memory for recall."),
    "rate_memory": (RateMemoryInput, "Rate a recalled memory 1-5 stars; ratings steer future recall."),
}


# -- tool implementations (plain functions: testable without a server) --------------------------------


def _agent(args: Any, **overrides: Any) -> Any:
    from agent.runtime import AgentConfig, DataEngineerAgent

    config = AgentConfig(
        context=getattr(args, "context", None),
        agent_map=dict(getattr(args, "agent_map", {}) or {}),
        memory_dir=os.environ.get("DATA_AGENT_MEMORY_DIR") or None,
        memory_url=os.environ.get("DATA_AGENT_MEMORY_URL") or None,
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return DataEngineerAgent(config)


def _request(args: RequestInput) -> Any:
    from agent.errors import RequestError
    from agent.runtime import to_request

    raw = args.request
    size = len(raw) if isinstance(raw, str) else len(json.dumps(raw, default=str))
    if size > MAX_REQUEST_CHARS:
        raise RequestError(
            f"request is {size:,} characters; the limit is {MAX_REQUEST_CHARS:,}",
            field="request",
            hint="put it in a .yaml file and pass the path",
        )
    if isinstance(raw, str) and raw.strip().endswith((".yaml", ".yml", ".json")) and "\n" not in raw:
        from pathlib import Path

        return to_request(Path(raw.strip()))
    return to_request(raw)


def pack_context(args: PackContextInput) -> dict[str, Any]:
    from agent.compress import pack

    agent = _agent(args)
    req = _request(args)
    policies = agent.policies()
    memories = agent.memory().recall(req, k=3) if args.use_memory else []
    result = pack(policies, req, memories=memories, budget=args.budget)
    return {
        "text": result.text,
        "tokens": result.tokens,
        "budget": result.budget,
        "tokens_before": result.tokens_before,
        "policies": result.policy_ids,
        "memories": result.memory_ids,
        "problems": [str(p) for p in policies.problems],
    }


def recall_designs(args: RecallInput) -> dict[str, Any]:
    agent = _agent(args)
    recalled = agent.memory().recall(_request(args), k=args.k)
    return {
        "memories": [
            {
                "id": r.memory.id,
                "kind": r.memory.kind,
                "score": r.score,
                "similarity": r.similarity,
                "name": r.memory.metadata.get("name"),
                "rating": r.memory.rating,
                "text": r.memory.text[:1500],
            }
            for r in recalled
        ]
    }


def _summary(result: Any) -> dict[str, Any]:
    design = result.design
    arch = design.architecture
    return {
        "design_id": design.id,
        "name": design.name,
        "bundle": str(result.bundle) if result.bundle else None,
        "summary": design.summary,
        "sections": {
            "architecture": f"{arch.pattern} {arch.approach}, {arch.modelling}; "
            + ", ".join(f"{c.name} ({c.technology})" for c in arch.components),
            "pipelines": [
                f"{p.name}: {p.orchestrator} {p.schedule} {p.extraction}" for p in design.pipelines
            ],
            "storage": [f"{t.qualified} ({t.layer}, {t.kind})" for t in design.storage.tables],
            "processing": [f"{t.name} -> {t.target_table}" for t in design.processing.transformations],
            "quality": [f"{r.id}: {r.check} on {r.table}" for r in design.quality.rules][:40],
            "documentation": f"{len(design.documentation.lineage)} lineage edges, owners for "
            f"{len(design.documentation.owners)} tables",
        },
        "decisions": [f"{d.topic}: {d.choice}" for d in arch.decisions],
        "warnings": result.report.warnings,
        "checks": [c.model_dump(exclude_none=True) for c in result.report.checks if c.status != "pass"],
        "checks_passed": sum(c.status == "pass" for c in result.report.checks),
        "artifacts_failed": [a.model_dump() for a in result.report.artifacts if not a.ok],
        "files": sorted(result.files),
    }


def _waves(tasks: list[Any]) -> list[list[dict[str, str]]]:
    from agent.delegation import launch_waves

    return [[t.agent_tool_input() for t in wave] for wave in launch_waves(tasks)]


def plan_design(args: PlanDesignInput) -> dict[str, Any]:
    from pathlib import Path

    from agent.models import slugify

    agent = _agent(args, use_memory=args.use_memory, remember=False)
    req = _request(args)
    out = Path(args.out) if args.out else Path("designs") / slugify(req.name)
    result = agent.design(req, out=out)
    body = _summary(result)
    body["delegation_waves"] = _waves(result.delegations)
    return body


def check_design(args: CheckDesignInput) -> dict[str, Any]:
    result = _agent(args, use_memory=False).design(_request(args))
    return {
        "design_id": result.design.id,
        "ok": result.ok,
        "checks": [c.model_dump(exclude_none=True) for c in result.report.checks],
        "artifacts": [a.model_dump() for a in result.report.artifacts],
    }


def plan_delegations(args: PlanDelegationsInput) -> dict[str, Any]:
    agent = _agent(args, use_memory=False)
    result = agent.design(_request(args))
    tasks = result.delegations
    if args.format == "agent-tool":
        return {"design_id": result.design.id, "waves": _waves(tasks)}
    return {"design_id": result.design.id, "tasks": [t.model_dump() for t in tasks]}


def remember_design(args: RememberDesignInput) -> dict[str, Any]:
    agent = _agent(args, use_memory=True, remember=False)
    result = agent.design(_request(args))
    memory_id = agent.memory().remember_design(result.design, bundle=args.bundle)
    return {"memory_id": memory_id, "design_id": result.design.id}


def rate_memory(args: RateMemoryInput) -> dict[str, Any]:
    store = _agent(args).memory()
    rate = getattr(store, "rate", None)
    if callable(rate):
        rate(args.memory_id, args.stars)
    else:
        memory = store.get(args.memory_id)
        store.add(memory.model_copy(update={"rating": float(args.stars)}), dedupe=False)
    return {"memory_id": args.memory_id, "stars": args.stars}


IMPLEMENTATIONS = {
    "pack_context": pack_context,
    "recall_designs": recall_designs,
    "plan_design": plan_design,
    "check_design": check_design,
    "plan_delegations": plan_delegations,
    "remember_design": remember_design,
    "rate_memory": rate_memory,
}


def clip(text: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    """``text`` cut to ``limit`` characters with a note saying how much was left out."""
    if len(text) <= limit:
        return text
    note = f"\n\n[truncated: {len(text) - limit + 200:,} of {len(text):,} characters left out; "
    note += "read the full files in the bundle directory]"
    return text[: limit - 200] + note


def _shrink(value: Any) -> Any:
    """A smaller version of ``value`` (lists keep their first half, strings their start), or None."""
    if isinstance(value, list):
        if len(value) > 1:
            return value[: len(value) // 2]
        if len(value) == 1 and (inner := _shrink(value[0])) is not None:
            return [inner]
        return None
    if isinstance(value, str):
        return value[: len(value) // 2] + " [...]" if len(value) > 400 else None
    if isinstance(value, dict) and value:
        key = max(value, key=lambda k: len(json.dumps(value[k], default=str)))
        inner = _shrink(value[key])
        return None if inner is None else {**value, key: inner}
    return None


def fit(body: dict[str, Any], limit: int = MAX_OUTPUT_CHARS) -> str:
    """``body`` as JSON under ``limit`` characters and still valid JSON: the largest values are shrunk
    (lists keep their first items, strings their start) and ``_truncated`` says what was cut."""
    text = json.dumps(body, indent=1, default=str)
    cut: list[str] = []
    for _ in range(200):
        if len(text) <= limit:
            return text
        sizes = {k: len(json.dumps(v, default=str)) for k, v in body.items() if k != "_truncated"}
        for key in sorted(sizes, key=lambda k: -sizes[k]):
            smaller = _shrink(body[key])
            if smaller is not None:
                body[key] = smaller
                if key not in cut:
                    cut.append(key)
                break
        else:
            break
        body["_truncated"] = (
            f"shortened to stay under {limit:,} characters: {', '.join(cut)}. The full output is in the "
            "bundle directory; `data-agent delegate BUNDLE --format agent-tool --waves` gives every task."
        )
        text = json.dumps(body, indent=1, default=str)
    return clip(text, limit)


def call(name: str, arguments: dict[str, Any] | None) -> tuple[str, bool]:
    """Run one tool: (text, is_error). Never raises for bad input or a failing stage."""
    from pydantic import ValidationError

    from agent.errors import DataAgentError

    if name not in TOOLS:
        return f"unknown tool {name!r}; tools: {', '.join(TOOLS)}", True
    model, _ = TOOLS[name]
    try:
        args = model.model_validate(arguments or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()[:5]
        )
        return clip(f"invalid arguments for {name}: {problems}"), True
    try:
        body = IMPLEMENTATIONS[name](args)
    except DataAgentError as exc:
        return clip(f"{type(exc).__name__}: {exc}"), True
    except Exception as exc:  # the server must stay up whatever a stage does
        return clip(f"internal error in {name}: {type(exc).__name__}: {exc}"), True
    return fit(body), False


def tool_schemas() -> list[dict[str, Any]]:
    return [
        {"name": name, "description": description, "input_schema": model.model_json_schema()}
        for name, (model, description) in TOOLS.items()
    ]


def build_server() -> Any:
    import inspect
    from importlib.metadata import version

    import anyio
    from mcp import types
    from mcp.server.lowlevel import Server

    from agent.errors import DataAgentError

    if "on_call_tool" not in inspect.signature(Server.__init__).parameters:
        raise DataAgentError(
            f"data-agent mcp needs the mcp SDK 2.x; found mcp {version('mcp')}",
            hint="pip install 'mcp>=2.3,<3'",
        )

    from agent import __version__

    tools = [
        types.Tool(name=s["name"], description=s["description"], input_schema=s["input_schema"])
        for s in tool_schemas()
    ]

    async def on_list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def on_call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        text, is_error = await anyio.to_thread.run_sync(call, params.name, params.arguments)
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=is_error)

    return Server(
        SERVER_NAME,
        version=__version__,
        instructions="Data platform design tools. Start with plan_design; launch delegation_waves one "
        "wave per message.",
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
    )


def serve() -> None:
    """Serve over stdio until the client closes the connection."""
    import anyio
    from mcp.server.stdio import stdio_server

    server = build_server()

    async def main() -> None:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    anyio.run(main)
