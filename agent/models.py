"""The types that flow through the stages.

One model serves three purposes: it validates input, it is the JSON Schema Claude fills through a
forced tool call, and it is the input schema of the MCP tools. Inputs forbid unknown fields so a typo in
a request file is an error with its line, not a silently ignored key.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# ---------------------------------------------------------------------------------------------------
# Vocabulary. Data-driven: planner, renderer and checks look these up instead of branching on strings.

SOURCE_KINDS: tuple[str, ...] = (
    "postgres",
    "mysql",
    "sqlserver",
    "oracle",
    "mongodb",
    "cassandra",
    "dynamodb",
    "rest_api",
    "saas",
    "files",
    "s3",
    "kafka",
    "kinesis",
    "iot",
    "influxdb",
    "timescaledb",
)
OLTP_SOURCES = frozenset({"postgres", "mysql", "sqlserver", "oracle"})
STREAM_SOURCES = frozenset({"kafka", "kinesis", "iot"})
API_SOURCES = frozenset({"rest_api", "saas"})
FILE_SOURCES = frozenset({"files", "s3"})

WAREHOUSES: tuple[str, ...] = ("snowflake", "bigquery", "redshift", "databricks", "postgres", "duckdb")
LAKES: tuple[str, ...] = ("s3", "adls", "gcs")
TABLE_FORMATS: tuple[str, ...] = ("delta", "iceberg", "parquet")
ORCHESTRATORS: tuple[str, ...] = ("airflow", "dagster", "prefect")
COMPLIANCE_REGIMES: tuple[str, ...] = ("gdpr", "hipaa", "pci", "ccpa", "sox")
SUBAGENTS: tuple[str, ...] = (
    "security-engineer",
    "devops-engineer",
    "qa-engineer",
    "developer",
    "genai-engineer",
)

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")

Identifier = Annotated[
    str,
    Field(
        pattern=IDENTIFIER.pattern,
        description="A SQL-safe identifier: a letter or underscore, then letters, digits, underscores (max 63).",
    ),
]


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return (slug or "design")[:60]


class Model(BaseModel):
    # Each model's validator is built on its first use instead of at import: ``import agent.models`` drops
    # from ~26 to ~11 ms, and the memory process, which uses three of these models, never builds the rest.
    model_config = ConfigDict(defer_build=True)


class InputModel(Model):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# ---------------------------------------------------------------------------------------------------
# The request


class Column(InputModel):
    name: Identifier
    type: str = Field(
        default="string",
        description="Logical type: string, integer, bigint, decimal(p,s), "
        "boolean, date, timestamp, json, float.",
    )
    pii: bool = Field(default=False, description="Personal data: must be masked or encrypted downstream.")
    nullable: bool = True
    description: str = ""

    @field_validator("type")
    @classmethod
    def _type_is_known(cls, value: str) -> str:
        from agent.sqltypes import parse_logical_type

        parse_logical_type(value)
        return value.lower()


# Postgres's hard limit; wider entities are a modelling problem, and checking before validation keeps a
# hostile 100,000-column request from costing minutes.
MAX_COLUMNS = 1600
MAX_ENTITIES = 200


class Entity(InputModel):
    name: Identifier
    columns: list[Column] = Field(default_factory=list)
    primary_key: list[Identifier] = Field(default_factory=list)
    description: str = ""
    rows: int | None = Field(default=None, ge=0, description="Current row count, if known.")

    @field_validator("columns", mode="before")
    @classmethod
    def _column_limit(cls, value: object) -> object:
        if isinstance(value, list) and len(value) > MAX_COLUMNS:
            raise ValueError(f"{len(value):,} columns is over the limit of {MAX_COLUMNS:,} per entity")
        return value

    @model_validator(mode="after")
    def _keys_exist(self) -> Entity:
        names = {c.name for c in self.columns}
        missing = [k for k in self.primary_key if self.columns and k not in names]
        if missing:
            raise ValueError(f"primary_key names columns that are not defined: {', '.join(missing)}")
        seen: set[str] = set()
        for c in self.columns:
            if c.name.lower() in seen:
                raise ValueError(f"column {c.name!r} is defined twice")
            seen.add(c.name.lower())
        return self


class Volume(InputModel):
    rows_per_day: int | None = Field(default=None, ge=0)
    gb_per_day: float | None = Field(default=None, ge=0)
    events_per_second: float | None = Field(default=None, ge=0)


class Source(InputModel):
    name: Identifier
    kind: str = Field(description="One of: " + ", ".join(SOURCE_KINDS))
    entities: list[Entity] = Field(default_factory=list, max_length=MAX_ENTITIES)
    volume: Volume = Field(default_factory=Volume)
    change_rate: str | None = Field(default=None, description="How often rows change, e.g. '5% daily'.")
    connection: str | None = Field(default=None, description="Connection string; secrets are redacted.")
    description: str = ""

    @field_validator("kind")
    @classmethod
    def _kind_is_known(cls, value: str) -> str:
        value = value.lower()
        if value not in SOURCE_KINDS:
            raise ValueError(f"unknown source kind {value!r}; known kinds: {', '.join(SOURCE_KINDS)}")
        return value

    @field_validator("connection")
    @classmethod
    def _redact(cls, value: str | None) -> str | None:
        from agent.redact import redact

        return redact(value) if value else value


class Target(InputModel):
    warehouse: str | None = Field(default=None, description="One of: " + ", ".join(WAREHOUSES))
    lake: str | None = Field(default=None, description="One of: " + ", ".join(LAKES))
    table_format: str | None = Field(default=None, description="One of: " + ", ".join(TABLE_FORMATS))

    @field_validator("warehouse")
    @classmethod
    def _warehouse_known(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower()
        if value not in WAREHOUSES:
            raise ValueError(f"unsupported warehouse {value!r}; supported: {', '.join(WAREHOUSES)}")
        return value

    @field_validator("lake")
    @classmethod
    def _lake_known(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower()
        if value not in LAKES:
            raise ValueError(f"unsupported lake {value!r}; supported: {', '.join(LAKES)}")
        return value

    @field_validator("table_format")
    @classmethod
    def _format_known(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower()
        if value not in TABLE_FORMATS:
            raise ValueError(f"unsupported table format {value!r}; supported: {', '.join(TABLE_FORMATS)}")
        return value

    @model_validator(mode="after")
    def _something(self) -> Target:
        if not self.warehouse and not self.lake:
            raise ValueError("a target needs a warehouse or a lake")
        return self


class Constraints(InputModel):
    orchestrator: str | None = Field(default=None, description="One of: " + ", ".join(ORCHESTRATORS))
    cloud: Literal["aws", "gcp", "azure"] | None = None
    budget_usd_month: float | None = Field(default=None, ge=0)
    modelling: Literal["kimball", "data_vault", "one_big_table"] | None = None

    @field_validator("orchestrator")
    @classmethod
    def _orchestrator_known(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower()
        if value not in ORCHESTRATORS:
            raise ValueError(f"unsupported orchestrator {value!r}; supported: {', '.join(ORCHESTRATORS)}")
        return value


class DesignRequest(InputModel):
    """What a data engineer asks for. Every inference made while parsing is listed in ``assumptions``."""

    name: str = Field(description="Short slug for the design: lowercase letters, digits, - and _.")
    goal: str = Field(min_length=1, max_length=20_000)
    domain: str = Field(default="general", max_length=80)
    owner: str = Field(default="data-platform", max_length=120)
    sources: list[Source] = Field(min_length=1)
    targets: list[Target] = Field(min_length=1)
    freshness: str = Field(default="daily", description="SLA: 'real-time', '5m', '15m', 'hourly', 'daily'...")
    consumers: list[str] = Field(default_factory=list, description="BI tools, ML, APIs, reverse ETL ...")
    compliance: list[str] = Field(default_factory=list)
    constraints: Constraints = Field(default_factory=Constraints)
    growth_factor: float = Field(default=10.0, gt=0, le=10_000)
    assumptions: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError(
                "name must be a slug (lowercase letters, digits, '-' and '_', starting with a letter or digit)"
            )
        return value

    @field_validator("compliance")
    @classmethod
    def _compliance_known(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            item = item.lower()
            if item not in COMPLIANCE_REGIMES:
                raise ValueError(
                    f"unknown compliance regime {item!r}; known: {', '.join(COMPLIANCE_REGIMES)}"
                )
            out.append(item)
        return out

    @field_validator("freshness")
    @classmethod
    def _freshness_parses(cls, value: str) -> str:
        from agent.request import freshness_minutes

        freshness_minutes(value)
        return value

    @property
    def freshness_minutes(self) -> float:
        from agent.request import freshness_minutes

        return freshness_minutes(self.freshness)

    def source_kinds(self) -> list[str]:
        return sorted({s.kind for s in self.sources})

    def target_names(self) -> list[str]:
        names = set()
        for t in self.targets:
            names.update(x for x in (t.warehouse, t.lake, t.table_format) if x)
        return sorted(names)

    def summary(self) -> str:
        """One paragraph used for recall, ranking and packing: what is asked, in the request's own words."""
        entities = [e.name for s in self.sources for e in s.entities]
        pii = [f"{e.name}.{c.name}" for s in self.sources for e in s.entities for c in e.columns if c.pii]
        parts = [
            self.goal,
            f"sources: {', '.join(self.source_kinds())}",
            f"targets: {', '.join(self.target_names())}",
            f"freshness: {self.freshness}",
        ]
        if entities:
            parts.append(f"entities: {', '.join(entities)}")
        if pii:
            parts.append(f"pii: {', '.join(pii)}")
        if self.compliance:
            parts.append(f"compliance: {', '.join(self.compliance)}")
        if self.consumers:
            parts.append(f"consumers: {', '.join(self.consumers)}")
        return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------
