"""Lint steering policies: broken files, duplicate ids, and rules that contradict each other."""

from __future__ import annotations

import re
from pathlib import Path

from agent.models import LoadProblem, PolicyRule
from agent.steering import load_policies

_RETAIN = re.compile(
    r"\b(retain(?:ed)?|kept|keep|store[sd]?|deleted?|purged?)\b.*?\b(\d+)\s*(day|month|year)s?\b"
)
_SUBJECTS = (
    "pii",
    "personal",
    "raw",
    "financial",
    "audit",
    "log",
    "backup",
    "event",
    "stream",
    "dead-letter",
)


def lint_policies(context: str | Path | None = None) -> list[LoadProblem]:
    policies = load_policies(context)
    findings = list(policies.problems)
    seen: dict[str, PolicyRule] = {}
    for rule in policies.rules:
        if rule.id in seen:
            findings.append(
                LoadProblem(
                    path=_path(policies, rule), line=rule.line, message=f"duplicate clause id {rule.id!r}"
                )
            )
        seen[rule.id] = rule
    findings += _retention_conflicts(policies)
    findings += _modal_conflicts(policies)
    return findings


def _path(policies: object, rule: PolicyRule) -> str:
    policy = policies.policy(rule.policy_id)  # type: ignore[attr-defined]
    return policy.path if policy else rule.policy_id


def _days(n: int, unit: str) -> int:
    return n * {"day": 1, "month": 30, "year": 365}[unit]


def _retention_conflicts(policies: object) -> list[LoadProblem]:
    by_subject: dict[str, list[tuple[int, PolicyRule]]] = {}
    for rule in policies.rules:  # type: ignore[attr-defined]
        low = rule.text.lower()
        m = _RETAIN.search(low)
        if not m:
            continue
        subject = tuple(s for s in _SUBJECTS if s in low)
        if subject:
            by_subject.setdefault(" ".join(subject), []).append((_days(int(m.group(2)), m.group(3)), rule))
    out = []
    for subject, items in by_subject.items():
        values = {d for d, _ in items}
        if len(values) > 1 and all(r.modality.startswith(("MUST", "SHALL")) for _, r in items):
            (d1, r1), (d2, r2) = min(items, key=lambda x: x[0]), max(items, key=lambda x: x[0])
            out.append(
                LoadProblem(
                    path=_path(policies, r2),
                    line=r2.line,
                    message=(
                        f"retention for '{subject}' contradicts {_path(policies, r1)}:{r1.line} "
                        f"({d2} days here, {d1} days there)"
                    ),
                )
            )
    return out


def _modal_conflicts(policies: object) -> list[LoadProblem]:
    """'MUST encrypt X' against 'MAY store X in plain text' (or MUST NOT vs MUST on the same action)."""
    out = []
    rules = policies.rules  # type: ignore[attr-defined]
    musts = [
        r
        for r in rules
        if r.modality in ("MUST", "SHALL", "REQUIRED") and re.search(r"encrypt", r.text, re.I)
    ]
    mays = [
        r
        for r in rules
        if r.modality == "MAY" and re.search(r"plain ?text|unencrypted|in the clear", r.text, re.I)
    ]
    for may in mays:
        for must in musts:
            shared = set(re.findall(r"[a-z]{4,}", may.text.lower())) & set(
                re.findall(r"[a-z]{4,}", must.text.lower())
            )
            if shared & {"pii", "personal", "data", "secrets", "credentials", "columns"}:
                out.append(
                    LoadProblem(
                        path=_path(policies, may),
                        line=may.line,
                        message=(
                            f"'{may.text[:60]}' contradicts {_path(policies, must)}:{must.line} ('{must.text[:60]}')"
                        ),
                    )
                )
                break
    return out
