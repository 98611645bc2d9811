"""Lint steering policies: broken files, duplicate ids, and rules that contradict each other."""

from __future__ import annotations

import re
from pathlib import Path

from agent.models import LoadProblem, PolicyRule
from agent.steering import load_policies

_PERIOD = re.compile(r"\b(\d+)\s*(day|week|month|year)s?\b")
_RETENTION_VERB = re.compile(
    r"\b(retain(?:ed)?|retention|kept|keep|stored?|deleted?|purged?|expire[sd]?|removed?|dropped)\b"
)
_MIN = re.compile(r"\b(at least|no less than|not less than|minimum( of)?|or (longer|more))\b")
_MAX = re.compile(
    r"\b(at most|no (longer|more) than|not (longer|more) than|maximum( of)?|up to|within|"
    r"(deleted?|purged?|removed?|dropped|expire[sd]?)\s+(after|within|once))\b"
)
_MODAL_SPLIT = re.compile(r"\b(MUST|SHALL|SHOULD|MAY|REQUIRED|NEVER|must|shall|should|may|are|is)\b")
_GENERIC = frozenset(
    "the a an all any every each of for in on to and or with from by be data table tables record records "
    "its their this that these those which".split()
)
_EXCLUDERS = frozenset({"without", "non", "no", "not", "excluding", "except", "other"})
_UNIT_DAYS = {"day": 1, "week": 7, "month": 30, "year": 365}


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


def _subject(rule: PolicyRule) -> frozenset[str]:
    """The clause's grammatical subject as a bag of content words: what comes before its modal verb."""
    head = _MODAL_SPLIT.split(rule.text, maxsplit=1)[0]
    words = re.findall(r"[a-z0-9]+", head.lower())
    return frozenset(
        w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
        for w in words
        if w not in _GENERIC
    )


def _same_scope(a: PolicyRule, b: PolicyRule) -> bool:
    """Rules scoped to disjoint tags (hipaa vs pci) govern different data and cannot contradict."""
    ta, tb = set(a.tags) - {"all"}, set(b.tags) - {"all"}
    return not ta or not tb or bool(ta & tb)


def _same_subject(a: frozenset[str], b: frozenset[str]) -> bool:
    if not a or not b:
        return False
    if (a ^ b) & _EXCLUDERS:  # "data containing PII" vs "data without PII" are different data
        return False
    return a <= b or b <= a or len(a & b) / len(a | b) >= 0.6


def _interval(rule: PolicyRule) -> tuple[float, float, int] | None:
    """Allowed retention in days as [low, high] from a binding retention clause, or None."""
    if not rule.modality.startswith(("MUST", "SHALL", "REQUIRED")) or "NOT" in rule.modality:
        return None
    low = rule.text.lower()
    m = _RETENTION_VERB.search(low)
    p = _PERIOD.search(low, m.start()) if m else None
    if not p:
        return None
    days = int(p.group(1)) * _UNIT_DAYS[p.group(2)]
    window = low[max(0, m.start() - 20) : p.end()]
    if _MIN.search(window) or _MIN.search(low[p.end() : p.end() + 12]):
        return days, float("inf"), days
    if _MAX.search(window) or m.group(1).startswith(("delet", "purg", "expir", "remov", "dropp")):
        return 0, days, days
    return days, days, days


def _retention_conflicts(policies: object) -> list[LoadProblem]:
    """Two binding retention periods for the same subject and scope whose allowed ranges do not overlap."""
    found = []
    for rule in policies.rules:  # type: ignore[attr-defined]
        iv = _interval(rule)
        if iv:
            found.append((rule, _subject(rule), iv))
    out = []
    for i, (r1, s1, (lo1, hi1, d1)) in enumerate(found):
        for r2, s2, (lo2, hi2, d2) in found[i + 1 :]:
            if not (_same_subject(s1, s2) and _same_scope(r1, r2)):
                continue
            if max(lo1, lo2) <= min(hi1, hi2):
                continue
            out.append(
                LoadProblem(
                    path=_path(policies, r2),
                    line=r2.line,
                    message=(
                        f"retention for '{' '.join(sorted(s1 & s2 or s1))}' contradicts "
                        f"{_path(policies, r1)}:{r1.line} ({d2} days here, {d1} days there)"
                    ),
                )
            )
    return out


def _modal_conflicts(policies: object) -> list[LoadProblem]:
    """'MUST encrypt X' against 'MAY store X in plain text / unencrypted' for the same subject and scope."""
    out = []
    rules = policies.rules  # type: ignore[attr-defined]
    musts = [
        r
        for r in rules
        if r.modality in ("MUST", "SHALL", "REQUIRED") and re.search(r"\bencrypt", r.text, re.I)
    ]
    plains = [
        r
        for r in rules
        if r.modality in ("MAY", "SHOULD") or "optional" in r.text.lower()
        if re.search(
            r"plain ?text|unencrypted|in the clear|without encryption|not be encrypted", r.text, re.I
        )
    ]
    for plain in plains:
        for must in musts:
            if not _same_scope(plain, must):
                continue
            a, b = _subject(plain), _subject(must)
            if a & b and (len(a & b) / len(a | b) >= 0.5 or a <= b or b <= a):
                out.append(
                    LoadProblem(
                        path=_path(policies, plain),
                        line=plain.line,
                        message=(
                            f"'{plain.text[:60]}' contradicts {_path(policies, must)}:{must.line} "
                            f"('{must.text[:60]}')"
                        ),
                    )
                )
                break
    return out