# The design: the six sections of the deliverable


class Decision(Model):
    topic: str
    choice: str
    rationale: str
    alternatives: list[str] = Field(default_factory=list)
    policy_ids: list[str] = Field(default_factory=list, description="Ids of the policy clauses it satisfies.")


class Component(Model):
    name: str
    kind: str = Field(
        description="source, ingestion, stream, storage, warehouse, processing, "
        "orchestration, quality, catalog, serving"
    )
    technology: str
    purpose: str


class Flow(Model):
    source: str
    target: str
    mode: str = Field(description="batch, cdc, stream, api_poll, file_drop, transform, serve")
    description: str = ""


class Architecture(Model):
    pattern: str = Field(description="batch, streaming, lambda or kappa")
    approach: str = Field(description="ETL or ELT")
    modelling: str = Field(description="kimball, data_vault or one_big_table")
    components: list[Component]
    flows: list[Flow]
    decisions: list[Decision]
    capacity: dict[str, Any] = Field(default_factory=dict, description="Sizing today and at growth_factor.")
    cost: dict[str, Any] = Field(default_factory=dict, description="Cost drivers and a monthly estimate.")


class PipelineTask(Model):
    name: Identifier
    kind: str = Field(description="extract, load, transform, test, publish")
    description: str
    upstream: list[str] = Field(default_factory=list)


