"""Policy checks (PII, owners, naming, retention, freshness SLA), --strict, and bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from pydantic import ValidationError
from sample_rows import load_clean
from test_planner import request

from agent import DataEngineerAgent
from agent.checks import check_design
from agent.errors import RequestError
from agent.render import render_ddl
from agent.steering import load_policies
from agent.validate import check_ddl, compile_model, split_checks

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def agent():
    return DataEngineerAgent(use_memory=False, remember=False)


@pytest.fixture(scope="module")
def policies():
    return load_policies(None)


@pytest.fixture(scope="module")
def clean(agent):
    return agent.design(request())


def statuses(results, check):
    return [r for r in results if r.check == check]


def test_clean_design_passes_every_check(clean):
    failed = [c for c in clean.report.checks if c.status == "fail"]
    assert not failed
    assert {c.check for c in clean.report.checks} >= {
        "pii_protected",
        "owner",
        "naming",
        "primary_key",
        "retention",
        "freshness_sla",
    }
    assert json.loads(clean.files["checks.json"]) == [c.model_dump() for c in clean.report.checks]


def test_checks_cite_policy_clauses(clean):
    cited = {c.check: c.policy_id for c in clean.report.checks}
    for check in ("pii_protected", "owner", "retention", "freshness_sla"):
        assert cited[check], check


def test_unmasked_pii_fails(clean, policies):
    d = clean.design.model_copy(deep=True)
    col = next(c for t in d.storage.tables if t.layer == "staging" for c in t.columns if c.pii)
    col.masking = None
    fails = [r for r in statuses(check_design(d, policies), "pii_protected") if r.status == "fail"]
    assert fails and fails[0].subject.endswith(f".{col.name}")


def test_missing_owner_fails(clean, policies):
    d = clean.design.model_copy(deep=True)
    d.storage.tables[-1].owner = " "
    fails = [r for r in statuses(check_design(d, policies), "owner") if r.status == "fail"]
    assert [f.subject for f in fails] == [d.storage.tables[-1].qualified]


def test_naming_violation_fails(clean, policies):
    d = clean.design.model_copy(deep=True)
    d.storage.tables[-1].columns[0].name = "TotalAmount"
    fails = [r for r in statuses(check_design(d, policies), "naming") if r.status == "fail"]
    assert fails and "TotalAmount" in fails[0].message


def test_retention_over_policy_limit_fails(clean, policies):
    d = clean.design.model_copy(deep=True)
    raw = next(t for t in d.storage.tables if t.layer == "raw" and any(c.pii for c in t.columns))
    raw.retention_days = 3650
    fails = [r for r in statuses(check_design(d, policies), "retention") if r.status == "fail"]
    assert fails and fails[0].subject == raw.qualified and fails[0].policy_id


def test_freshness_sla_without_test_fails(clean, policies):
    d = clean.design.model_copy(deep=True)
    d.quality.rules = [r for r in d.quality.rules if r.check != "freshness"]
    assert statuses(check_design(d, policies), "freshness_sla")[0].status == "fail"


def test_policy_drives_retention(agent, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "privacy.md").write_text(
        "---\nid: acme\ntitle: ACME privacy\n---\n\n## Raw data\n\n"
        "- Raw landing tables holding personal data MUST be deleted within 7 days.\n"
        "- Every table MUST have an owner.\n"
    )
    res = DataEngineerAgent(use_memory=False, remember=False, context=ctx).design(request())
    raw = [t for t in res.design.storage.tables if t.layer == "raw" and any(c.pii for c in t.columns)]
    assert raw and all(t.retention_days == 7 for t in raw)
    retention = statuses(res.report.checks, "retention")[0]
    assert retention.status == "pass" and retention.policy_id.startswith("acme")


# -- the CLI ------------------------------------------------------------------------------------------


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent", "design", *args, "--no-memory", "--offline"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**__import__("os").environ, "HOME": str(tmp_path), "DATA_AGENT_MEMORY_DIR": str(tmp_path / "m")},
        timeout=120,
        check=False,
    )


def test_strict_exits_nonzero_on_a_violation_and_lists_it(tmp_path):
    """A user policy directory (--context) sets a freshness limit the daily request cannot meet."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "sla.md").write_text(
        "---\nid: acme-sla\ntitle: ACME SLAs\n---\n\n## Freshness\n\n"
        "- Every table feeding a dashboard MUST meet a freshness SLA within 2 hours.\n"
    )
    path = tmp_path / "daily.yaml"
    path.write_text(yaml.safe_dump(request(freshness="daily")))
    out = tmp_path / "bundle"
    proc = run_cli(tmp_path, str(path), "--out", str(out), "--strict", "--context", str(ctx))
    assert proc.returncode != 0, proc.stdout + proc.stderr
    checks = json.loads((out / "checks.json").read_text())
    fail = [c for c in checks if c["status"] == "fail"]
    assert [c["check"] for c in fail] == ["freshness_sla"]
    assert fail[0]["policy_id"].startswith("acme-sla") and "120 min" in fail[0]["message"]
    # without --strict the same design is written and the exit status is 0
    assert run_cli(tmp_path, str(path), "--out", str(tmp_path / "b2"), "--context", str(ctx)).returncode == 0
    # an hourly request meets the policy
    path.write_text(yaml.safe_dump(request(freshness="hourly")))
    assert run_cli(tmp_path, str(path), "--strict", "--context", str(ctx)).returncode == 0


