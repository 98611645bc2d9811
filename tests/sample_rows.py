"""Sample rows for a Design's tables, and bad rows planted to break each quality rule.

Clean rows are derived from the Design alone: the value of a column depends only on its name, type and
row number, so a foreign key (same column name in parent and child) always finds its parent row. Rules
shape the values: ranges stay inside their bounds, regex and accepted-values columns get a matching value,
SCD2 tables have exactly one current version per key, and timestamps are fresh.

Warehouses (Snowflake, BigQuery, Redshift, Databricks) do not enforce primary keys, and a bad load is what
the checks exist to catch, so the tables are created without constraints (``relaxed_ddl``) before rows are
planted.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from agent.models import Design, QualityRule, Table
from agent.quality import quoted, quoted_table
from agent.sqltypes import parse_logical_type

ROWS = 3
# a value that matches each regex the planner emits; a new pattern must be added here
REGEX_SAMPLES = {"^[A-Z]{3}$": "USD", r"^[A-Z]{2}$": "US"}


q = quoted  # identifiers exactly as the generated checks write them
qt = quoted_table


def relaxed_ddl(duckdb_sql: str) -> str:
    """The DuckDB DDL without primary keys and NOT NULL, as in a warehouse that does not enforce them."""
    import sqlglot
    from sqlglot import exp

    out = []
    for statement in sqlglot.parse(duckdb_sql, read="duckdb"):
        if statement is None:
            continue
        for node in list(statement.find_all(exp.PrimaryKey, exp.NotNullColumnConstraint)):
            parent = node.parent
            node.pop()
            if isinstance(parent, (exp.ColumnConstraint, exp.Constraint)):
                parent.pop()
        for node in list(statement.find_all(exp.PrimaryKeyColumnConstraint)):
            node.parent.pop()
        out.append(statement.sql(dialect="duckdb") + ";")
    return "\n".join(out)


def _now() -> dt.datetime:
    return dt.datetime.now().replace(microsecond=0) - dt.timedelta(minutes=1)


def value(column: str, logical: str, i: int, rules: list[QualityRule]) -> Any:
    base, precision, scale = parse_logical_type(logical)
    for r in rules:
        if r.check == "regex":
            return REGEX_SAMPLES[r.params["pattern"]]
        if r.check == "accepted_values":
            return r.params["values"][i % len(r.params["values"])]
    if column == "is_current":
        return True
    if base in ("integer", "bigint", "smallint"):
        top = min(
            (float(r.params["max"]) for r in rules if r.check == "range" and "max" in r.params), default=1e9
        )
        return int(min(i, top))
    if base in ("decimal", "float"):
        return round(min(i + 0.5, 10 ** (precision - scale) - 1), scale)
    if base == "boolean":
        return True
    if base == "date":
        return _now().date()
    if base in ("timestamp", "timestamptz"):
        return _now()
    if base == "json":
        return '{"k": 1}'
    if base == "uuid":
        return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{column}/{i}"))
    if base == "binary":
        return b"x"
    return f"{column}_{i}"


def missing_value(logical: str) -> Any:
    """A value no parent row has."""
    base = parse_logical_type(logical)[0]
    if base in ("integer", "bigint", "smallint"):
        return 9999
    if base == "uuid":
        return str(uuid.uuid4())
    return "no_such_parent"


def rules_for(design: Design, table: Table, column: str) -> list[QualityRule]:
    return [r for r in design.quality.rules if r.table == table.qualified and r.column == column]


def row(design: Design, table: Table, i: int) -> dict[str, Any]:
    return {c.name: value(c.name, c.type, i, rules_for(design, table, c.name)) for c in table.columns}


def insert(con: Any, table: Table, rows: list[dict[str, Any]]) -> None:
    cols = [c.name for c in table.columns]
    sql = (
        f"insert into {qt(table.qualified)} ({', '.join(q(c) for c in cols)}) "
        f"values ({', '.join('?' for _ in cols)})"
    )
    con.executemany(sql, [[r[c] for c in cols] for r in rows])


def load_clean(con: Any, design: Design, duckdb_ddl: str) -> None:
    con.execute(relaxed_ddl(duckdb_ddl))
    for table in design.storage.tables:
        insert(con, table, [row(design, table, i) for i in range(1, ROWS + 1)])


def plant(con: Any, design: Design, rule: QualityRule) -> str:
    """Change the clean data so that ``rule`` must fail; returns what was planted."""
    table = next(t for t in design.storage.tables if t.qualified == rule.table)
    t, c = qt(table.qualified), q(rule.column) if rule.column else None
    col = next((x for x in table.columns if x.name == rule.column), None)
    bad = row(design, table, ROWS + 1)
    p = rule.params
    if rule.check == "not_null":
        bad[rule.column] = None
    elif rule.check == "unique":
        bad[rule.column] = row(design, table, 1)[rule.column]
    elif rule.check == "scd2_one_current":
        bad[rule.column] = row(design, table, 1)[rule.column]
        bad[p.get("flag", "is_current")] = True
    elif rule.check == "range":
        bad[rule.column] = float(p["min"]) - 1 if "min" in p else float(p["max"]) + 1
    elif rule.check == "regex":
        bad[rule.column] = "not-a-match!"
    elif rule.check == "accepted_values":
        bad[rule.column] = "__not_accepted__"
    elif rule.check == "relationships":
        bad[rule.column] = missing_value(col.type)
    elif rule.check == "freshness":
        stale = _now() - dt.timedelta(minutes=int(p.get("max_age_minutes", 60)) + 24 * 60)
        con.execute(
            f"update {t} set {c} = ?", [stale.date() if parse_logical_type(col.type)[0] == "date" else stale]
        )
        return f"every {rule.column} older than the SLA"
    elif rule.check == "row_count":
        con.execute(f"delete from {t}")
        return "no rows"
    else:
        raise AssertionError(f"no planted row for check {rule.check!r}")
    insert(con, table, [bad])
    return f"{rule.column}={bad.get(rule.column)!r}"
