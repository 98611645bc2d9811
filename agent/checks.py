"""Check a design against the loaded policies: what a reviewer would block a design for.

Each check names the policy clause it enforces (found by its wording, so a user's own policies are
cited when they say the same thing) and the subject (table or column) that fails it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from agent.models import CheckResult, Design
from agent.steering import PolicySet

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
CORE_PREFIXES = {
    "fact": "fct_",
    "dimension": "dim_",
    "date_dimension": "dim_",
    "hub": "hub_",
    "link": "link_",
    "satellite": "sat_",
    "obt": "obt_",
}


def find_rule(policies: PolicySet, *must_contain: str) -> str | None:
    """The first MUST-strength clause containing every phrase (case-insensitive), else any clause."""
    fallback = None
    for rule in policies.rules:
        low = rule.text.lower()
        if all(any(alt in low for alt in phrase.split("|")) for phrase in must_contain):
            if rule.modality.startswith(("MUST", "SHALL", "NEVER", "REQUIRED")):
                return rule.id
            fallback = fallback or rule.id
    return fallback


def policy_days(policies: PolicySet, *phrases: str) -> tuple[int | None, str | None]:
    for rule in policies.rules:
        low = rule.text.lower()
        if all(any(alt in low for alt in p.split("|")) for p in phrases):
            if m := re.search(r"(\d+)\s*days", low):
                return int(m.group(1)), rule.id
    return None, None


def check_pii(design: Design, policies: PolicySet) -> list[CheckResult]:
    rule = find_rule(policies, "pii|personal", "mask|hash|encrypt|tokeni")
    out = []
    for table in design.storage.tables:
        if table.layer == "raw":
            continue
        for col in table.columns:
            if col.pii and not col.masking:
                out.append(
                    CheckResult(
                        check="pii_protected",
                        status="fail",
                        policy_id=rule,
                        subject=f"{table.qualified}.{col.name}",
                        message="PII column is neither masked nor encrypted outside raw",
                    )
                )
    if not out:
        n = len(design.pii_columns())
        out.append(
            CheckResult(
                check="pii_protected",
                status="pass",
                policy_id=rule,
                message=f"{n} PII column(s) outside raw are all masked or encrypted",
            )
        )
    return out


def check_owners(design: Design, policies: PolicySet) -> list[CheckResult]:
    rule = find_rule(policies, "owner")
    missing = [t.qualified for t in design.storage.tables if not t.owner.strip()]
    if missing:
        return [
            CheckResult(check="owner", status="fail", policy_id=rule, subject=t, message="table has no owner")
            for t in missing
        ]
    return [
        CheckResult(
            check="owner",
            status="pass",
            policy_id=rule,
            message=f"all {len(design.storage.tables)} tables have an owner",
        )
    ]


def check_naming(design: Design, policies: PolicySet) -> list[CheckResult]:
    rule = find_rule(policies, "snake_case|snake case|lowercase")
    out = []
    for table in design.storage.tables:
        # raw mirrors the source as extracted; its columns keep the source's names
        names = [table.name, *(c.name.lstrip("_") for c in table.columns if table.layer != "raw")]
        bad = [n for n in names if not SNAKE.match(n)]
        if bad:
            out.append(
                CheckResult(
                    check="naming",
                    status="fail",
                    policy_id=rule,
                    subject=table.qualified,
                    message=f"not snake_case: {', '.join(bad)}",
                )
            )
        prefix = CORE_PREFIXES.get(table.kind)
        if prefix and not table.name.startswith(prefix):
            out.append(
                CheckResult(
                    check="naming",
                    status="warn",
                    policy_id=find_rule(policies, "fct_|dim_"),
                    subject=table.qualified,
                    message=f"{table.kind} table should start with {prefix}",
                )
            )
    return out or [
        CheckResult(check="naming", status="pass", policy_id=rule, message="names follow conventions")
    ]


def check_keys(design: Design, policies: PolicySet) -> list[CheckResult]:
    rule = find_rule(policies, "primary key")
    out = [
        CheckResult(
            check="primary_key",
            status="fail",
            policy_id=rule,
            subject=t.qualified,
            message="modelled table has no primary key",
        )
        for t in design.storage.tables
        if t.layer in ("staging", "core") and not t.primary_key
    ]
    return out or [
        CheckResult(
            check="primary_key",
            status="pass",
            policy_id=rule,
            message="every staging and core table has a primary key",
        )
    ]


def check_retention(design: Design, policies: PolicySet) -> list[CheckResult]:
    limit, rule = policy_days(policies, "raw|landing", "pii|personal")
    if limit is None:
        return [
            CheckResult(
                check="retention", status="warn", message="no retention limit for raw PII in policies"
            )
        ]
    out = []
    for t in design.storage.tables:
        if t.layer == "raw" and any(c.pii for c in t.columns):
            if t.retention_days is None or t.retention_days > limit:
                out.append(
                    CheckResult(
                        check="retention",
                        status="fail",
                        policy_id=rule,
                        subject=t.qualified,
                        message=f"raw PII kept {t.retention_days or 'forever'} days; limit {limit}",
                    )
                )
    return out or [
        CheckResult(
            check="retention",
            status="pass",
            policy_id=rule,
            message=f"raw tables holding PII expire within {limit} days",
        )
    ]


UNIT_MINUTES = {"minute": 1, "hour": 60, "day": 1440}


def policy_freshness(policies: PolicySet) -> tuple[float | None, str | None]:
    """The tightest freshness limit a clause states ("freshness ... within 2 hours"), in minutes."""
    best: tuple[float | None, str | None] = (None, None)
    for rule in policies.rules:
        low = rule.text.lower()
        if "freshness" not in low or not rule.modality.startswith(("MUST", "SHALL", "REQUIRED")):
            continue
        m = re.search(r"(?:within|at most|no more than|no older than)\s+(\d+)\s*(minute|hour|day)s?", low)
        if m:
            minutes = int(m.group(1)) * UNIT_MINUTES[m.group(2)]
            if best[0] is None or minutes < best[0]:
                best = (minutes, rule.id)
    return best


def check_freshness(design: Design, policies: PolicySet) -> list[CheckResult]:
    rule = find_rule(policies, "freshness|sla")
    limit, limit_rule = policy_freshness(policies)
    if limit is not None and design.request.freshness_minutes > limit:
        return [
            CheckResult(
                check="freshness_sla",
                status="fail",
                policy_id=limit_rule,
                subject=design.name,
                message=f"requested freshness {design.request.freshness} "
                f"({design.request.freshness_minutes:g} min) is looser than the policy limit of {limit:g} min",
            )
        ]
    has = any(r.check == "freshness" for r in design.quality.rules)
    monitored = any(m.name == "freshness" for m in design.quality.monitors)
    if has and monitored:
        return [
            CheckResult(
                check="freshness_sla",
                status="pass",
                policy_id=rule,
                message=f"freshness {design.request.freshness} is tested and monitored",
            )
        ]
    return [
        CheckResult(
            check="freshness_sla",
            status="fail",
            policy_id=rule,
            message="the freshness SLA has no test or monitor",
        )
    ]


def check_conflicts(design: Design, policies: PolicySet) -> list[CheckResult]:
    return [CheckResult(check="requirements", status="warn", message=c) for c in design.conflicts]


CHECKS: tuple[Callable[[Design, PolicySet], list[CheckResult]], ...] = (
    check_pii,
    check_owners,
    check_naming,
    check_keys,
    check_retention,
    check_freshness,
    check_conflicts,
)


def check_design(design: Design, policies: PolicySet) -> list[CheckResult]:
    return [result for check in CHECKS for result in check(design, policies)]
