"""data-agent policies list | show ID | lint"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    from agent.commands import common

    p = sub.add_parser("policies", help="list, show and lint the steering policies")
    psub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    lst = psub.add_parser("list", help="one line per policy")
    common(lst, memory=False)
    lst.set_defaults(run=run_list)
    show = psub.add_parser("show", help="a policy or a clause by id")
    show.add_argument("id")
    common(show, memory=False)
    show.set_defaults(run=run_show)
    lint = psub.add_parser("lint", help="report broken files, duplicate ids and contradictions")
    common(lint, memory=False)
    lint.set_defaults(run=run_lint)


def run_list(args: argparse.Namespace) -> int:
    from agent.steering import load_policies

    ps = load_policies(args.context)
    rows = [
        {
            "id": p.id,
            "title": p.title,
            "kind": p.kind,
            "rules": len(p.rules),
            "always": p.always,
            "applies_to": p.applies_to,
            "path": p.path,
        }
        for p in ps.policies
    ]
    if args.json:
        from agent.cli import emit_json

        emit_json({"root": str(ps.root), "policies": rows, "problems": [str(x) for x in ps.problems]})
        return 0
    for r in rows:
        print(f"{r['id']:20} {r['rules']:4} rules  {r['kind']:12} {r['title']}")
    for problem in ps.problems:
        print(f"warning: {problem}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from agent.errors import PolicyError
    from agent.steering import load_policies

    ps = load_policies(args.context)
    policy = ps.policy(args.id)
    rule = None if policy else ps.rule(args.id)
    if policy is None and rule is None:
        raise PolicyError(f"no policy or clause with id {args.id!r}", hint="see 'data-agent policies list'")
    if args.json:
        from agent.cli import emit_json

        emit_json((policy or rule).model_dump())  # type: ignore[union-attr]
        return 0
    if rule:
        print(f"[{rule.id}] {rule.modality} ({rule.section}, line {rule.line})\n{rule.text}")
        return 0
    assert policy
    print(f"# {policy.title} [{policy.id}]  ({policy.path})")
    for section in policy.sections:
        print(f"\n## {section.title}")
        for r in section.rules:
            print(f"- [{r.id}] {r.text}")
    return 0


def run_lint(args: argparse.Namespace) -> int:
    from agent.lint import lint_policies

    findings = lint_policies(args.context)
    errors = [f for f in findings if f.severity == "error"]
    if args.json:
        from agent.cli import emit_json

        emit_json({"errors": len(errors), "findings": [f.model_dump() for f in findings]})
    else:
        for f in findings:
            print(f"{f.severity}: {f}")
        print(f"{len(errors)} error(s), {len(findings) - len(errors)} warning(s)")
    return 1 if errors else 0
