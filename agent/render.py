"""Render a Design into the bundle: Jinja2 templates -> files, written atomically.

Templates come from the packaged templates/ folder; a user overrides any one by putting a file of the same
relative name in ``--templates DIR``. Undefined variables are errors (StrictUndefined), never empty
strings, and every template renders in Jinja2's sandbox, since user templates are code we did not write.
The bundle is assembled in a temporary directory next to the destination and moved into place, so an
interrupted run leaves the previous bundle intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from agent.errors import OutputError, RenderError
from agent.models import Design, LineageEdge, Table
from agent.quality import ODCS_DIMENSIONS, check_sql, dbt_test
from agent.sqltypes import dialect_type, parse_logical_type

OPENLINEAGE_PRODUCER = "https://github.com/data-agent/data-engineer-agent"
OPENLINEAGE_SCHEMA = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
# Facet versions as in the official schemas; a facet's _schemaURL points at its own $id.
OL_FACET_VERSIONS = {
    "SchemaDatasetFacet": "1-2-0",
    "ColumnLineageDatasetFacet": "1-2-0",
    "OwnershipDatasetFacet": "1-0-1",
    "DocumentationDatasetFacet": "1-1-0",
    "SQLJobFacet": "1-1-0",
    "JobTypeJobFacet": "2-0-4",
}
DIALECTS = ("snowflake", "bigquery", "redshift", "databricks", "postgres", "duckdb")


# Words reserved in at least one supported dialect: quoting them everywhere keeps the DDL portable.
RESERVED = frozenset(
    """
