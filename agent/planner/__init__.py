"""Planners turn a request and its context pack into a Design: offline rules, or Claude."""

from __future__ import annotations

from collections.abc import Sequence

from agent.models import ContextPack, Design, DesignRequest, RecalledMemory
from agent.steering import PolicySet

PLANNERS = ("rules", "claude", "auto")


def plan(
    request: DesignRequest,
    pack: ContextPack,
    policies: PolicySet,
    recalled: Sequence[RecalledMemory] = (),
    *,
    planner: str = "rules",
) -> Design:
    if planner == "rules":
        from agent.planner.rules import plan_design

        return plan_design(request, pack, policies, recalled)
    if planner == "claude":
        from agent.planner.claude import plan_design as claude_plan

        return claude_plan(request, pack, policies, recalled)
    raise ValueError(f"unknown planner {planner!r}; choose one of {', '.join(PLANNERS)}")
