"""Logical column types and how each warehouse dialect spells them.

Data-driven like sqlglot's dialects: one table per dialect, no branching in templates.
"""

from __future__ import annotations

import re

LOGICAL = (
    "string",
    "integer",
    "bigint",
    "smallint",
    "decimal",
    "float",
    "boolean",
    "date",
    "timestamp",
    "timestamptz",
    "json",
    "uuid",
    "binary",
)

ALIASES = {
    "text": "string",
    "varchar": "string",
    "str": "string",
    "char": "string",
    "int": "integer",
    "int4": "integer",
    "int8": "bigint",
    "long": "bigint",
    "int2": "smallint",
    "numeric": "decimal",
    "number": "decimal",
    "money": "decimal",
    "double": "float",
    "real": "float",
    "float8": "float",
    "float4": "float",
    "bool": "boolean",
    "datetime": "timestamp",
    "timestamp_ntz": "timestamp",
    "timestamp_tz": "timestamptz",
    "jsonb": "json",
    "variant": "json",
    "bytes": "binary",
}

_DECIMAL = re.compile(r"^(decimal|numeric|number)\s*(\(\s*(\d{1,2})\s*(,\s*(\d{1,2})\s*)?\))?$")

DIALECT_TYPES: dict[str, dict[str, str]] = {
    "snowflake": {
        "string": "VARCHAR",
        "integer": "INTEGER",
        "bigint": "BIGINT",
        "smallint": "SMALLINT",
        "decimal": "NUMBER({p},{s})",
        "float": "FLOAT",
        "boolean": "BOOLEAN",
        "date": "DATE",
        "timestamp": "TIMESTAMP_NTZ",
        "timestamptz": "TIMESTAMP_TZ",
        "json": "VARIANT",
        "uuid": "VARCHAR(36)",
        "binary": "BINARY",
    },
    "bigquery": {
        "string": "STRING",
        "integer": "INT64",
        "bigint": "INT64",
        "smallint": "INT64",
        "decimal": "NUMERIC({p},{s})",
        "float": "FLOAT64",
        "boolean": "BOOL",
        "date": "DATE",
        "timestamp": "DATETIME",
        "timestamptz": "TIMESTAMP",
        "json": "JSON",
        "uuid": "STRING",
        "binary": "BYTES",
    },
    "redshift": {
        "string": "VARCHAR(65535)",
        "integer": "INTEGER",
        "bigint": "BIGINT",
        "smallint": "SMALLINT",
        "decimal": "DECIMAL({p},{s})",
        "float": "DOUBLE PRECISION",
        "boolean": "BOOLEAN",
        "date": "DATE",
        "timestamp": "TIMESTAMP",
        "timestamptz": "TIMESTAMPTZ",
        "json": "SUPER",
        "uuid": "VARCHAR(36)",
        "binary": "VARBYTE",
    },
    "databricks": {
        "string": "STRING",
        "integer": "INT",
        "bigint": "BIGINT",
        "smallint": "SMALLINT",
        "decimal": "DECIMAL({p},{s})",
        "float": "DOUBLE",
        "boolean": "BOOLEAN",
        "date": "DATE",
        "timestamp": "TIMESTAMP_NTZ",
        "timestamptz": "TIMESTAMP",
        "json": "STRING",
        "uuid": "STRING",
        "binary": "BINARY",
    },
    "postgres": {
        "string": "TEXT",
        "integer": "INTEGER",
        "bigint": "BIGINT",
        "smallint": "SMALLINT",
        "decimal": "NUMERIC({p},{s})",
        "float": "DOUBLE PRECISION",
        "boolean": "BOOLEAN",
        "date": "DATE",
        "timestamp": "TIMESTAMP",
        "timestamptz": "TIMESTAMPTZ",
        "json": "JSONB",
        "uuid": "UUID",
        "binary": "BYTEA",
    },
    "duckdb": {
        "string": "VARCHAR",
        "integer": "INTEGER",
        "bigint": "BIGINT",
        "smallint": "SMALLINT",
        "decimal": "DECIMAL({p},{s})",
        "float": "DOUBLE",
        "boolean": "BOOLEAN",
        "date": "DATE",
        "timestamp": "TIMESTAMP",
        "timestamptz": "TIMESTAMPTZ",
        "json": "JSON",
        "uuid": "UUID",
        "binary": "BLOB",
    },
}


def parse_logical_type(text: str) -> tuple[str, int, int]:
    """Return (logical type, precision, scale). Raises ValueError naming the known types."""
    raw = text.strip().lower()
    if m := _DECIMAL.match(raw):
        return "decimal", int(m.group(3) or 18), int(m.group(5) or (2 if m.group(3) is None else 0))
    base = re.sub(r"\(.*\)$", "", raw).strip()
    base = ALIASES.get(base, base)
    if base not in LOGICAL:
        raise ValueError(f"unknown column type {text!r}; known: {', '.join(LOGICAL)} (or decimal(p,s))")
    return base, 18, 2


def dialect_type(logical: str, dialect: str) -> str:
    base, precision, scale = parse_logical_type(logical)
    return DIALECT_TYPES[dialect][base].format(p=precision, s=scale)
