"""`policies lint`: planted contradictions are found with file:line; the packaged context is clean."""

from __future__ import annotations

import json

import pytest

from agent.cli import main
from agent.lint import lint_policies

# a private cache dir, and nothing of the caches held in memory (conftest's cache_dir)
pytestmark = pytest.mark.usefixtures("cache_dir")


def planted(tmp_path):
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "finance.md").write_text(
        "# Finance\n\n## Retention\n- Invoice records MUST be retained for 7 years.\n"
        "- Customer PII MUST be encrypted at rest.\n"
    )
    (root / "ops.md").write_text(
        "# Ops\n\nIntro.\n\n## Cleanup\n- Tables SHOULD have owners.\n"
        "- Invoice records MUST be deleted after 1 year.\n"
        "- Customer PII MAY be stored in plain text in the sandbox.\n"
    )
    return root


def test_lint_finds_planted_contradictions_with_file_and_line(tmp_path):
    findings = lint_policies(planted(tmp_path))
    errors = [f for f in findings if f.severity == "error"]
    retention = [f for f in errors if "retention" in f.message.lower()]
    plain = [f for f in errors if "plain" in f.message.lower() or "encrypt" in f.message.lower()]
    assert retention and plain
    located = {(f.path.rsplit("/", 1)[-1], f.line) for f in retention + plain}
    # each finding names one side by file:line and the other side in the message
    assert ("ops.md", 7) in located or ("finance.md", 4) in located
    assert any("finance.md:4" in f.message or "ops.md:7" in f.message for f in retention)
    assert ("ops.md", 8) in located or any("ops.md:8" in f.message for f in plain)


def test_lint_cli_exit_codes(tmp_path, capsys):
    assert main(["policies", "lint", "--context", str(planted(tmp_path)), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["errors"] >= 2
    assert main(["policies", "lint"]) == 0, capsys.readouterr().out


def test_compatible_periods_are_not_contradictions(tmp_path):
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "a.md").write_text(
        "# A\n\n## Logs\n- Audit logs of access to PHI MUST be retained at least 6 years.\n"
        "- Audit logs for systems in PCI scope MUST be retained at least 12 months.\n"
        "- Pipeline logs MUST be kept for 30 days.\n- The erasure log MUST be retained for 3 years.\n"
    )
    assert not [f for f in lint_policies(root) if f.severity == "error"]


def test_duplicate_ids_reported(tmp_path):
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "a.yaml").write_text(
        "id: x\nrules:\n  - id: r\n    text: A MUST b.\n  - id: r\n    text: C MUST d.\n"
    )
    findings = lint_policies(root)
    assert any("duplicate" in f.message and f.line == 5 for f in findings)
