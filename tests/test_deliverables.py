"""Every deliverable of every example, checked by the tool of its format.

Each example in examples/ is designed once per session (offline, no memory) and every artifact goes through
its checker: sqlglot (no generic Command fallbacks) for the DDL in all five warehouse dialects, DuckDB for
the transpiled copy, strict column resolution for the processing SQL, DuckDB on generated sample rows for
the quality checks (all pass on clean rows, each fails on a row planted to break it), the official JSON
Schemas for dbt, ODCS and OpenLineage, ast + ruff for the orchestrator code, and a structural check for
the Mermaid diagrams.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import duckdb
import pytest
import sqlglot
from sample_rows import load_clean, plant, qt, relaxed_ddl

from agent import DataEngineerAgent
from agent.errors import RenderError
from agent.render import render_ddl, render_template, transpile_ddl
from agent.validate import (
    check_ddl,
    check_mermaid,
    check_models,
    check_schemas,
    compile_model,
    mermaid_problems,
    split_checks,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO.parent / "shared" / "schemas"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
WAREHOUSE_DIALECTS = ("snowflake", "bigquery", "redshift", "databricks", "postgres")
IDS = [p.stem for p in EXAMPLES]


@cache
def designed(path: Path):
    return DataEngineerAgent(use_memory=False, remember=False).design(path)


@pytest.fixture(params=EXAMPLES, ids=IDS)
def result(request):
    return designed(request.param)


def test_enough_distinct_examples():
    assert len(EXAMPLES) >= 8
    kinds = {designed(p).design.request.sources[0].kind for p in EXAMPLES}
    assert len(kinds) >= 6


def test_every_artifact_check_passes(result):
    bad = [a for a in result.report.artifacts if not a.ok]
    assert not bad, bad


# -- storage ------------------------------------------------------------------------------------------


def test_ddl_parses_in_target_dialect_without_command_fallback(result):
    dialect = result.design.storage.warehouse or "duckdb"
    sql = result.files[f"storage/ddl.{dialect}.sql"]
    check = check_ddl("ddl", sql, dialect)
    assert check.ok, check.message
    statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    assert not [s for s in statements if isinstance(s, sqlglot.exp.Command)]
    creates = [s for s in statements if isinstance(s, sqlglot.exp.Create) and s.kind == "TABLE"]
    assert len(creates) == len(result.design.storage.tables)


@pytest.mark.parametrize("dialect", WAREHOUSE_DIALECTS)
def test_ddl_renders_and_parses_in_every_warehouse_dialect(result, dialect):
    sql = render_ddl(result.design, dialect)
    check = check_ddl(f"ddl.{dialect}.sql", sql, dialect)
    assert check.ok, check.message
    con = duckdb.connect()
    con.execute(transpile_ddl(sql, dialect))  # the transpiled copy of each dialect runs too
    n = con.execute("select count(*) from duckdb_tables() where not internal").fetchone()[0]
    assert n == len(result.design.storage.tables)


def test_transpiled_duckdb_copy_executes(result):
    con = duckdb.connect()
    con.execute(result.files["storage/ddl.duckdb.sql"])
    for table in result.design.storage.tables:
        cols = {r[0] for r in con.execute(f"describe {qt(table.qualified)}").fetchall()}
        assert cols == {c.name for c in table.columns}


def test_unsupported_dialect_is_a_render_error(result):
    with pytest.raises(RenderError, match="supported: snowflake"):
        render_ddl(result.design, "oracle")


# -- processing ---------------------------------------------------------------------------------------


def test_processing_sql_references_only_ddl_columns(result):
    dialect = result.design.storage.warehouse or "duckdb"
    checks = check_models(result.design, result.files, dialect)
    assert len(checks) == len(result.design.processing.transformations)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_processing_sql_binds_in_duckdb(result):
    """Every model, compiled (ref/source resolved), runs against the DuckDB tables."""
    design = result.design
    by_name = {t.name: t.qualified for t in design.storage.tables}
    con = duckdb.connect()
    con.execute(result.files["storage/ddl.duckdb.sql"])
    for t in design.processing.transformations:
        sql = compile_model(re.sub(r"\{\{\s*ref\('(\w+)'\)\s*\}\}", lambda m: by_name[m.group(1)], t.sql))
        con.execute(f"select * from ({sql}) as model limit 0")


def test_planted_wrong_column_is_caught(result):
    design = result.design.model_copy(deep=True)
    dialect = design.storage.warehouse or "duckdb"
    for t in design.processing.transformations:
        t.sql = re.sub(r"\bselect(\s+distinct)?\b", r"select\1 no_such_column,", t.sql, count=1)
    checks = check_models(design, result.files, dialect)
    assert checks and not any(c.ok for c in checks)
    assert all("no_such_column" in c.message for c in checks)


def test_planted_wrong_qualified_column_is_caught(result):
    design = result.design.model_copy(deep=True)
    t = design.processing.transformations[0]
    t.sql = t.sql.replace("_rn = 1", "latest.not_a_column = 1")
    check = check_models(design, result.files, "duckdb")[0]
    assert not check.ok and "not_a_column" in check.message


# -- quality ------------------------------------------------------------------------------------------


def test_quality_checks_pass_on_clean_rows_and_fail_on_planted_rows(result):
    design = result.design
    checks = dict(split_checks(result.files["quality/checks.sql"]))
    assert set(checks) == {r.id for r in design.quality.rules}
    dimensions = {r.dimension for r in design.quality.rules}
    assert {"completeness", "timeliness"} <= dimensions
    con = duckdb.connect()
    load_clean(con, design, result.files["storage/ddl.duckdb.sql"])
    dirty = {rid: con.execute(q).fetchall() for rid, q in checks.items()}
    assert not {k: v for k, v in dirty.items() if v}, "checks fail on clean rows"
    not_caught = []
    for rule in design.quality.rules:
        con.execute("begin transaction")
        planted = plant(con, design, rule)
        if not con.execute(checks[rule.id]).fetchall():
            not_caught.append(f"{rule.id}: {planted}")
        con.execute("rollback")
    assert not not_caught


def test_relaxed_ddl_drops_constraints_only():
    sql = 'create table a.b (x integer not null, "order" varchar, primary key (x));'
    relaxed = relaxed_ddl(sql)
    assert "NOT NULL" not in relaxed.upper() and "PRIMARY" not in relaxed.upper() and '"order"' in relaxed


# -- structured artifacts against the official schemas ------------------------------------------------


def test_structured_artifacts_validate_against_official_schemas(result):
    if not SCHEMAS.is_dir():
        pytest.skip(f"official schemas not found at {SCHEMAS}")
    checks = check_schemas(result.files, SCHEMAS)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    checked = {c.path for c in checks}
    assert {
        "quality/schema.yml",
        "processing/sources.yml",
        "documentation/openlineage/events.json",
    } <= checked
    assert any(p.endswith(".odcs.yaml") for p in checked)
    assert {c.checker for c in checks} >= {
        "jsonschema[dbt]",
        "jsonschema[odcs-3.1.0]",
        "jsonschema[openlineage]",
    }


def test_schema_check_catches_a_broken_contract(result):
    if not SCHEMAS.is_dir():
        pytest.skip(f"official schemas not found at {SCHEMAS}")
    path = next(p for p in result.files if p.endswith(".odcs.yaml"))
    broken = {path: result.files[path].replace("apiVersion:", "apiVersionX:", 1)}
    assert not check_schemas(broken, SCHEMAS)[0].ok


# -- orchestrator code --------------------------------------------------------------------------------


def test_every_orchestrator_is_exercised():
    used = {p.orchestrator for path in EXAMPLES for p in designed(path).design.pipelines}
    assert used == {"airflow", "dagster", "prefect"}


def test_orchestrator_code_compiles_and_passes_ruff(result, tmp_path):
    code = {p: c for p, c in result.files.items() if p.startswith("pipelines/") and p.endswith(".py")}
    assert len(code) == len(result.design.pipelines)
    for rel, source in code.items():
        compile(source, rel, "exec")
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(source)
    ruff = shutil.which("ruff")
    cmd = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    proc = subprocess.run(
        [*cmd, "check", "--isolated", "--no-cache", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- diagrams -----------------------------------------------------------------------------------------


def test_mermaid_diagrams_are_well_formed(result):
    for path in ("architecture/architecture.md", "documentation/lineage.md"):
        check = check_mermaid(path, result.files[path])
        assert check.ok, check.message
    component_ids = {c.name for c in result.design.architecture.components}
    diagram = result.files["architecture/architecture.md"]
    for flow in result.design.architecture.flows:
        assert flow.source in component_ids and flow.target in component_ids
        assert re.search(rf"^\s*{flow.source} -->", diagram, flags=re.M)


@pytest.mark.parametrize(
    "diagram, problem",
    [
        ('graph XY\n  a["x"]', "first line"),
        ('flowchart LR\n  a["x"] --> b', "not declared"),
        ('flowchart LR\n  a["x] --> b["y"]', "unbalanced quotes"),
        ("flowchart LR\n  a[x --> b[y]", "bad node"),
        ('flowchart LR\n  a-b["x"]', "bad node"),
        ('flowchart LR\n  a["x"]\n  b["y"]\n  a -->|"ok"| b', None),
    ],
)
def test_mermaid_checker_catches_malformed_diagrams(diagram, problem):
    problems = mermaid_problems(diagram)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


# -- templates ----------------------------------------------------------------------------------------


def test_user_template_overrides_the_shipped_one(tmp_path):
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "ddl.sql.j2").write_text(
        "-- custom DDL for {{ design.name }}\nCREATE SCHEMA IF NOT EXISTS custom;\n"
    )
    agent = DataEngineerAgent(use_memory=False, remember=False, templates=tmp_path)
    res = agent.design(EXAMPLES[0], out=tmp_path / "bundle")
    dialect = res.design.storage.warehouse or "duckdb"
    written = (tmp_path / "bundle" / "storage" / f"ddl.{dialect}.sql").read_text()
    assert written.startswith(f"-- custom DDL for {res.design.name}")
    # templates not overridden still come from the package
    assert (
        (tmp_path / "bundle" / "quality" / "checks.sql")
        .read_text()
        .startswith("-- Executable quality checks")
    )


def test_undefined_variable_is_a_render_error_not_an_empty_string(tmp_path):
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "ddl.sql.j2").write_text("CREATE SCHEMA {{ no_such_variable }};\n")
    with pytest.raises(RenderError, match="no_such_variable"):
        render_template("storage/ddl.sql.j2", {}, tmp_path)
    with pytest.raises(RenderError, match="undefined"):
        render_template("storage/ddl.sql.j2", {"design": None}, None)
    agent = DataEngineerAgent(use_memory=False, remember=False, templates=tmp_path)
    with pytest.raises(RenderError):
        agent.design(EXAMPLES[0], out=tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()  # nothing half-written