def test_source_names_are_snake_cased_in_staging_raw_keeps_them(agent, policies):
    r = request()
    r["sources"][0]["entities"][0]["columns"].append({"name": "DiscountCode", "type": "string"})
    res = agent.design(r)
    raw = next(t for t in res.design.storage.tables if t.layer == "raw" and t.name.endswith("orders"))
    stg = next(t for t in res.design.storage.tables if t.name == "stg_orders")
    assert "DiscountCode" in {c.name for c in raw.columns}
    assert "discount_code" in {c.name for c in stg.columns}
    assert not [c for c in res.report.checks if c.status == "fail"]


def test_strict_passes_a_clean_design(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(request()))
    proc = run_cli(tmp_path, str(path), "--out", str(tmp_path / "bundle"), "--strict")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- bad input ----------------------------------------------------------------------------------------


def test_conflicting_requirements_are_stated_with_the_choice(agent):
    res = agent.design(REPO / "examples" / "conflict_realtime_filedrop.yaml")
    assert res.design.conflicts
    assert "Chose" in res.design.conflicts[0]
    req = statuses(res.report.checks, "requirements")
    assert req and req[0].status == "warn"
    assert "Conflicts" in res.files["README.md"] or res.design.conflicts[0][:40] in res.files["README.md"]


def test_unsupported_warehouse_lists_supported(agent):
    with pytest.raises((ValidationError, ValueError, RequestError)) as err:
        agent.design(request(targets=[{"warehouse": "teradata"}]))
    msg = str(err.value)
    assert "teradata" in msg
    for w in ("snowflake", "bigquery", "redshift", "databricks", "postgres"):
        assert w in msg


def test_unsupported_warehouse_cli_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(request(targets=[{"warehouse": "teradata"}])))
    proc = run_cli(tmp_path, str(path))
    assert proc.returncode != 0
    assert "teradata" in proc.stderr and "snowflake" in proc.stderr


def test_table_without_primary_key_gets_a_surrogate_key_and_a_warning(agent):
    r = request()
    del r["sources"][0]["entities"][0]["primary_key"]
    res = agent.design(r)
    stg = next(t for t in res.design.storage.tables if t.name == "stg_orders")
    assert stg.primary_key == ["orders_key"]
    assert any("no primary key" in w and "surrogate" in w for w in res.design.warnings)
    assert any(rule.table == stg.qualified and rule.check == "unique" for rule in res.design.quality.rules)
    assert all(a.ok for a in res.report.artifacts), [a for a in res.report.artifacts if not a.ok]


RESERVED = [
    {"name": "order", "type": "bigint"},
    {"name": "user", "type": "string"},
    {"name": "select", "type": "string"},
    {"name": "group", "type": "decimal(10,2)"},
    {"name": "updated_at", "type": "timestamp"},
]


@pytest.fixture(scope="module")
def reserved(agent):
    r = request(targets=[{"warehouse": "postgres"}])
    r["sources"][0]["entities"] = [{"name": "user", "primary_key": ["order"], "columns": RESERVED}]
    return agent.design(r)


def test_reserved_words_are_quoted_in_ddl_for_every_dialect(reserved):
    for dialect in ("snowflake", "bigquery", "redshift", "databricks", "postgres", "duckdb"):
        sql = render_ddl(reserved.design, dialect)
        assert check_ddl("ddl", sql, dialect).ok
        q = "`" if dialect in ("bigquery", "databricks") else '"'
        for name in ("order", "user", "select", "group"):
            assert f"{q}{name}{q}" in sql, (dialect, name)


def test_reserved_words_run_in_duckdb_models_and_checks(reserved):
    assert all(a.ok for a in reserved.report.artifacts), [a for a in reserved.report.artifacts if not a.ok]
    design = reserved.design
    con = duckdb.connect()
    load_clean(con, design, reserved.files["storage/ddl.duckdb.sql"])
    for rid, query in split_checks(reserved.files["quality/checks.sql"]):
        assert con.execute(query).fetchall() == [], rid
    by_name = {t.name: t.qualified for t in design.storage.tables}
    for t in design.processing.transformations:
        sql = compile_model(re.sub(r"\{\{\s*ref\('(\w+)'\)\s*\}\}", lambda m: by_name[m.group(1)], t.sql))
        con.execute(f"select * from ({sql}) as m limit 0")


@pytest.mark.parametrize(
    "where, bad",
    [
        ("column", "amount; drop table x"),
        ("column", "a b"),
        ("entity", "../../etc/passwd"),
        ("source", "x'--"),
        ("column", 'q"uote'),
    ],
)
def test_odd_characters_are_rejected_before_sql_or_paths(agent, where, bad):
    r: dict[str, Any] = request()
    if where == "column":
        r["sources"][0]["entities"][0]["columns"].append({"name": bad, "type": "string"})
    elif where == "entity":
        r["sources"][0]["entities"][0]["name"] = bad
    else:
        r["sources"][0]["name"] = bad
    with pytest.raises((ValidationError, ValueError, RequestError)) as err:
        agent.design(r)
    assert "not a valid identifier" in str(err.value)


def test_reserved_words_in_models_use_the_target_dialects_quotes(agent):
    import sqlglot

    from agent.validate import compile_model as compile_

    r = request(targets=[{"warehouse": "bigquery"}])
    r["sources"][0]["entities"] = [{"name": "user", "primary_key": ["order"], "columns": RESERVED}]
    res = agent.design(r)
    model = res.files["processing/models/staging/stg_user.sql"]
    assert "`order`" in model and '"order"' not in model
    body = re.sub(r"\{\{\s*ref\('(\w+)'\)\s*\}\}", r"\1", compile_(model))
    sqlglot.parse_one(body, read="bigquery")
    assert all(a.ok for a in res.report.artifacts), [a for a in res.report.artifacts if not a.ok]
