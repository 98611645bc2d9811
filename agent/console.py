"""Terminal output with rich: stage progress, a summary table, the bundle's tree.

Used only when stdout is a terminal and --json is not given; otherwise plain lines.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

STAGE_LABELS = {
    "request": "Parsed request",
    "steering": "Loaded policies",
    "recall": "Recalled memories",
    "pack": "Packed context",
    "plan": "Planned design",
    "checks": "Checked policies",
    "delegations": "Planned delegations",
    "render": "Rendered deliverables",
    "validate": "Validated artifacts",
    "write": "Wrote bundle",
    "remember": "Remembered design",
}


class DesignProgress:
    def __init__(self, *, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.label = label if len(label) < 70 else label[:67] + "..."
        self._status: Any = None
        self._console: Any = None

    def __enter__(self) -> DesignProgress:
        if self.enabled:
            from rich.console import Console

            self._console = Console()
            self._status = self._console.status(f"Designing [bold]{self.label}[/]")
            self._status.start()
        return self

    def stage_done(self, stage: str, seconds: float) -> None:
        if self._console:
            self._console.print(
                f"  [green]✓[/] {STAGE_LABELS.get(stage, stage)} [dim]{seconds * 1000:.0f} ms[/]"
            )

    def __exit__(self, *exc: object) -> None:
        if self._status:
            self._status.stop()


def print_design_summary(result: Any) -> None:
    report = result.report
    if not sys.stdout.isatty():
        print(f"design {result.design.id}: {result.design.summary}")
        print(f"bundle: {result.bundle}")
        print(
            f"context: {report.tokens_after_packing}/{report.budget} tokens "
            f"(from {report.tokens_before_packing}); policies {len(report.policies_used)}; "
            f"memories {len(report.memories_used)}"
        )
        fails = [c for c in report.checks if c.status == "fail"]
        bad = [a for a in report.artifacts if not a.ok]
        print(
            f"checks: {len(report.checks) - len(fails)} passed, {len(fails)} failed; "
            f"artifacts: {len(report.artifacts) - len(bad)} valid, {len(bad)} invalid"
        )
        for t in result.delegations:
            print(f"delegation: {t.subagent_type}: {t.description}")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.tree import Tree

    console = Console()
    table = Table(
        title=f"{result.design.name}  ({result.design.id})", show_header=False, title_justify="left"
    )
    table.add_column(style="bold")
    table.add_column()
    arch = result.design.architecture
    table.add_row("Design", result.design.summary)
    table.add_row("Pattern", f"{arch.pattern} · {arch.approach} · {arch.modelling}")
    table.add_row(
        "Context",
        f"{report.tokens_after_packing:,} / {report.budget:,} tokens "
        f"(from {report.tokens_before_packing:,}); {len(report.policies_used)} clauses",
    )
    mems = ", ".join(f"{m['name'] or m['id']} ({m['score']:.2f})" for m in report.memories_used) or "none"
    table.add_row("Recalled", mems)
    fails = [c for c in report.checks if c.status == "fail"]
    table.add_row(
        "Policy checks",
        f"{len(report.checks) - len(fails)} passed, "
        + (f"[red]{len(fails)} failed[/]" if fails else "0 failed"),
    )
    bad = [a for a in report.artifacts if not a.ok]
    table.add_row(
        "Artifacts",
        f"{len(report.artifacts) - len(bad)} valid" + (f", [red]{len(bad)} invalid[/]" if bad else ""),
    )
    table.add_row("Delegations", "\n".join(f"{t.subagent_type}: {t.description}" for t in result.delegations))
    table.add_row("Time", f"{report.total_seconds * 1000:.0f} ms")
    console.print(table)
    if result.bundle:
        console.print(bundle_tree(Path(result.bundle), Tree))


def bundle_tree(root: Path, tree_cls: Any) -> Any:
    tree = tree_cls(f"[bold]{root}[/]")

    def add(node: Any, folder: Path) -> None:
        for child in sorted(folder.iterdir(), key=lambda p: (p.is_file(), p.name)):
            if child.is_dir():
                add(node.add(f"[bold blue]{child.name}/[/]"), child)
            else:
                node.add(child.name)

    add(tree, root)
    return tree
