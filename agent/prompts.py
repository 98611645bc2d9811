"""Prompt templates in prompts/: delegation briefs, the planner's system prompt, agent definitions.

Prompts are documents, kept readable in prompts/ and rendered with the same sandboxed, strict Jinja2 as the
deliverables. Request text inside a prompt is data: it is inserted as a value and never evaluated.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from agent.models import Design


@cache
def _environment() -> Any:
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    from agent.render import _ENV_OPTIONS, bytecode_cache
    from agent.resources import shipped

    # the same options as the bundle's environment, so the two share one bytecode cache directory
    return SandboxedEnvironment(
        loader=FileSystemLoader(str(shipped("prompts"))),
        undefined=StrictUndefined,
        autoescape=False,
        bytecode_cache=bytecode_cache("sandbox-strict-trim"),
        **_ENV_OPTIONS,
    )


def render_prompt(name: str, design: Design | None = None, **context: Any) -> str:
    if design is not None:
        from agent.render import design_context

        context = design_context(design, **context)
    return _environment().get_template(name).render(**context)