class Pipeline(Model):
    name: Identifier
    orchestrator: str
    schedule: str = Field(description="Cron expression or '@continuous' for streams.")
    extraction: str = Field(description="cdc, incremental, full, api_poll, file_drop, stream")
    source: str
    target: str
    tasks: list[PipelineTask]
    retries: int = 3
    retry_delay_minutes: int = 5
    idempotency_key: str
    dead_letter: str
    backfill: str
    version: str = "1.0.0"


class TableColumn(Model):
    name: Identifier
    type: str = Field(description="Logical type, mapped to each dialect when rendering.")
    nullable: bool = True
    pii: bool = False
    masking: str | None = Field(default=None, description="hash, mask, encrypt or tokenize for PII columns.")
    description: str = ""
    source: str | None = Field(default=None, description="source_dataset.column it comes from, for lineage.")


class Table(Model):
    name: Identifier
    layer: str = Field(description="raw, staging, core (or vault), mart")
    schema_name: Identifier
    kind: str = Field(description="raw, staging, dimension, fact, hub, link, satellite, obt, date_dimension")
    columns: list[TableColumn]
    primary_key: list[Identifier] = Field(default_factory=list)
    partition_by: str | None = None
    cluster_by: list[Identifier] = Field(default_factory=list)
    scd_type: int | None = None
    retention_days: int | None = None
    owner: str
    description: str = ""
    source_entity: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema_name}.{self.name}"


