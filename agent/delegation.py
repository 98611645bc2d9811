"""Delegation tasks: the follow-up work handed to security, devops, QA (and developer, genai) agents.

A task is exactly the Claude Code Agent tool input plus ordering. Subagents cannot reliably launch
subagents, so tasks are returned as data and the caller (the plugin's command, or a library user)
launches them: every task of one parallel group whose dependencies are done goes out in one message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from agent.errors import DelegationError
from agent.models import SUBAGENTS, DelegationTask, Design

MAX_PROMPT_CHARS = 12_000  # ~3k tokens: a self-contained brief, well under a subagent's first-turn budget
MAX_INBOUND_PROMPT_CHARS = 40_000  # a task sent *to* the data engineer may embed a whole YAML request
PLUGIN_PREFIX = "data-agent:"
SHIPPED_AGENTS = ("security-engineer", "devops-engineer", "qa-engineer")  # defined in prompts/agents/
# Roles the plugin ships go to its own agents; developer and genai-engineer go to Claude Code's built-in
# general-purpose agent (the brief is self-contained) unless the user maps them to their own agents.
DEFAULT_TARGETS: dict[str, str] = {
    role: f"{PLUGIN_PREFIX}{role}" if role in SHIPPED_AGENTS else "general-purpose" for role in SUBAGENTS
}
DATA_ENGINEER_NAMES = frozenset({f"{PLUGIN_PREFIX}data-engineer", "data-engineer"})

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


ML_WORDS = frozenset({"ml", "machine_learning", "feature_store", "features", "genai", "llm", "ai"})
API_WORDS = frozenset(
    {"api", "data_api", "apis", "application", "applications", "reverse_etl", "microservice"}
)


def _consumer_words(design: Design) -> set[str]:
    words: set[str] = set()
    for consumer in design.request.consumers:
        text = consumer.lower().replace("-", "_")
        words.add(re.sub(r"\s+", "_", text.strip()))
        words |= set(re.split(r"[^a-z]+", text))
        words |= {"_".join(p) for p in zip(text.split(), text.split()[1:])}
    return words


def roles_for(design: Design) -> list[str]:
    """security, QA and devops always; genai-engineer for ML consumers; developer for data APIs."""
    roles = ["security-engineer", "qa-engineer", "devops-engineer"]
    words = _consumer_words(design)
    if words & ML_WORDS:
        roles.append("genai-engineer")
    if words & API_WORDS:
        roles.append("developer")
    return roles


def resolve_targets(agent_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """Role -> agent name, the defaults overridden by ``agent_map`` (e.g. ``{"qa-engineer": "qa-expert"}``)."""
    names = dict(DEFAULT_TARGETS)
    for role, name in (agent_map or {}).items():
        if role not in SUBAGENTS:
            raise DelegationError(
                f"agent_map role {role!r} is not one of {', '.join(SUBAGENTS)}", field="agent_map"
            )
        if not isinstance(name, str) or not name.strip():
            raise DelegationError(f"agent_map[{role!r}] must be a non-empty agent name", field="agent_map")
        names[role] = name.strip()
    return names


def known_agents(agent_map: Mapping[str, str] | None = None) -> set[str]:
    """Every agent name a task may target: the resolved targets (and the plugin's own, always)."""
    return set(resolve_targets(agent_map).values()) | set(DEFAULT_TARGETS.values())


def plan_delegations(design: Design, *, targets: Mapping[str, str] | None = None) -> list[DelegationTask]:
    """The tasks for ``design``, one per role, with prompts rendered from prompts/delegation/.

    ``targets`` maps roles to agent names (see :func:`resolve_targets`). Raises DelegationError when
    the result would not be launchable.
    """
    from agent.prompts import render_prompt

    names = resolve_targets(targets)
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
        if not data.prompt.strip():
            raise DelegationError("the task has no prompt", field="prompt")
        return data
    if isinstance(data, Mapping):
        data = dict(data)
    if not isinstance(data, dict):
        raise DelegationError(f"a task must be a mapping, got {type(data).__name__}")
    if not isinstance(data.get("prompt"), str) or not data["prompt"].strip():
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


def check_inbound(task: DelegationTask, *, names: Iterable[str] = DATA_ENGINEER_NAMES) -> DelegationTask:
    """A task sent *to* the data engineer: it must name the data engineer and fit the inbound limit."""
    allowed = set(names)
    if task.subagent_type not in allowed:
        raise DelegationError(
            f"unknown subagent_type {task.subagent_type!r}; this agent answers to {', '.join(sorted(allowed))}",
            field="subagent_type",
        )
    if len(task.prompt) > MAX_INBOUND_PROMPT_CHARS:
        raise DelegationError(
            f"prompt is {len(task.prompt):,} characters; the limit is {MAX_INBOUND_PROMPT_CHARS:,}",
            field="prompt",
            hint="put the request in a file and pass its path, or trim the prompt",
        )
    return task


def launch_waves(tasks: list[DelegationTask]) -> list[list[DelegationTask]]:
    """Messages to send, in order: each wave's tasks have all their dependencies in earlier waves.

    Every task of a wave goes out in one message (parallel Agent tool calls). Raises DelegationError
    if the tasks are not launchable (call :func:`validate_tasks` first for a precise message).
    """
    done: set[str] = set()
    remaining = list(tasks)
    waves = []
    while remaining:
        ready = [t for t in remaining if set(t.depends_on) <= done]
        if not ready:
            raise DelegationError("depends_on forms a cycle or names a missing task", field="depends_on")
        group = min(t.parallel_group for t in ready)
        wave = [t for t in ready if t.parallel_group == group]
        waves.append(wave)
        done |= {t.id for t in wave}
        remaining = [t for t in remaining if t.id not in done]
    return waves