all alter and any array as asc at between both by case cast check collate column constraint create cross
current current_date current_time current_timestamp current_user default delete desc distinct drop else end
except exists false fetch for foreign from full grant group having in inner insert intersect interval into is
join lateral leading left like limit localtime localtimestamp natural not null offset on only or order outer
over partition primary qualify references revoke right rows select session_user set some table tablesample
then to trailing true union unique update user using values when where window with
""".split()
)


def ident(name: str, dialect: str) -> str:
    """An identifier as the dialect writes it, quoted when it is a reserved word or not plain."""
    from sqlglot import exp

    quoted = name.lower() in RESERVED or not re.match(r"^[a-z_][a-z0-9_]*$", name)
    return exp.to_identifier(name, quoted=quoted).sql(dialect=dialect)


def model_sql(sql: str, dialect: str) -> str:
    """Model SQL as the planner writes it (ANSI double-quoted identifiers) for the target dialect: BigQuery
    and Databricks quote identifiers with backticks (a double-quoted word is a string there)."""
    if dialect not in ("bigquery", "databricks"):
        return sql
    return re.sub(r"\"([A-Za-z_][A-Za-z0-9_]*)\"", r"`\1`", sql)


def qualified(table: Table, dialect: str) -> str:
    return f"{ident(table.schema_name, dialect)}.{ident(table.name, dialect)}"


def odcs_type(logical: str) -> str:
    base = parse_logical_type(logical)[0]
    return {
        "integer": "integer",
        "bigint": "integer",
        "smallint": "integer",
        "decimal": "number",
        "float": "number",
        "boolean": "boolean",
        "date": "date",
        "timestamp": "timestamp",
        "timestamptz": "timestamp",
        "json": "object",
    }.get(base, "string")


def table_edges(lineage: list[LineageEdge]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((e.source, e.target) for e in lineage))


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def bytecode_cache(kind: str) -> Any:
    """A Jinja2 bytecode cache in the cache directory, or None when caching is off.

    Compiling the bundle's templates costs ~150 ms per process; loading their bytecode ~5 ms. Jinja2 keys
    each entry by template name and file name and stores the source's sha1 with the code, so an edited
    template (shipped or the user's) is recompiled, never served stale. The directory name carries the
    Jinja2 version and the environment options (``kind``), which the bytecode depends on. Any OSError
    (read-only or full disk) only costs speed.
    """
    import jinja2
    from jinja2.bccache import FileSystemBytecodeCache

    from agent.diskcache import cache_dir

    base = cache_dir()
    if base is None:
        return None
    folder = base / f"jinja-{jinja2.__version__}-{kind}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None

    class _QuietCache(FileSystemBytecodeCache):
        def load_bytecode(self, bucket: Any) -> None:
            try:
                super().load_bytecode(bucket)
            except Exception:  # noqa: BLE001 - a damaged entry is a cold entry
                bucket.reset()

        def dump_bytecode(self, bucket: Any) -> None:
            import contextlib

            with contextlib.suppress(OSError):
                super().dump_bytecode(bucket)

    return _QuietCache(str(folder), "%s.jbc")


# options every template environment shares; part of the bytecode cache's directory name
_ENV_OPTIONS = {"keep_trailing_newline": True, "trim_blocks": True, "lstrip_blocks": True}


@cache
def _environment(user_templates: str | None) -> Any:
    from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    from agent.resources import shipped

    loaders = [FileSystemLoader(user_templates)] if user_templates else []
    loaders.append(FileSystemLoader(str(shipped("templates"))))
    env = SandboxedEnvironment(
        loader=ChoiceLoader(loaders),
        undefined=StrictUndefined,
        autoescape=False,
        bytecode_cache=bytecode_cache("sandbox-strict-trim"),
        auto_reload=True,
        **_ENV_OPTIONS,
    )
    env.filters.update(
        ident=ident,
        dialect_type=dialect_type,
        qualified=qualified,
        model_sql=model_sql,
        sql_literal=sql_literal,
        tojson=lambda v, indent=None: json.dumps(v, indent=indent, sort_keys=False, default=str),
        yaml_str=lambda v: json.dumps(str(v)),
        check_sql=check_sql,
        dbt_test=dbt_test,
        odcs_type=odcs_type,
        odcs_dimension=lambda d: ODCS_DIMENSIONS.get(d, "conformity"),
        table_edges=table_edges,
        node_id=lambda name: re.sub(r"[^A-Za-z0-9_]", "_", name),
    )
    return env


def warm_templates(user_templates: str | None = None) -> None:
    """Load every shipped template (and the prompts) now: from the bytecode cache when it is warm."""
    from agent.resources import shipped

    env = _environment(user_templates)
    root = shipped("templates")
    for path in sorted(root.rglob("*.j2")):
        env.get_template(path.relative_to(root).as_posix())
    from agent.prompts import _environment as prompt_environment

    penv = prompt_environment()
    proot = shipped("prompts")
    for path in sorted(proot.rglob("*.j2")):
        penv.get_template(path.relative_to(proot).as_posix())


def render_template(name: str, context: Mapping[str, Any], user_templates: str | Path | None = None) -> str:
    from jinja2 import TemplateError, TemplateNotFound, UndefinedError

    env = _environment(str(user_templates) if user_templates else None)
    try:
        return env.get_template(name).render(**context)
    except TemplateNotFound:
        raise RenderError(f"template {name!r} not found", path=user_templates or "templates/") from None
    except UndefinedError as exc:
        raise RenderError(f"undefined variable in template: {exc.message}", path=name) from None
    except TemplateError as exc:
        raise RenderError(
            f"template error: {exc}",
            path=getattr(exc, "filename", None) or name,
            line=getattr(exc, "lineno", None),
        ) from None


def design_context(design: Design, **extra: Any) -> dict[str, Any]:
    """The names every deliverable template and prompt sees for a design."""
    return {
        "design": design,
        "request": design.request,
        "dialect": design.storage.warehouse or "duckdb",
        "arch": design.architecture,
        "storage": design.storage,
        "quality": design.quality,
        "docs": design.documentation,
        **extra,
    }


def render_bundle(
    design: Design,
    *,
    delegations: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    user_templates: str | Path | None = None,
) -> dict[str, str]:
    """Every file of the bundle, by relative path. Nothing is written here."""
    ctx = design_context(design, checks=checks, delegations=delegations)
    dialect = ctx["dialect"]
    files: dict[str, str] = {}

    def put(path: str, template: str, **extra: Any) -> None:
        files[path] = render_template(template, {**ctx, **extra}, user_templates)

    put("README.md", "bundle/README.md.j2")
    put("architecture/architecture.md", "architecture/architecture.md.j2")
    put("pipelines/pipelines.yaml", "pipelines/pipelines.yaml.j2")
    for pipeline in design.pipelines:
        put(
            f"pipelines/{pipeline.orchestrator}/{pipeline.name}.py",
            f"pipelines/{pipeline.orchestrator}.py.j2",
            pipeline=pipeline,
        )
    files[f"storage/ddl.{dialect}.sql"] = render_ddl(design, dialect, user_templates, ctx)
    files["storage/ddl.duckdb.sql"] = (
        transpile_ddl(files[f"storage/ddl.{dialect}.sql"], dialect)
        if dialect != "duckdb"
        else files["storage/ddl.duckdb.sql"]
    )
    put("processing/sources.yml", "processing/sources.yml.j2")
    for t in design.processing.transformations:
        table = next(x for x in design.storage.tables if x.qualified == t.target_table)
        put(f"processing/models/{table.layer}/{t.name}.sql", "processing/model.sql.j2", t=t, table=table)
    put("quality/schema.yml", "quality/schema.yml.j2")
    put("quality/checks.sql", "quality/checks.sql.j2")
    for table in design.storage.tables:
        if table.layer in ("core", "mart"):
            put(
                f"contracts/{table.schema_name}.{table.name}.odcs.yaml",
                "contracts/contract.odcs.yaml.j2",
                table=table,
                contract_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{design.id}/{table.qualified}")),
            )
    put("documentation/data_dictionary.md", "documentation/data_dictionary.md.j2")
    put("documentation/lineage.md", "documentation/lineage.md.j2")
    files["documentation/openlineage/events.json"] = json.dumps(openlineage_events(design), indent=2) + "\n"
    files["checks.json"] = json.dumps(checks, indent=2) + "\n"
    files["delegations.json"] = json.dumps(delegations, indent=2) + "\n"
    put("delegations.yaml", "delegations.yaml.j2")
    return files


def render_ddl(
    design: Design,
    dialect: str,
    user_templates: str | Path | None = None,
    context: Mapping[str, Any] | None = None,
) -> str:
    """The storage DDL for any supported dialect (the bundle carries the target's and DuckDB's)."""
    if dialect not in DIALECTS:
        raise RenderError(f"unsupported dialect {dialect!r}; supported: {', '.join(DIALECTS)}")
    ctx = dict(context) if context else design_context(design, dialect=dialect, checks=[], delegations=[])
    return render_template("storage/ddl.sql.j2", {**ctx, "target_dialect": dialect}, user_templates)


@lru_cache(maxsize=32)
def parse_sql(sql: str, dialect: str) -> tuple[Any, ...]:
    """``sqlglot.parse`` memoised on the text: the DDL is parsed once for the DuckDB copy and its check
    reuses the trees (~8 ms a bundle). The trees are shared: read them, or ``.copy()`` before changing."""
    import sqlglot

    return tuple(sqlglot.parse(sql, read=dialect))


@lru_cache(maxsize=32)
def transpile_ddl(sql: str, dialect: str) -> str:
    """A DuckDB copy of the DDL, so the design can be executed locally (memoised: a pure function of the
    text, ~25 ms, and a repeated request or a batch renders the same DDL again)."""
    out = ["-- Transpiled by sqlglot from the " + dialect + " DDL, for local execution in DuckDB."]
    for statement in parse_sql(sql, dialect):
        if statement is None:
            continue
        statement = _strip_physical_properties(statement)
        out.append(statement.sql(dialect="duckdb", pretty=True) + ";")
    return "\n\n".join(out) + "\n"


def _strip_physical_properties(statement: Any) -> Any:
    from sqlglot import exp

    # partitioning, clustering, distribution and table-format options have no DuckDB equivalent
    if not isinstance(statement, exp.Create):
        return statement
    statement = statement.copy()
    statement.set("properties", None)
    # types and constraint options DuckDB does not know: SUPER is semi-structured JSON; NOT ENFORCED keys
    for dtype in list(statement.find_all(exp.DataType)):
        if dtype.this == exp.DataType.Type.SUPER:
            dtype.replace(exp.DataType.build("JSON"))
    for key in statement.find_all(exp.PrimaryKey):
        key.set("options", None)
    for constraint in list(statement.find_all(exp.CommentColumnConstraint)):
        parent = constraint.parent
        constraint.pop()
        if isinstance(parent, exp.ColumnConstraint):
            parent.pop()
    return statement


def openlineage_events(design: Design) -> list[dict[str, Any]]:
    """One COMPLETE RunEvent per transformation, with schema, column lineage and ownership facets."""
    namespace = f"{design.storage.warehouse or design.storage.lake or 'duckdb'}://{design.name}"
    tables = {t.qualified: t for t in design.storage.tables}
    events = []
    for t in design.processing.transformations:
        target = tables[t.target_table]
        fields: dict[str, Any] = {}
        for edge in design.documentation.lineage:
            if edge.target != target.qualified or not edge.target_column or not edge.source_column:
                continue
            entry = fields.setdefault(edge.target_column, {"inputFields": []})
            entry["inputFields"].append(
                {
                    "namespace": namespace,
                    "name": edge.source,
                    "field": edge.source_column,
                    "transformations": [
                        {
                            "type": "DIRECT",
                            "subtype": "IDENTITY"
                            if edge.transformation == "IDENTITY"
                            else ("AGGREGATION" if edge.transformation == "AGGREGATE" else "TRANSFORMATION"),
                            "masking": edge.transformation.startswith("MASK"),
                        }
                    ],
                }
            )
        run_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{design.id}/{t.name}"))
        events.append(
            {
                "eventType": "COMPLETE",
                "eventTime": "2026-01-01T00:00:00Z",
                "producer": OPENLINEAGE_PRODUCER,
                "schemaURL": OPENLINEAGE_SCHEMA,
                "run": {"runId": run_id},
                "job": {
                    "namespace": namespace,
                    "name": f"{design.name}.{t.name}",
                    "facets": {
                        "sql": _facet("SQLJobFacet", query=t.sql),
                        "jobType": _facet(
                            "JobTypeJobFacet",
                            processingType="STREAMING"
                            if design.architecture.pattern in ("kappa", "streaming")
                            else "BATCH",
                            integration="DBT",
                            jobType="MODEL",
                        ),
                    },
                },
                "inputs": [_dataset(namespace, tables[i]) for i in t.inputs if i in tables],
                "outputs": [_dataset(namespace, target, column_lineage=fields)],
            }
        )
    return events


def _facet(name: str, **body: Any) -> dict[str, Any]:
    v = OL_FACET_VERSIONS[name]
    return {
        "_producer": OPENLINEAGE_PRODUCER,
        "_schemaURL": f"https://openlineage.io/spec/facets/{v}/{name}.json#/$defs/{name}",
        **body,
    }


def _dataset(namespace: str, table: Table, column_lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    facets: dict[str, Any] = {
        "schema": _facet(
            "SchemaDatasetFacet",
            fields=[
                {"name": c.name, "type": c.type, **({"description": c.description} if c.description else {})}
                for c in table.columns
            ],
        ),
        "ownership": _facet(
            "OwnershipDatasetFacet", owners=[{"name": f"team:{table.owner}", "type": "OWNER"}]
        ),
    }
    if table.description:
        facets["documentation"] = _facet("DocumentationDatasetFacet", description=table.description)
    if column_lineage:
        facets["columnLineage"] = _facet("ColumnLineageDatasetFacet", fields=column_lineage)
    return {"namespace": namespace, "name": table.qualified, "facets": facets}


# ---------------------------------------------------------------------------------------------------
# Writing


def check_writable(out: Path) -> None:
    """Fail before any work is done if the bundle cannot be written where asked.

    The bundle is swapped into place by renames in ``out.parent``, so that is the directory that must be
    writable. An existing directory is replaced only if it is empty or a previous data-agent bundle: a
    user's own folder (``--out .``, ``--out ~/project``) is never moved away and deleted.
    """
    if out.exists() and not out.is_dir():
        raise OutputError("--out exists and is not a directory", path=out)
    if out.is_dir() and not _replaceable(out):
        raise OutputError(
            "--out is a non-empty directory that is not a data-agent bundle; refusing to replace it",
            path=out,
            hint="choose a new or empty directory",
        )
    probe = out.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"--out cannot be created: {probe} is a file, not a directory", path=out)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"--out cannot be written: {probe} is not writable", path=out)


def _replaceable(folder: Path) -> bool:
    """Empty, or a bundle this tool wrote before (its manifest says so)."""
    try:
        if not any(folder.iterdir()):
            return True
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("tool") == "data-agent"


def write_bundle(out: Path, files: Mapping[str, str]) -> Path:
    """Write every file into a temporary sibling directory, then swap it into place."""
    out = out.resolve()
    check_writable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"cannot write the bundle: {exc.strerror}", path=out) from None
    try:
        for rel, content in files.items():
            path = (staging / rel).resolve()
            if staging not in path.parents:
                raise OutputError("refusing to write outside the bundle", path=rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _swap_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        os.rename(staging, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)  # both renames are atomic; between them `out` briefly does not exist
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
