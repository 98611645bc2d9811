"""Executable quality checks: one SQL query per rule that returns the rows violating it.

A check passes when its query returns no rows (dbt's singular-test convention). The SQL is written for
DuckDB, which runs it on sample rows in the tests, and transpiled by sqlglot to the target dialect.
"""

from __future__ import annotations

from agent.models import QualityRule

ODCS_DIMENSIONS = {
    "completeness": "completeness",
    "uniqueness": "uniqueness",
    "validity": "conformity",
    "consistency": "consistency",
    "accuracy": "accuracy",
    "timeliness": "timeliness",
}


def quoted(name: str) -> str:
    """An identifier as DuckDB (and the checks) write it."""
    from agent.render import ident

    return ident(name, "duckdb")


def quoted_table(qualified: str) -> str:
    schema, table = qualified.split(".", 1)
    return f"{quoted(schema)}.{quoted(table)}"


def check_sql(rule: QualityRule) -> str:
    t, c = quoted_table(rule.table), quoted(rule.column) if rule.column else None
    p = rule.params
    if rule.check == "not_null":
        return f"select * from {t} where {c} is null"
    if rule.check == "unique":
        return f"select {c}, count(*) as n from {t} where {c} is not null group by {c} having count(*) > 1"
    if rule.check == "scd2_one_current":
        flag = quoted(str(p.get("flag", "is_current")))
        return (
            f"select {c}, count(*) filter (where {flag}) as current_versions from {t} group by {c} "
            f"having count(*) filter (where {flag}) <> 1"
        )
    if rule.check == "range":
        conds = []
        if "min" in p:
            conds.append(f"{c} < {float(p['min'])!r}")
        if "max" in p:
            conds.append(f"{c} > {float(p['max'])!r}")
        return f"select * from {t} where {' or '.join(conds) or 'false'}"
    if rule.check == "regex":
        pattern = str(p["pattern"]).replace("'", "''")
        return f"select * from {t} where {c} is not null and not regexp_matches({c}, '{pattern}')"
    if rule.check == "accepted_values":
        values = ", ".join("'" + str(v).replace("'", "''") + "'" for v in p["values"])
        return f"select * from {t} where {c} is not null and {c} not in ({values})"
    if rule.check == "relationships":
        return (
            f"select child.* from {t} as child where child.{c} is not null and not exists "
            f"(select 1 from {quoted_table(str(p['to']))} as parent where parent.{quoted(str(p['field']))} = child.{c})"
        )
    if rule.check == "freshness":
        minutes = int(p.get("max_age_minutes", 60))
        return (
            f"select max({c}) as newest from {t} having max({c}) < "
            f"current_timestamp::timestamp - interval '{minutes} minutes'"
        )
    if rule.check == "row_count":
        return f"select count(*) as n from {t} having count(*) < {int(p.get('min', 1))}"
    raise ValueError(f"no SQL for check {rule.check!r}")


def dbt_test(rule: QualityRule) -> dict | str | None:
    """The rule as a dbt data test entry (dbt 1.10+ style with ``arguments``), or None if column-less."""
    p = rule.params
    if rule.check in ("not_null", "unique"):
        return rule.check
    if rule.check == "scd2_one_current":
        return {"unique": {"config": {"where": str(p.get("flag", "is_current"))}}}
    if rule.check == "range":
        args = {}
        if "min" in p:
            args["min_value"] = p["min"]
        if "max" in p:
            args["max_value"] = p["max"]
        return {"dbt_utils.accepted_range": {"arguments": args}}
    if rule.check == "regex":
        return {
            "dbt_expectations.expect_column_values_to_match_regex": {"arguments": {"regex": p["pattern"]}}
        }
    if rule.check == "accepted_values":
        return {"accepted_values": {"arguments": {"values": list(p["values"])}}}
    if rule.check == "relationships":
        schema_table = str(p["to"]).split(".", 1)[1]
        return {"relationships": {"arguments": {"to": f"ref('{schema_table}')", "field": p["field"]}}}
    return None