class Layer(Model):
    name: str
    purpose: str
    retention_days: int | None = None
    file_format: str | None = None


class Storage(Model):
    warehouse: str | None
    lake: str | None = None
    table_format: str | None = None
    layers: list[Layer]
    tables: list[Table]


class Transformation(Model):
    name: Identifier
    target_table: str
    materialization: str = Field(description="view, table, incremental, snapshot")
    inputs: list[str]
    sql: str
    description: str = ""


class Processing(Model):
    engine: str
    transformations: list[Transformation]
    notes: list[str] = Field(default_factory=list)


class QualityRule(Model):
    id: str
    table: str = Field(description="schema.table the rule checks")
    column: str | None = None
    dimension: str = Field(
        description="completeness, uniqueness, validity, consistency, accuracy, timeliness"
    )
    check: str = Field(
        description="not_null, unique, accepted_values, relationships, range, freshness, row_count"
    )
    params: dict[str, Any] = Field(default_factory=dict)
    severity: Literal["error", "warn"] = "error"
    description: str = ""


class Monitor(Model):
    name: str
    metric: str
    threshold: str
    alert: str


class Quality(Model):
    rules: list[QualityRule]
    monitors: list[Monitor]

    def rules_for(self, table: str, column: str) -> list[QualityRule]:
        """The rules on one column, in design order (for the templates: a filter chain per column costs
        ~10 ms a design in Jinja's sandbox)."""
        return [r for r in self.rules if r.table == table and r.column == column]


class LineageEdge(Model):
    source: str = Field(description="dataset (schema.table or source.entity)")
    source_column: str | None = None
    target: str
    target_column: str | None = None
    transformation: str = "IDENTITY"


class Documentation(Model):
    owners: dict[str, str] = Field(description="table -> owner")
    lineage: list[LineageEdge]
    versions: dict[str, str] = Field(default_factory=dict)
    glossary: dict[str, str] = Field(default_factory=dict)


class Design(Model):
    """A complete design. Produced by a planner, checked, rendered, delegated and remembered."""

    id: str
    name: str
    version: str = "1.0.0"
    summary: str
    request: DesignRequest
    architecture: Architecture
    pipelines: list[Pipeline]
    storage: Storage
    processing: Processing
    quality: Quality
    documentation: Documentation
    assumptions: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    conflicts: list[str] = Field(default_factory=list)
    recalled: list[str] = Field(default_factory=list, description="Memory ids this design started from.")

    def policy_ids(self) -> list[str]:
        return sorted({p for d in self.architecture.decisions for p in d.policy_ids})

    def pii_columns(self) -> list[str]:
        return [f"{t.qualified}.{c.name}" for t in self.storage.tables for c in t.columns if c.pii]


# ---------------------------------------------------------------------------------------------------
# Steering


