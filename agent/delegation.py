"""Delegation tasks: the follow-up work handed to security, devops, QA (and developer, genai) agents.

A task is exactly the Claude Code Agent tool input plus ordering. Subagents cannot reliably launch
subagents, so tasks are returned as data and the caller (the plugin's command, or a library user)
launches them: every task of one parallel group whose dependencies are done goes out in one message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agent.errors import DelegationError
from agent.models import SUBAGENTS, DelegationTask, Design

MAX_PROMPT_CHARS = 12_000  # ~3k tokens: a self-contained brief, well under a subagent's first-turn budget
PLUGIN_PREFIX = "data-agent:"
DEFAULT_TARGETS: dict[str, str] = {role: f"{PLUGIN_PREFIX}{role}" for role in SUBAGENTS}

# role -> (description template, parallel group, depends on roles, expected output)
ROLES: dict[str, tuple[str, int, tuple[str, ...], str]] = {
    "security-engineer": (
        "Review security of {name}",
        1,
        (),
        "Markdown report: encryption, access per layer, PII masking, compliance, secrets",
    ),
    "qa-engineer": (
        "Test plan for {name}",
        1,
        (),
        "Markdown test plan with a case per quality rule, contract and reconciliation tests",
    ),
    "devops-engineer": (
        "Provision and operate {name}",
        2,
        ("security-engineer",),
        "Markdown plan: IaC modules, CI/CD, monitoring and alerting, capacity",
    ),
    "genai-engineer": (
        "Design ML features for {name}",
        2,
        (),
        "Markdown design with feature definitions and the training hand-off",
    ),
    "developer": ("Build data API for {name}", 2, (), "OpenAPI document and service outline"),
}


def roles_for(design: Design) -> list[str]:
    roles = ["security-engineer", "qa-engineer", "devops-engineer"]
    consumers = {c.lower() for c in design.request.consumers}
    if consumers & {"ml", "feature_store", "machine_learning"}:
        roles.append("genai-engineer")
    if consumers & {"api", "data_api", "application", "reverse_etl"}:
        roles.append("developer")
    return roles


def plan_delegations(design: Design, *, targets: Mapping[str, str] | None = None) -> list[DelegationTask]:
    from agent.prompts import render_prompt

    names = {**DEFAULT_TARGETS, **(targets or {})}
    short = design.name.replace("-", "_")[:40]
    tasks = []
    roles = roles_for(design)
    for role in roles:
        description, group, deps, expected = ROLES[role]
        prompt = render_prompt(f"delegation/{role}.md.j2", design)
        if len(prompt) > MAX_PROMPT_CHARS:
            prompt = prompt[: MAX_PROMPT_CHARS - 200].rsplit("\n", 1)[0] + (
                "\n\n(The brief was shortened to fit; the full design is in the bundle's documentation.)\n"
            )
        tasks.append(
            DelegationTask(
                id=f"{design.id}:{role}",
                subagent_type=names[role],
                description=description.format(name=short),
                prompt=prompt,
                depends_on=[f"{design.id}:{d}" for d in deps if d in roles],
                parallel_group=group,
                design_ref=design.id,
                expected_output=expected,
            )
        )
    validate_tasks(tasks, known_agents=set(names.values()))
    return tasks


def parse_task(data: Any) -> DelegationTask:
    """A task from another agent: a DelegationTask, or an Agent-tool-shaped dict."""
    from pydantic import ValidationError

    if isinstance(data, DelegationTask):
        return data
    if not isinstance(data, dict):
        raise DelegationError(f"a task must be a mapping, got {type(data).__name__}")
    if not str(data.get("prompt") or "").strip():
        raise DelegationError("the task has no prompt", field="prompt")
    try:
        return DelegationTask.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise DelegationError(
            err["msg"].removeprefix("Value error, "), field=".".join(str(p) for p in err["loc"]) or None
        ) from None


def validate_tasks(
    tasks: Iterable[DelegationTask | dict[str, Any]], *, known_agents: Iterable[str] | None = None
) -> list[DelegationTask]:
    """Launchable or a DelegationError: prompts present and bounded, agents known, dependencies acyclic."""
    parsed = [parse_task(t) for t in tasks]
    known = set(known_agents) if known_agents is not None else None
    ids = [t.id for t in parsed]
    if len(set(ids)) != len(ids):
        raise DelegationError("two tasks share an id", field="id")
    for t in parsed:
        if known is not None and t.subagent_type not in known:
            raise DelegationError(
                f"unknown subagent_type {t.subagent_type!r}; known: {', '.join(sorted(known))}",
                field="subagent_type",
            )
        if len(t.prompt) > MAX_PROMPT_CHARS:
            raise DelegationError(
                f"prompt of task {t.id!r} is {len(t.prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}",
                field="prompt",
            )
        for dep in t.depends_on:
            if dep not in ids:
                raise DelegationError(
                    f"task {t.id!r} depends on {dep!r}, which is not in this set", field="depends_on"
                )
    _check_acyclic(parsed)
    return parsed


def _check_acyclic(tasks: list[DelegationTask]) -> None:
    deps = {t.id: list(t.depends_on) for t in tasks}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            cycle = path[path.index(node) :] + [node]
            raise DelegationError("depends_on forms a cycle: " + " -> ".join(cycle), field="depends_on")
        state[node] = 1
        for d in deps[node]:
            visit(d, path + [node])
        state[node] = 2

    for t in tasks:
        visit(t.id, [])


def launch_waves(tasks: list[DelegationTask]) -> list[list[DelegationTask]]:
    """Messages to send, in order: each wave's tasks have all their dependencies in earlier waves."""
    done: set[str] = set()
    remaining = list(tasks)
    waves = []
    while remaining:
        ready = [t for t in remaining if set(t.depends_on) <= done]
        group = min(t.parallel_group for t in ready)
        wave = [t for t in ready if t.parallel_group == group]
        waves.append(wave)
        done |= {t.id for t in wave}
        remaining = [t for t in remaining if t.id not in done]
    return waves
