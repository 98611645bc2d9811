"""DataEngineerAgent: the stages strung together, for the CLI, the MCP server and other agents.

    request -> steering -> recall -> pack -> plan -> checks -> delegations -> render -> validate
            -> write -> remember -> report

Each stage is one module; data moves forward only. The agent keeps parsed policies, compiled templates
and the memory client warm between calls, so a second design in one process is cheap.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import __version__
from agent.errors import DataAgentError, RequestError
from agent.models import (
    ContextPack,
    DelegationTask,
    Design,
    DesignRequest,
    RecalledMemory,
    RunReport,
    StageTiming,
    now_iso,
)

STAGES = (
    "request",
    "steering",
    "recall",
    "pack",
    "plan",
    "checks",
    "delegations",
    "render",
    "validate",
    "write",
    "remember",
)


@dataclass
class AgentConfig:
    context: str | Path | None = None
    memory_dir: str | Path | None = None
    memory_url: str | None = None
    use_memory: bool = True
    remember: bool = True
    budget: int = 4000
    encoding: str = "cl100k_base"
    planner: str = "rules"
    templates: str | Path | None = None
    agent_map: dict[str, str] = field(default_factory=dict)
    schemas: str | Path | None = None
    recall_k: int = 3
    offline: bool = False  # auto never picks Claude when offline
    claude: dict[str, Any] = field(default_factory=dict)  # model, max_tokens, timeout, retries, base_url


@dataclass
class DesignResult:
    """What one design run produced."""

    design: Design
    files: dict[str, str]
    delegations: list[DelegationTask]
    report: RunReport
    pack: ContextPack
    bundle: Path | None = None

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.report.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle) if self.bundle else None,
            "design_id": self.design.id,
            "summary": self.design.summary,
            "delegations": [t.model_dump() for t in self.delegations],
            "report": self.report.model_dump(),
        }


class DataEngineerAgent:
    """The data-engineer subagent as a library.

    >>> agent = DataEngineerAgent(memory_dir="/tmp/mem")
    >>> result = agent.design("CDC from Postgres orders into Snowflake, hourly, emails are PII", out="/tmp/d")
    >>> [t.subagent_type for t in result.delegations]
    ['data-agent:security-engineer', 'data-agent:qa-engineer', 'data-agent:devops-engineer']
    """

    def __init__(self, config: AgentConfig | None = None, *, store: Any = None, **overrides: Any) -> None:
        """``store``: a memory store to use instead of opening the configured one (a
        :class:`agent.memory.MemoryStore`, or the CLI's :class:`agent.memory_process.MemoryProcess`)."""
        self.config = config or AgentConfig()
        for key, value in overrides.items():
            if not hasattr(self.config, key):
                raise TypeError(f"unknown option {key!r}")
            setattr(self.config, key, value)
        self._store: Any = store

    # -- stages that keep state -------------------------------------------------------------------

    def policies(self) -> Any:
        from agent.steering import load_policies

        return load_policies(self.config.context)

    def memory(self) -> Any:
        if self._store is None:
            from agent.memory import open_store

            self._store = open_store(self.config.memory_dir, self.config.memory_url)
        return self._store

    # -- the public API ---------------------------------------------------------------------------

    def design(
        self,
        request: DesignRequest | str | Path | Mapping[str, Any],
        *,
        out: str | Path | None = None,
        on_stage: Callable[[str, float], None] | None = None,
        remember: bool = True,
    ) -> DesignResult:
        """Design a data platform for ``request`` (a DesignRequest, a path, free text or a dict).

        With ``out``, the bundle is written there atomically. ``on_stage(name, seconds)`` is called after
        each stage, for progress displays. ``remember=False`` leaves the design out of memory for now
        (see :meth:`remember`); the configuration can also turn remembering off for every run.
        """
        report = RunReport(design_id="", planner=self.config.planner, started_at=now_iso())
        timer = _Timer(report, on_stage)

        if out is not None:
            from agent.render import check_writable

            check_writable(Path(out).resolve())
        planner = report.planner = self._planner()
        if planner == "claude":
            from agent.planner import claude

            claude.begin_run(self.config.claude)
        with timer("request"):
            req = claude.to_request(request) if planner == "claude" else to_request(request)
        if self.config.use_memory:
            self.memory().prepare()  # a store in another process can open while the next stages run
        with timer("steering"):
            policies = self.policies()
            report.warnings += [str(p) for p in policies.problems]
        recalled: list[RecalledMemory] = []
        if self.config.use_memory:
            with timer("recall"):
                recalled = self.memory().recall(req, k=self.config.recall_k)
        with timer("pack"):
            from agent.compress import pack

            context = pack(
                policies,
                req,
                memories=recalled,
                budget=self.config.budget,
                encoding=self.config.encoding,
                safety_factor=claude.safety_factor() if planner == "claude" else 1.0,
            )
        with timer("plan"):
            from agent.planner import plan

            design = plan(req, context, policies, recalled, planner=planner)
        if planner == "claude":
            report.usage = claude.take_usage()
        report.design_id = design.id
        with timer("checks"):
            from agent.checks import check_design

            report.checks = check_design(design, policies)
        with timer("delegations"):
            tasks = self.delegations(design)
        with timer("render"):
            from agent.render import render_bundle

            files = render_bundle(
                design,
                delegations=[t.model_dump() for t in tasks],
                checks=[c.model_dump() for c in report.checks],
                user_templates=self.config.templates,
            )
        with timer("validate"):
            from agent.validate import validate_bundle

            schemas = Path(self.config.schemas) if self.config.schemas else None
            report.artifacts = validate_bundle(design, files, schemas)
        report.tokens_before_packing = context.tokens_before
        report.tokens_after_packing = context.tokens
        report.budget = context.budget
        report.policies_used = context.policy_ids
        report.pack_items = context.items
        report.memories_used = [
            {
                "id": r.memory.id,
                "kind": r.memory.kind,
                "name": r.memory.metadata.get("name"),
                "score": r.score,
                "similarity": r.similarity,
                "packed": r.memory.id in context.memory_ids,
            }
            for r in recalled
        ]
        report.warnings += design.warnings
        bundle = None
        if out is not None:
            with timer("write"):
                from agent.render import write_bundle

                files["manifest.json"] = manifest(design, report)
                # the whole design, so a damaged memory store can be rebuilt from saved bundles
                files["design.json"] = design.model_dump_json(indent=2) + "\n"
                bundle = write_bundle(Path(out), files)
        result = DesignResult(
            design=design, files=files, delegations=tasks, report=report, pack=context, bundle=bundle
        )
        if self.config.use_memory and self.config.remember and remember:
            self.remember([result], on_stage=on_stage)
        return result

    def remember(
        self,
        results: Sequence[DesignResult],
        *,
        on_stage: Callable[[str, float], None] | None = None,
    ) -> list[str]:
        """Store designs in memory and count the memories each one used, in one store session (one lock,
        one write for the lot), then complete each result's report and its bundle's manifest.

        ``design`` calls this for its own result; a batch (``design --jobs N``) designs with
        ``remember=False`` in its workers and remembers everything once at the end, so the workers only
        read the store while they run. Returns the memory id each design ended up under."""
        if not results:
            return []
        started = time.perf_counter()
        store = self.memory()
        used = Counter(
            m["id"] for r in results for m in r.report.memories_used if m.get("packed") and m.get("id")
        )
        ids = store.remember_run([(r.design, str(r.bundle) if r.bundle else None) for r in results], used)
        share = (time.perf_counter() - started) / len(results)
        for result, memory_id in zip(results, ids):
            result.report.remembered = memory_id
            result.report.stages.append(StageTiming(stage="remember", seconds=round(share, 4)))
            if on_stage:
                on_stage("remember", share)
            if result.bundle is not None:
                # rewrite only the manifest so it carries the complete timings (write + remember)
                result.files["manifest.json"] = manifest(result.design, result.report)
                _replace_file(result.bundle / "manifest.json", result.files["manifest.json"])
        return ids

    def handle(
        self, task: DelegationTask | Mapping[str, Any], *, out: str | Path | None = None
    ) -> DesignResult:
        """Answer a delegation from another agent (an architect, developer, genai-engineer, analyst).

        ``task`` is an Agent-tool-shaped dict (``subagent_type``, ``description``, ``prompt``) or a
        :class:`DelegationTask`. A fenced ```yaml (or ```json) block in the prompt holding a design
        request (with ``sources``) is used as the request; otherwise the prompt is read as free text.
        The returned :class:`DesignResult` carries the design and this design's own delegations.

        Raises :class:`agent.errors.DelegationError` for a task with no prompt, an unknown
        ``subagent_type`` (not the data engineer), or a prompt over ``MAX_INBOUND_PROMPT_CHARS``;
        :class:`agent.errors.RequestError` when the embedded request is invalid.
        """
        from agent.delegation import DATA_ENGINEER_NAMES, check_inbound, parse_task

        parsed = parse_task(task)
        names = set(DATA_ENGINEER_NAMES)
        if own := self.config.agent_map.get("data-engineer"):
            names.add(own)
        check_inbound(parsed, names=names)
        return self.design(request_from_task(parsed), out=out)

    def delegations(self, design: Design | DesignResult) -> list[DelegationTask]:
        """The launchable tasks for ``design``, targets named per ``agent_map``.

        Launch them with :func:`agent.delegation.launch_waves`: each wave goes out in one message.
        """
        from agent.delegation import plan_delegations

        if isinstance(design, DesignResult):
            design = design.design
        targets = {k: v for k, v in self.config.agent_map.items() if k != "data-engineer"}
        return plan_delegations(design, targets=targets)

    async def adesign(
        self,
        request: DesignRequest | str | Path | Mapping[str, Any],
        *,
        out: str | Path | None = None,
        on_stage: Callable[[str, float], None] | None = None,
    ) -> DesignResult:
        """:meth:`design` in a worker thread, for asyncio callers."""
        return await asyncio.to_thread(self.design, request, out=out, on_stage=on_stage)

    async def ahandle(
        self, task: DelegationTask | Mapping[str, Any], *, out: str | Path | None = None
    ) -> DesignResult:
        """:meth:`handle` in a worker thread, for asyncio callers."""
        return await asyncio.to_thread(self.handle, task, out=out)

    async def adelegations(self, design: Design | DesignResult) -> list[DelegationTask]:
        """:meth:`delegations` in a worker thread, for asyncio callers."""
        return await asyncio.to_thread(self.delegations, design)

    def _planner(self) -> str:
        if self.config.planner != "auto":
            return self.config.planner
        import os

        return "claude" if os.environ.get("ANTHROPIC_API_KEY") and not self.config.offline else "rules"


def to_request(request: DesignRequest | str | Path | Mapping[str, Any]) -> DesignRequest:
    from agent.request import load_request, load_request_file, validate_request

    if isinstance(request, DesignRequest):
        return request
    if isinstance(request, Path):
        return load_request_file(request)
    if isinstance(request, Mapping):
        return validate_request(dict(request))
    if isinstance(request, str):
        return load_request(request)
    raise RequestError(f"cannot make a design request from a {type(request).__name__}")


def request_from_task(task: DelegationTask) -> DesignRequest:
    """A structured request embedded in the prompt (a ```yaml block) wins; else the prompt is free text.

    The embedded request may sit at the top level or under a ``request:`` key. Prose around the block is
    kept as the goal when the block has none.
    """
    import re

    import yaml

    from agent import yamlio
    from agent.request import request_from_text, validate_request

    for block in re.findall(r"```(?:ya?ml|json)[ \t]*\r?\n(.*?)```", task.prompt, flags=re.S):
        try:
            data = yamlio.load(block)
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and isinstance(data.get("request"), dict):
            data = data["request"]
        if isinstance(data, dict) and "sources" in data:
            prose = re.sub(r"```.*?```", " ", task.prompt, flags=re.S).strip()
            data.setdefault("goal", prose[:20_000] or task.description)
            return validate_request(data, path=f"<task {task.id or task.description}>", text=block)
    return request_from_text(task.prompt)


def manifest(design: Design, report: RunReport) -> str:
    return (
        json.dumps(
            {
                "tool": "data-agent",
                "version": __version__,
                "design_id": design.id,
                "name": design.name,
                "design_version": design.version,
                "summary": design.summary,
                "report": report.model_dump(),
                "total_seconds": report.total_seconds,
            },
            indent=2,
        )
        + "\n"
    )


def _replace_file(path: Path, content: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content, encoding="utf-8")
    tmp.replace(path)


class _Timer:
    def __init__(self, report: RunReport, on_stage: Callable[[str, float], None] | None) -> None:
        self.report = report
        self.on_stage = on_stage

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except DataAgentError:
            raise
        elapsed = time.perf_counter() - start
        self.report.stages.append(StageTiming(stage=stage, seconds=round(elapsed, 4)))
        if self.on_stage:
            self.on_stage(stage, elapsed)