Modality = Literal[
    "MUST", "MUST NOT", "SHALL", "SHALL NOT", "SHOULD", "SHOULD NOT", "MAY", "REQUIRED", "NEVER"
]


class PolicyRule(Model):
    id: str = Field(description="Stable: policy id + section slug + clause index.")
    policy_id: str
    section: str
    text: str = Field(description="The clause, verbatim.")
    modality: str
    line: int
    tags: list[str] = Field(default_factory=list)
    always: bool = False


class PolicySection(Model):
    title: str
    line: int
    text: str
    rules: list[PolicyRule] = Field(default_factory=list)


class Policy(Model):
    id: str
    title: str
    kind: str = "general"
    severity: str = "error"
    applies_to: list[str] = Field(default_factory=list)
    always: bool = False
    path: str
    sections: list[PolicySection]

    @property
    def rules(self) -> list[PolicyRule]:
        return [r for s in self.sections for r in s.rules]


class LoadProblem(Model):
    path: str
    line: int | None = None
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.path}{':' + str(self.line) if self.line else ''}: {self.message}"


# ---------------------------------------------------------------------------------------------------
# Memory and the context pack


class Memory(Model):
    id: str
    kind: Literal["design", "learning", "result"]
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    rating: float | None = None
    use_count: int = 0
    created_at: str = Field(default_factory=lambda: now_iso())
    updated_at: str = Field(default_factory=lambda: now_iso())


class RecalledMemory(Model):
    memory: Memory
    score: float
    similarity: float
    why: dict[str, float] = Field(default_factory=dict)


class PackItem(Model):
    id: str
    origin: Literal["policy", "memory"]
    status: Literal["kept", "trimmed", "dropped"]
    reason: str
    tokens: int
    score: float = 0.0


class ContextPack(Model):
    text: str
    tokens: int
    budget: int
    encoding: str
    tokens_before: int
    items: list[PackItem]
    policy_ids: list[str] = Field(description="Clause ids kept in the pack, citable by decisions.")
    memory_ids: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Delegation


class DelegationTask(Model):
    """Exactly the Claude Code Agent tool input, plus the bookkeeping to launch tasks in order."""

    model_config = ConfigDict(extra="forbid")

    subagent_type: str = Field(min_length=1)
    description: str = Field(description="3 to 5 words")
    prompt: str = Field(min_length=1)
    id: str = ""
    depends_on: list[str] = Field(default_factory=list)
    parallel_group: int = 1
    design_ref: str = ""
    expected_output: str = ""

    @field_validator("description")
    @classmethod
    def _three_to_five_words(cls, value: str) -> str:
        n = len(value.split())
        if not 3 <= n <= 5:
            raise ValueError(f"description must be 3 to 5 words, got {n}: {value!r}")
        return value

    def agent_tool_input(self) -> dict[str, str]:
        return {"subagent_type": self.subagent_type, "description": self.description, "prompt": self.prompt}


# ---------------------------------------------------------------------------------------------------
# The run report


class StageTiming(Model):
    stage: str
    seconds: float


class CheckResult(Model):
    check: str
    status: Literal["pass", "fail", "warn"]
    message: str
    policy_id: str | None = None
    subject: str | None = None


class ArtifactCheck(Model):
    path: str
    checker: str
    ok: bool
    message: str = ""


class RunReport(Model):
    design_id: str
    planner: str
    started_at: str
    stages: list[StageTiming] = Field(default_factory=list)
    tokens_before_packing: int = 0
    tokens_after_packing: int = 0
    budget: int = 0
    policies_used: list[str] = Field(default_factory=list)
    memories_used: list[dict[str, Any]] = Field(default_factory=list)
    pack_items: list[PackItem] = Field(default_factory=list)
    checks: list[CheckResult] = Field(default_factory=list)
    artifacts: list[ArtifactCheck] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    remembered: str | None = None
    usage: dict[str, Any] = Field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return round(sum(s.seconds for s in self.stages), 4)


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
