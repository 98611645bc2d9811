"""The offline planner: the choices a senior data engineer makes, as explicit rules.

Every choice is a Decision with its rationale, the alternatives weighed, and the policy clauses it
satisfies (ids taken from the context pack, so the design cites only what it was given). The tables at
the top are the knowledge; the functions below only apply them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from agent.models import (
    FILE_SOURCES,
    OLTP_SOURCES,
    STREAM_SOURCES,
    Architecture,
    Column,
    Component,
    ContextPack,
    Decision,
    Design,
    DesignRequest,
    Documentation,
    Entity,
    Flow,
    Layer,
    LineageEdge,
    Monitor,
    Pipeline,
    PipelineTask,
    Processing,
    Quality,
    QualityRule,
    RecalledMemory,
    Storage,
    Table,
    TableColumn,
    Transformation,
)
from agent.sqltypes import parse_logical_type
from agent.steering import PolicySet

# ---------------------------------------------------------------------------------------------------
# Knowledge tables

EXTRACTION = {  # source kind -> (method, tool, why)
    **{
        k: (
            "cdc",
            "Debezium (log-based CDC) via Kafka Connect",
            "reads the transaction log, so deletes are captured and the OLTP database carries no query load",
        )
        for k in OLTP_SOURCES
    },
    "mongodb": (
        "cdc",
        "MongoDB change streams (Debezium MongoDB connector)",
        "change streams deliver inserts, updates and deletes in order with resume tokens",
    ),
    "dynamodb": (
        "cdc",
        "DynamoDB Streams + Kinesis Data Streams adapter",
        "streams give item-level changes for 24h without scanning the table",
    ),
    "cassandra": (
        "incremental",
        "Spark Cassandra connector, token-range scans on a write-time watermark",
        "Cassandra CDC commit logs are node-local and hard to operate; bounded token scans are not",
    ),
    "kafka": (
        "stream",
        "Kafka consumer group (Spark Structured Streaming / Kafka Connect sink)",
        "the events are already a log; consume them with committed offsets",
    ),
    "kinesis": (
        "stream",
        "Kinesis consumer (enhanced fan-out) into the lake",
        "the events are already a stream; checkpoint shard iterators",
    ),
    "iot": (
        "stream",
        "MQTT bridge into Kafka, then a streaming consumer",
        "device telemetry arrives continuously and must be buffered durably before processing",
    ),
    "rest_api": (
        "api_poll",
        "incremental API polling on an updated-since cursor with pagination",
        "APIs offer no log; a cursor on the modification time fetches only changes",
    ),
    "saas": (
        "api_poll",
        "incremental API polling on the vendor's modified-since field, within its rate limits",
        "SaaS vendors expose change cursors, not logs, and enforce daily API quotas",
    ),
    "files": (
        "file_drop",
        "landing-zone sensor on an object-store prefix with a manifest file",
        "partners deliver files; process each file once, identified by its path and checksum",
    ),
    "s3": (
        "file_drop",
        "S3 event notifications to a queue, processed once per object key",
        "object events avoid listing the bucket and give exactly-once-per-object processing",
    ),
    "influxdb": (
        "incremental",
        "Flux/InfluxQL range queries on time windows",
        "time-series stores are queried by time ranges, naturally incremental",
    ),
    "timescaledb": (
        "cdc",
        "Debezium on TimescaleDB hypertables (or time-window extraction)",
        "TimescaleDB is Postgres: logical decoding works on hypertable chunks",
    ),
}

# The transform pipeline: dbt layers in order, tests between core and the marts consumers read.
TRANSFORM_TASKS: tuple[tuple[str, str, str, list[str]], ...] = (
    ("dbt_build_staging", "transform", "dbt build --select staging", []),
    ("dbt_build_core", "transform", "dbt build --select core", ["dbt_build_staging"]),
    ("dbt_test", "test", "dbt data tests and SQL checks", ["dbt_build_core"]),
    ("publish_marts", "publish", "dbt build --select marts, emit OpenLineage", ["dbt_test"]),
)

FACT_WORDS = (
    "order",
    "item",
    "line",
    "event",
    "payment",
    "transaction",
    "reading",
    "session",
    "appointment",
    "ticket",
    "invoice",
    "refund",
    "shipment",
    "click",
    "view",
    "entry",
    "journal",
    "booking",
    "visit",
    "subscription",
    "opportunit",
    "sale",
    "inventor",
    "review",
    "price",
)
MEASURE_TYPES = ("decimal", "float", "integer", "bigint")

WAREHOUSE_COMPUTE = {  # warehouse -> (compute, monthly base USD for the smallest sensible setup, $/TB stored/month)
    "snowflake": ("Snowflake virtual warehouse (XS, auto-suspend 60 s)", 300.0, 23.0),
    "bigquery": ("BigQuery on-demand slots (partition-pruned queries)", 150.0, 20.0),
    "redshift": ("Redshift Serverless (8 RPU base)", 450.0, 24.0),
    "databricks": ("Databricks SQL warehouse (2X-Small serverless) + job clusters", 500.0, 23.0),
    "postgres": ("Managed PostgreSQL (4 vCPU, 16 GB)", 350.0, 115.0),
    "duckdb": ("DuckDB in the orchestrator workers", 0.0, 23.0),
}
PARTITIONING = {  # dialect -> how partitioning and clustering are expressed
    "snowflake": "automatic micro-partitions; CLUSTER BY on the date and most-filtered key",
    "bigquery": "PARTITION BY DATE(timestamp) with partition expiration, CLUSTER BY up to 4 filter keys",
    "redshift": "DISTKEY on the join key, compound SORTKEY on the event date",
    "databricks": "Delta with liquid clustering (CLUSTER BY) on date and key",
    "postgres": "declarative range partitioning by month on large facts; B-tree index on keys",
    "duckdb": "zone maps on insertion order; sort on load by date",
}
MASKING = {
    "email": "hash",
    "phone": "mask",
    "name": "mask",
    "address": "mask",
    "ip": "hash",
    "card": "tokenize",
    "ssn": "tokenize",
    "birth": "mask",
    "dob": "mask",
    "mrn": "tokenize",
    "medical": "encrypt",
    "diagnos": "encrypt",
    "reason": "encrypt",
}

# Which policy clauses a decision cites: the clause must mention one of these words.
DECISION_TERMS: dict[str, tuple[str, ...]] = {
    "pattern": ("freshness", "latency", "sla", "streaming", "batch"),
    "extraction": ("cdc", "change data capture", "incremental", "debezium", "watermark", "extract"),
    "approach": ("elt", "etl", "raw", "staging", "layer", "immutable"),
    "modelling": ("dimension", "fact", "scd", "surrogate", "vault", "model"),
    "storage": ("partition", "cluster", "format", "parquet", "delta", "iceberg", "retention"),
    "orchestration": ("retry", "retries", "idempot", "backfill", "orchestrat", "dead-letter", "dead letter"),
    "pii": ("pii", "personal", "mask", "encrypt", "hash", "tokeni", "sensitive"),
    "quality": ("quality", "test", "not_null", "not null", "unique", "freshness", "reconcil"),
    "ownership": ("owner", "steward", "catalog", "contract"),
    "monitoring": ("monitor", "alert", "drift", "observab", "lag"),
    "capacity": ("growth", "capacity", "10x", "scale", "cost", "budget", "tag"),
    "failure": ("retry", "retries", "idempot", "dead-letter", "dead letter", "backfill", "replay"),
    "cost": ("cost", "budget", "tag", "spend"),
    "versions": ("version", "semver", "contract", "breaking"),
    "serving": ("bi", "dashboard", "semantic", "metric", "feature", "consumer"),
}

BI_TOOLS = {
    "looker": "LookML views generated from the marts' contracts; PDTs avoided (marts are already aggregated)",
    "tableau": "live connection to the marts with a published data source; extracts only for slow sources",
    "power_bi": "DirectQuery on marts (Import for small dimensions) through the on-premises gateway if needed",
    "metabase": "models on the marts; the mart owner curates the metric definitions",
    "superset": "datasets on the marts, virtual datasets for metrics",
    "grafana": "time-series panels on the hot store; alerts from Grafana on the same queries",
    "databricks_sql": "Databricks SQL dashboards on gold tables",
}
FEATURE_STORES = {
    "databricks": "Databricks Feature Engineering in Unity Catalog (offline) + online tables",
    "snowflake": "Snowflake Feature Store (offline) + Feast online store",
    "bigquery": "Vertex AI Feature Store on BigQuery tables",
}


def _h(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def cite(topic: str, pack: ContextPack, policies: PolicySet, limit: int = 3) -> list[str]:
    """Policy clause ids from the pack that speak to this topic, strongest (MUST) first."""
    words = DECISION_TERMS.get(topic, ())
    kept = set(pack.policy_ids)
    hits = []
    for rule in policies.rules:
        if rule.id not in kept:
            continue
        low = rule.text.lower()
        n = sum(1 for w in words if w in low)
        if n:
            strength = 2 if rule.modality.startswith(("MUST", "SHALL", "NEVER", "REQUIRED")) else 1
            hits.append((-(n + strength), rule.id))
    return [rid for _, rid in sorted(hits)[:limit]]


# ---------------------------------------------------------------------------------------------------
# The planner


def plan_design(
    request: DesignRequest, pack: ContextPack, policies: PolicySet, recalled: Sequence[RecalledMemory] = ()
) -> Design:
    kinds = set(request.source_kinds())
    fresh = request.freshness_minutes
    warnings: list[str] = []
    conflicts: list[str] = []
    decisions: list[Decision] = []
    assumptions = list(request.assumptions)

    # -- pattern -------------------------------------------------------------------------------------
    streamable = kinds & (STREAM_SOURCES | OLTP_SOURCES | {"mongodb", "dynamodb", "timescaledb"})
    batch_only = kinds - streamable
    if fresh < 15 and batch_only:
        slow = sorted(batch_only)
        if not kinds & STREAM_SOURCES and not streamable:
            conflicts.append(
                f"Requested freshness '{request.freshness}' ({fresh:g} min) cannot be met by "
                f"{', '.join(slow)} sources, which deliver in batches (file drops arrive on the partner's "
                "schedule; APIs are rate-limited). Chose a batch design that processes each delivery within "
                "15 minutes of arrival, and recommends asking the provider for an event feed or CDC."
            )
            pattern = "batch"
        else:
            pattern = "lambda"
            conflicts.append(
                f"Freshness '{request.freshness}' applies to the streaming sources only; {', '.join(slow)} "
                "arrive in batches and are merged by the batch layer."
            )
    elif fresh < 15:
        pattern = "kappa" if kinds & STREAM_SOURCES else "streaming"
    elif kinds & STREAM_SOURCES:
        pattern = "streaming"
    else:
        pattern = "batch"
    if kinds & FILE_SOURCES and fresh < 1440 and pattern == "batch" and not conflicts:
        warnings.append(
            f"Freshness {request.freshness} from file drops assumes the provider delivers at least "
            "that often; confirm the delivery schedule."
        )
    pattern_alts = {
        "batch": ["streaming (not needed at this SLA, costs more to run)", "lambda"],
        "streaming": ["batch micro-schedules (simpler, but misses intra-hour SLAs)", "lambda"],
        "kappa": ["lambda (two code paths to keep equal)", "batch (misses the SLA)"],
        "lambda": ["kappa (would force batch sources through a stream)", "batch (misses the SLA)"],
    }
    decisions.append(
        Decision(
            topic="Processing pattern",
            choice=pattern,
            rationale=(
                f"Freshness SLA is {request.freshness} (~{fresh:g} min) with sources "
                f"{', '.join(sorted(kinds))}; "
                + {
                    "batch": "scheduled incremental batches meet it at the lowest cost and complexity.",
                    "streaming": "changes are captured continuously and applied in micro-batches.",
                    "kappa": "one streaming path serves real-time and replay (reprocess from the retained log).",
                    "lambda": "a speed layer serves the streams while a batch layer handles batch-only sources.",
                }[pattern]
            ),
            alternatives=pattern_alts[pattern],
            policy_ids=cite("pattern", pack, policies),
        )
    )

    # -- targets ------------------------------------------------------------------------------------
    warehouse = next((t.warehouse for t in request.targets if t.warehouse), None)
    lake = next((t.lake for t in request.targets if t.lake), None)
    table_format = next((t.table_format for t in request.targets if t.table_format), None)
    if lake and not table_format:
        table_format = "delta" if warehouse == "databricks" else "iceberg"
        assumptions.append(f"Lake tables use {table_format} (not specified).")
    dialect = warehouse or ("databricks" if table_format == "delta" else "duckdb")
    if not warehouse:
        assumptions.append(f"No warehouse was named; DDL is written for {dialect} over the {lake} lake.")
    cloud = request.constraints.cloud or {"bigquery": "gcp", "adls": "azure", "gcs": "gcp"}.get(
        warehouse or "", {"adls": "azure", "gcs": "gcp"}.get(lake or "", "aws")
    )

    approach = "ELT" if warehouse and warehouse != "duckdb" else "ETL"
    pii_present = any(c.pii for s in request.sources for e in s.entities for c in e.columns)
    decisions.append(
        Decision(
            topic="ETL or ELT",
            choice=approach,
            rationale=(
                "Land raw data unchanged, then transform inside the warehouse with dbt: replayable, "
                "versioned SQL and the warehouse's elastic compute."
                if approach == "ELT"
                else "Transform in Spark before writing curated lake tables, since there is no warehouse engine."
            ),
            alternatives=["ETL in Spark before loading" if approach == "ELT" else "ELT in a warehouse"],
            policy_ids=cite("approach", pack, policies),
        )
    )

    # -- modelling ----------------------------------------------------------------------------------
    modelling = request.constraints.modelling or "kimball"
    if not request.constraints.modelling and len(request.sources) >= 3 and "sox" in request.compliance:
        modelling = "data_vault"
    decisions.append(
        Decision(
            topic="Modelling",
            choice={
                "kimball": "Kimball star schema (facts, SCD2 dimensions, date dimension)",
                "data_vault": "Data Vault 2.0 (hubs, links, satellites) with star-schema marts",
                "one_big_table": "One big table per subject for BI, built from staging",
            }[modelling],
            rationale={
                "kimball": "Consumers query by business process; conformed dimensions with history (SCD2) "
                "answer 'as it was' questions and BI tools understand stars natively.",
                "data_vault": "Several source systems with auditability needs: insert-only hubs, links and "
                "satellites absorb source changes without rework and keep full history.",
                "one_big_table": "BI-only consumers with few joins benefit from a wide pre-joined table: "
                "simpler queries and predictable performance.",
            }[modelling],
            alternatives=[m for m in ("kimball", "data_vault", "one_big_table") if m != modelling],
            policy_ids=cite("modelling", pack, policies),
        )
    )

    # -- per-source extraction, platform, orchestration --------------------------------------------
    orchestrator = request.constraints.orchestrator or "airflow"
    if not request.constraints.orchestrator:
        assumptions.append("Orchestrator not specified; Airflow 3 (TaskFlow) chosen as the most common.")
    stream_platform = (
        "kinesis"
        if (
            "kinesis" in kinds
            or (cloud == "aws" and "kafka" not in kinds and "iot" not in kinds and pattern != "batch")
        )
        else "kafka"
    )
    components: list[Component] = []
    methods: dict[str, str] = {}
    for source in request.sources:
        method, tool, why = EXTRACTION[source.kind]
        if method == "cdc" and pattern == "batch" and fresh >= 1440 and source.kind in OLTP_SOURCES:
            method, tool, why = (
                "incremental",
                "incremental extraction on updated_at watermarks",
                "a daily SLA does not justify running CDC infrastructure; watermarks suffice "
                "(deletes need soft-delete flags or periodic full reconciliation)",
            )
        components.append(
            Component(
                name=source.name,
                kind="source",
                technology=source.kind,
                purpose=source.description or f"{source.kind} source system",
            )
        )
        components.append(
            Component(
                name=f"ingest_{source.name}",
                kind="ingestion",
                technology=tool,
                purpose=f"{method} extraction: {why}",
            )
        )
        decisions.append(
            Decision(
                topic=f"Extraction from {source.name}",
                choice=f"{method}: {tool}",
                rationale=why,
                alternatives=_extraction_alternatives(method),
                policy_ids=cite("extraction", pack, policies),
            )
        )
        methods[source.name] = method
    # Debezium and stream consumers need a durable log even when loads into the warehouse are batched
    uses_stream = pattern in ("streaming", "kappa", "lambda") or any(
        m in ("cdc", "stream") for m in methods.values()
    )
    if uses_stream:
        tech = {
            "kafka": "Apache Kafka (3 brokers, schema registry, Avro)",
            "kinesis": "Amazon Kinesis Data Streams (on-demand) + Glue schema registry",
        }[stream_platform]
        components.append(
            Component(
                name="event_log",
                kind="stream",
                technology=tech,
                purpose="durable, replayable change/event log with schema enforcement",
            )
        )
        decisions.append(
            Decision(
                topic="Streaming platform",
                choice=stream_platform,
                rationale=(
                    "Kinesis is managed on AWS with per-shard scaling"
                    if stream_platform == "kinesis"
                    else "Kafka keeps a replayable log, is what Debezium writes to, and has a schema registry for "
                    "Avro contracts"
                ),
                alternatives=["kinesis" if stream_platform == "kafka" else "kafka", "Pub/Sub", "Event Hubs"],
                policy_ids=cite("storage", pack, policies),
            )
        )

    landing = lake or {"gcp": "gcs", "azure": "adls"}.get(cloud, "s3")
    hive_consumers = {c.lower() for c in request.consumers} & {"hive", "presto", "emr", "impala"}
    file_format = "avro" if uses_stream else ("orc" if hive_consumers else "parquet")
    components.append(
        Component(
            name="landing",
            kind="storage",
            technology=f"{landing} ({file_format} landing files)",
            purpose="immutable raw landing zone, replay source for backfills",
        )
    )
    decisions.append(
        Decision(
            topic="File formats",
            choice=f"{file_format.upper()} in landing, Parquet{f'/{table_format}' if table_format else ''} for curated",
            rationale=(
                "Avro keeps row-oriented change events with their schema for the registry; columnar Parquet "
                "for analytics"
                if file_format == "avro"
                else (
                    f"ORC for the Hive-based consumers ({', '.join(sorted(hive_consumers))}): stripe statistics, "
                    "bloom filters and ACID in Hive"
                    if file_format == "orc"
                    else "Parquet is columnar and compressed, read natively by every engine; ORC only pays off "
                    "on Hive"
                )
            ),
            alternatives=[
                f
                for f in ("Avro (row-oriented, for streams)", "ORC (Hive)", "Parquet")
                if file_format not in f.lower()
            ]
            + ["JSON lines (no schema, larger)", "CSV (no types)"],
            policy_ids=cite("storage", pack, policies),
        )
    )
    if lake and table_format in ("delta", "iceberg"):
        components.append(
            Component(
                name="lakehouse",
                kind="storage",
                technology=f"{table_format} tables on {lake}",
                purpose="ACID tables with time travel and schema evolution",
            )
        )
        decisions.append(
            Decision(
                topic="Table format",
                choice=table_format,
                rationale=(
                    "Delta is native to Databricks: MERGE, liquid clustering, change data feed"
                    if table_format == "delta"
                    else "Iceberg is engine-neutral (Spark, Trino, Snowflake, Athena) with hidden partitioning"
                ),
                alternatives=["iceberg" if table_format == "delta" else "delta", "plain Parquet (no ACID)"],
                policy_ids=cite("storage", pack, policies),
            )
        )
    if warehouse:
        compute, _, _ = WAREHOUSE_COMPUTE[warehouse]
        components.append(
            Component(
                name="warehouse",
                kind="warehouse",
                technology=compute,
                purpose="serves staging, core and mart layers; runs the dbt models",
            )
        )
    processing_engine = (
        "Spark Structured Streaming + dbt"
        if pattern in ("kappa", "lambda") or (lake and not warehouse)
        else f"dbt on {warehouse}"
    )
    components.append(
        Component(
            name="transform",
            kind="processing",
            technology=processing_engine,
            purpose="staging, modelling and marts as versioned SQL",
        )
    )
    components.append(
        Component(
            name="orchestrator",
            kind="orchestration",
            technology={
                "airflow": "Apache Airflow 3 (TaskFlow API)",
                "dagster": "Dagster (software-defined assets)",
                "prefect": "Prefect 3 flows",
            }[orchestrator],
            purpose="schedules, retries, backfills and lineage emission",
        )
    )
    decisions.append(
        Decision(
            topic="Orchestration",
            choice=orchestrator,
            rationale=(
                {
                    "airflow": "The team standard; TaskFlow DAGs with retries, SLAs and backfill by data interval.",
                    "dagster": "Asset-based orchestration fits dbt models and gives lineage per asset.",
                    "prefect": "Lightweight Python flows with retries and concurrency limits.",
                }[orchestrator]
                + (" Given as a constraint." if request.constraints.orchestrator else "")
            ),
            alternatives=[o for o in ("airflow", "dagster", "prefect") if o != orchestrator],
            policy_ids=cite("orchestration", pack, policies),
        )
    )
    components.append(
        Component(
            name="quality",
            kind="quality",
            technology="dbt data tests + SQL checks",
            purpose="blocks bad data between layers; failures alert the owner",
        )
    )
    components.append(
        Component(
            name="catalog",
            kind="catalog",
            technology="OpenLineage events + data contracts",
            purpose="column lineage, owners and contracts per table",
        )
    )
    consumers = request.consumers or ["bi"]
    components.append(
        Component(
            name="consumers",
            kind="serving",
            technology=", ".join(consumers),
            purpose="dashboards, ML features and downstream applications",
        )
    )

    # -- storage ------------------------------------------------------------------------------------
    owner = request.owner
    tables: list[Table] = []
    transformations: list[Transformation] = []
    lineage: list[LineageEdge] = []
    pii_columns: list[str] = []
    retention_raw = 30 if pii_present else 90
    if pii_present:  # a policy limit on raw personal data wins over the default
        from agent.checks import policy_days

        limit, rule_id = policy_days(policies, "raw|landing", "pii|personal")
        if limit is not None and limit < retention_raw:
            retention_raw = limit
            assumptions.append(f"Raw PII retention set to {limit} days by policy {rule_id}.")
    entities = [(s, e) for s in request.sources for e in s.entities]
    if not entities:
        raise ValueError("no entities")  # pragma: no cover - validate_entities guarantees at least one
    entity_names = {_snake(e.name) for _, e in entities}

    for source, entity in entities:
        cols, source_pk = _entity_columns(entity, warnings, assumptions)
        # raw keeps the source's names; staging and everything after it use snake_case
        ename = _snake(entity.name)
        pk = [_snake(k) for k in source_pk]
        renamed = [c.name for c in cols if _snake(c.name) != c.name]
        if renamed:
            assumptions.append(
                f"{source.name}.{entity.name}: {len(renamed)} column(s) renamed to snake_case in staging "
                f"(e.g. {renamed[0]} -> {_snake(renamed[0])}); raw keeps the source names."
            )
        raw = Table(
            name=f"{_snake(source.name)}__{ename}"[:63],
            layer="raw",
            schema_name="raw",
            kind="raw",
            columns=[
                TableColumn(
                    name=c.name,
                    type=c.type,
                    nullable=True,
                    pii=c.pii,
                    description=c.description,
                    source=f"{source.name}.{entity.name}.{c.name}",
                )
                for c in cols
            ]
            + _ingest_columns(EXTRACTION[source.kind][0]),
            primary_key=[],
            partition_by="_ingested_at",
            owner=owner,
            retention_days=retention_raw,
            description=f"Raw {entity.name} from {source.name} ({source.kind}), as extracted; restricted access.",
            source_entity=f"{source.name}.{entity.name}",
        )
        tables.append(raw)
        stg_cols = []
        for c in cols:
            masking = _masking_for(c.name) if c.pii else None
            if c.pii:
                pii_columns.append(f"staging.stg_{ename}.{_snake(c.name)}")
            stg_cols.append(
                TableColumn(
                    name=_snake(c.name),
                    type="string" if masking in ("hash", "tokenize", "mask") else c.type,
                    nullable=_snake(c.name) not in pk,
                    pii=c.pii,
                    masking=masking,
                    description=c.description or _describe(c.name),
                    source=f"raw.{raw.name}.{c.name}",
                )
            )
        stg_cols.append(
            TableColumn(
                name="_loaded_at",
                type="timestamp",
                nullable=False,
                description="When the row was loaded into staging (UTC).",
            )
        )
        stg = Table(
            name=f"stg_{ename}",
            layer="staging",
            schema_name="staging",
            kind="staging",
            columns=stg_cols,
            primary_key=pk,
            owner=owner,
            retention_days=None,
            partition_by=_time_column([c for c in stg_cols if c.name != "_loaded_at"]),
            cluster_by=pk[:1],
            description=f"Cleaned, deduplicated, typed {entity.name}; PII masked.",
            source_entity=f"{source.name}.{entity.name}",
        )
        tables.append(stg)
        transformations.append(_staging_sql(raw, stg, pk, EXTRACTION[source.kind][0]))
        for c in stg.columns:
            if c.source:
                s_table, s_col = c.source.rsplit(".", 1)
                lineage.append(
                    LineageEdge(
                        source=s_table,
                        source_column=s_col,
                        target=stg.qualified,
                        target_column=c.name,
                        transformation=f"MASK:{c.masking}" if c.masking else "IDENTITY",
                    )
                )
        for c in raw.columns:
            if c.source:
                src, col = c.source.rsplit(".", 1)
                lineage.append(
                    LineageEdge(source=src, source_column=col, target=raw.qualified, target_column=c.name)
                )

    staging = [t for t in tables if t.layer == "staging"]
    core_tables, core_sql = _model_core(modelling, staging, entity_names, owner, request)
    tables += core_tables
    transformations += core_sql
    for t in core_tables:
        for c in t.columns:
            if c.source and "." in c.source:
                s_table, s_col = c.source.rsplit(".", 1)
                lineage.append(
                    LineageEdge(source=s_table, source_column=s_col, target=t.qualified, target_column=c.name)
                )
    facts = [t for t in core_tables if t.kind in ("fact", "obt")]
    if facts and (
        "bi" in consumers
        or any(c in consumers for c in ("looker", "tableau", "power_bi", "metabase", "superset"))
        or modelling != "one_big_table"
    ):
        mart, mart_sql = _mart_daily(facts[0], owner)
        tables.append(mart)
        transformations.append(mart_sql)
        for c in mart.columns:
            if c.source:
                s_table, s_col = c.source.rsplit(".", 1)
                lineage.append(
                    LineageEdge(
                        source=s_table,
                        source_column=s_col,
                        target=mart.qualified,
                        target_column=c.name,
                        transformation="AGGREGATE",
                    )
                )

    if pii_present:
        decisions.append(
            Decision(
                topic="PII handling",
                choice="PII masked in staging (hash/mask/tokenize by column); raw restricted and short-lived",
                rationale=(
                    f"{len(pii_columns)} PII column(s): {', '.join(pii_columns[:6])}"
                    f"{'…' if len(pii_columns) > 6 else ''}. Only the raw schema holds clear values, "
                    f"readable by the ingestion role, deleted after {retention_raw} days."
                ),
                alternatives=["column-level encryption with key per tenant", "dynamic masking policies only"],
                policy_ids=cite("pii", pack, policies),
            )
        )
    decisions.append(
        Decision(
            topic="Partitioning and clustering",
            choice=PARTITIONING[dialect],
            rationale="Prunes scans to the dates and keys queries filter on; keeps MERGE cost proportional to change.",
            alternatives=[
                "no partitioning (full scans)",
                "hash sharding by key (only for very large point lookups)",
            ],
            policy_ids=cite("storage", pack, policies),
        )
    )
    decisions.append(
        Decision(
            topic="Ownership and contracts",
            choice=f"Every table owned by {owner}; ODCS contract per core table",
            rationale="Named owners get the alerts; contracts make schema changes explicit and reviewable.",
            alternatives=["implicit ownership by pipeline author"],
            policy_ids=cite("ownership", pack, policies),
        )
    )

    # -- pipelines ----------------------------------------------------------------------------------
    schedule = _schedule(fresh, pattern)
    pipelines: list[Pipeline] = []
    for source in request.sources:
        method = methods[source.name]
        ents = [e.name for e in source.entities] or ["data"]
        tasks = [
            PipelineTask(
                name=f"extract_{e}", kind="extract", description=f"{method} extract of {e} from {source.name}"
            )
            for e in ents
        ]
        tasks += [
            PipelineTask(
                name=f"load_{e}", kind="load", description=f"load {e} into raw", upstream=[f"extract_{e}"]
            )
            for e in ents
        ]
        tasks.append(
            PipelineTask(
                name="check_raw",
                kind="test",
                description="row counts and freshness of raw",
                upstream=[f"load_{e}" for e in ents],
            )
        )
        pipelines.append(
            Pipeline(
                name=f"ingest_{source.name}",
                orchestrator=orchestrator,
                schedule="@continuous" if method in ("cdc", "stream") and pattern != "batch" else schedule,
                extraction=method,
                source=source.name,
                target="raw",
                tasks=tasks,
                idempotency_key=(
                    "source LSN/offset + primary key"
                    if method in ("cdc", "stream")
                    else "data interval start + primary key"
                ),
                dead_letter=f"{landing}://dead-letter/{source.name}/ (malformed or schema-violating records, "
                "replayed after a fix)",
                backfill=(
                    "re-run any data interval; extraction is bounded by the interval's watermarks"
                    if method not in ("cdc", "stream")
                    else "replay from the retained log offset, or a snapshot re-sync"
                ),
            )
        )
    t_tasks = [
        PipelineTask(name=name, kind=kind, description=description, upstream=upstream)
        for name, kind, description, upstream in TRANSFORM_TASKS
    ]
    pipelines.append(
        Pipeline(
            name="transform_models",
            orchestrator=orchestrator,
            schedule=schedule,
            extraction="transform",
            source="raw",
            target="mart",
            tasks=t_tasks,
            idempotency_key="dbt incremental unique_key per model",
            dead_letter="failed tests quarantine the batch; marts keep the last good build",
            backfill="dbt build --full-refresh for one model, or --vars for a date range",
        )
    )

    # -- quality ------------------------------------------------------------------------------------
    rules, monitors = _quality(tables, request, pattern, fresh, stream_platform if uses_stream else None)
    decisions.append(
        Decision(
            topic="Quality framework",
            choice=f"{len(rules)} rules across {len({r.dimension for r in rules})} dimensions; errors block publishing",
            rationale="Keys are complete and unique, facts reference existing dimensions, measures are in range, "
            "and freshness matches the SLA; checks run between layers so bad data never reaches marts.",
            alternatives=["Great Expectations suites", "warehouse-native data metric functions"],
            policy_ids=cite("quality", pack, policies),
        )
    )
    decisions.append(
        Decision(
            topic="Monitoring and alerting",
            choice=", ".join(m.name for m in monitors),
            rationale="Freshness, volume and schema drift catch most silent failures; alerts go to the owner.",
            alternatives=["dashboards without alerts"],
            policy_ids=cite("monitoring", pack, policies),
        )
    )

    # -- capacity and cost --------------------------------------------------------------------------
    capacity, cost = _capacity_and_cost(request, tables, warehouse, uses_stream)
    decisions.append(
        Decision(
            topic="Capacity for growth",
            choice=f"sized for {request.growth_factor:g}x: {capacity['rows_per_day_at_growth']:,} rows/day, "
            f"{capacity['storage_gb_year_at_growth']:,} GB/year",
            rationale=capacity["notes"],
            alternatives=["size for today and resize later"],
            policy_ids=cite("capacity", pack, policies),
        )
    )

    processing_notes: list[str] = []
    _serving_decisions(
        request,
        pack,
        policies,
        decisions,
        components,
        processing_notes,
        capacity,
        cost,
        pipelines,
        warehouse=warehouse,
        modelling=modelling,
        pattern=pattern,
        stream_platform=stream_platform,
        uses_stream=uses_stream,
    )

    rows_note = ", ".join(f"{t.qualified}" for t in tables if t.kind in ("fact", "obt"))
    name = request.name
    design_id = f"{name}-{_h(request.model_dump_json())[:8]}"
    architecture = Architecture(
        pattern=pattern,
        approach=approach,
        modelling=modelling,
        components=components,
        flows=_flows(request, components, warehouse, lake, uses_stream),
        decisions=decisions,
        capacity=capacity,
        cost=cost,
    )
    owners = {t.qualified: t.owner for t in tables}
    summary = (
        f"{pattern.capitalize()} {approach} from {', '.join(sorted(kinds))} to "
        f"{', '.join(request.target_names())} at {request.freshness} freshness; {modelling.replace('_', ' ')} "
        f"model with {len(tables)} tables ({rows_note or 'marts'})."
    )
    return Design(
        id=design_id,
        name=name,
        summary=summary,
        request=request,
        architecture=architecture,
        pipelines=pipelines,
        storage=Storage(
            warehouse=warehouse,
            lake=lake,
            table_format=table_format,
            layers=_layers(retention_raw, file_format, table_format),
            tables=tables,
        ),
        processing=Processing(
            engine=processing_engine, transformations=transformations, notes=processing_notes
        ),
        quality=Quality(rules=rules, monitors=monitors),
        documentation=Documentation(
            owners=owners,
            lineage=lineage,
            versions={"design": "1.0.0", "schema": "1.0.0", **{p.name: p.version for p in pipelines}},
            glossary={
                c.name: c.description
                for t in tables
                for c in t.columns
                if c.description and not c.name.startswith("_")
            },
        ),
        assumptions=assumptions,
        warnings=warnings,
        conflicts=conflicts,
        recalled=[r.memory.id for r in recalled],
    )


def _serving_decisions(
    request: DesignRequest,
    pack: ContextPack,
    policies: PolicySet,
    decisions: list[Decision],
    components: list[Component],
    notes: list[str],
    capacity: dict,
    cost: dict,
    pipelines: list[Pipeline],
    *,
    warehouse: str | None,
    modelling: str,
    pattern: str,
    stream_platform: str,
    uses_stream: bool,
) -> None:
    """Decisions past the core model: time series, sharding, Spark, failures, cost, versions, BI and ML."""
    kinds = set(request.source_kinds())
    consumers = {c.lower() for c in request.consumers}
    rows_growth = capacity["rows_per_day_at_growth"]
    eps = capacity.get("peak_events_per_second_at_growth", 0) or 0

    # -- time series ---------------------------------------------------------------------------------
    if kinds & {"influxdb", "timescaledb", "iot"} or "grafana" in consumers:
        timescale = warehouse == "postgres" or "timescaledb" in kinds
        store = "TimescaleDB" if timescale else "InfluxDB"
        components.append(
            Component(
                name="timeseries_store",
                kind="serving",
                technology=(
                    "TimescaleDB hypertables (1-day chunks, compression after 7 days, continuous aggregates)"
                    if timescale
                    else "InfluxDB 3 (retention-bucketed measurements, downsampling tasks)"
                ),
                purpose="hot time-series queries and dashboards; history stays in the lake/warehouse",
            )
        )
        decisions.append(
            Decision(
                topic="Time-series store",
                choice=store,
                rationale=(
                    "TimescaleDB keeps time series in Postgres: SQL joins with the relational dimensions, "
                    "continuous aggregates for rollups, native compression"
                    if timescale
                    else "InfluxDB is purpose-built for high-cardinality metrics with retention and downsampling; "
                    "the warehouse keeps the long history"
                ),
                alternatives=[
                    "InfluxDB" if timescale else "TimescaleDB",
                    "warehouse only (slow for dashboards)",
                ],
                policy_ids=cite("storage", pack, policies),
            )
        )

    # -- sharding and Spark ----------------------------------------------------------------------------
    if uses_stream:
        partitions = max(3, int(eps // 1000) + 1)
        unit = "shards" if stream_platform == "kinesis" else "partitions"
        decisions.append(
            Decision(
                topic="Sharding",
                choice=f"{partitions} {stream_platform} {unit}, keyed by the entity's primary key",
                rationale=(
                    f"Peak at {request.growth_factor:g}x growth is ~{eps:,.0f} events/s; at ~1,000 events/s per "
                    f"{unit[:-1]}, {partitions} keeps headroom while keeping per-key ordering."
                ),
                alternatives=["random partitioning (loses per-key order)", "one partition per tenant"],
                policy_ids=cite("capacity", pack, policies),
            )
        )
    if rows_growth > 500_000_000 or capacity["gb_per_day_at_growth"] > 500:
        tuning = (
            "Spark tuning: target 128-256 MB files, spark.sql.shuffle.partitions ~ 2-3x cores, adaptive query "
            "execution on, broadcast joins for dimensions under 100 MB, and OPTIMIZE/compaction nightly."
        )
        notes.append(tuning)
        decisions.append(
            Decision(
                topic="Spark tuning",
                choice="AQE on; 128-256 MB files; shuffle partitions ~2-3x cores; nightly compaction",
                rationale=f"{rows_growth:,} rows/day at growth is beyond what single-node SQL handles. {tuning}",
                alternatives=["default Spark settings (small files, skewed shuffles)"],
                policy_ids=cite("capacity", pack, policies),
            )
        )

    # -- failures, cost, versions -----------------------------------------------------------------------
    decisions.append(
        Decision(
            topic="Failure handling",
            choice="3 retries with exponential backoff; idempotent loads; dead-letter; backfill and replay",
            rationale="; ".join(
                f"{p.name}: idempotency key {p.idempotency_key}, backfill by {p.backfill}"
                for p in pipelines[:3]
            ),
            alternatives=["fail fast and rerun by hand", "at-most-once delivery (drops data)"],
            policy_ids=cite("failure", pack, policies),
        )
    )
    budget = cost.get("budget_usd_month")
    decisions.append(
        Decision(
            topic="Cost estimate",
            choice=f"~${cost['monthly_estimate']:,.0f}/month today, ~${cost['monthly_estimate_at_growth']:,.0f} "
            f"at {request.growth_factor:g}x",
            rationale="Drivers: "
            + "; ".join(f"{k} {v}" for k, v in cost["drivers"].items())
            + (
                f". Budget ${budget:,.0f}/month: {'within' if cost.get('within_budget') else 'OVER'} budget."
                if budget
                else "."
            ),
            alternatives=cost.get("levers", []),
            policy_ids=cite("cost", pack, policies),
        )
    )
    decisions.append(
        Decision(
            topic="Versions",
            choice="Semantic versions for schemas, contracts and pipelines (design 1.0.0, schema 1.0.0)",
            rationale="Additive changes bump the minor version; removals and retypes bump the major version, "
            "need a new contract version and a migration window for consumers.",
            alternatives=["unversioned schemas (breaking changes surprise consumers)"],
            policy_ids=cite("versions", pack, policies),
        )
    )

    # -- metric layer, BI, ML --------------------------------------------------------------------------
    bi = sorted(c for c in consumers if c in BI_TOOLS)
    if modelling != "one_big_table" or bi:
        layer = (
            "LookML (Looker semantic model) over the marts"
            if "looker" in consumers
            else "dbt Semantic Layer (MetricFlow) metrics over the marts"
        )
        notes.append(
            f"Metric layer: metrics (counts, sums, averages per day) are defined once in {layer} and exposed to "
            "BI tools, so every dashboard computes them the same way."
        )
        decisions.append(
            Decision(
                topic="Metric layer",
                choice=layer,
                rationale="One definition per metric, versioned with the models; BI tools read, never redefine.",
                alternatives=["metrics defined per dashboard (drift)", "warehouse views only"],
                policy_ids=cite("serving", pack, policies),
            )
        )
    if bi:
        decisions.append(
            Decision(
                topic="BI integration",
                choice=", ".join(bi),
                rationale="; ".join(f"{b}: {BI_TOOLS[b]}" for b in bi),
                alternatives=["exports to spreadsheets"],
                policy_ids=cite("serving", pack, policies),
            )
        )
    if consumers & {"ml", "feature_store", "mlflow"} or any("model" in c for c in consumers):
        tech = FEATURE_STORES.get(warehouse or "", "Feast (offline store on the lake, Redis online store)")
        notes.append(
            "Feature store hand-off: point-in-time correct feature tables keyed by entity id and event timestamp; "
            "the genai-engineer owns training pipelines."
        )
        components.append(
            Component(
                name="feature_store",
                kind="serving",
                technology=tech,
                purpose="online and offline ML features",
            )
        )
        decisions.append(
            Decision(
                topic="Feature store hand-off",
                choice=tech,
                rationale="ML consumers need point-in-time correct features; the data platform publishes feature "
                "tables from core, the ML pipeline (genai-engineer) owns training and serving models.",
                alternatives=["ad-hoc training extracts (leak future data)"],
                policy_ids=cite("serving", pack, policies),
            )
        )


# ---------------------------------------------------------------------------------------------------
# Helpers


def _extraction_alternatives(method: str) -> list[str]:
    return {
        "cdc": ["incremental on updated_at (misses hard deletes)", "nightly full extract (heavy on OLTP)"],
        "incremental": ["log-based CDC (more infrastructure)", "full extract"],
        "stream": ["batch export from the stream (adds latency)"],
        "api_poll": ["vendor webhooks (lossy without replay)", "bulk export API (daily only)"],
        "file_drop": ["scheduled listing of the prefix (can double-process)"],
    }.get(method, [])


def _entity_columns(
    entity: Entity, warnings: list[str], assumptions: list[str]
) -> tuple[list[Column], list[str]]:
    """The entity's columns and key; an entity with no key gets a surrogate one (and a warning)."""
    cols = list(entity.columns)
    if not cols:
        cols = [
            Column(name=f"{entity.name}_id", type="string"),
            Column(name="payload", type="json"),
            Column(name="updated_at", type="timestamp"),
        ]
        assumptions.append(
            f"Entity {entity.name} lists no columns; drafted {entity.name}_id, payload, updated_at."
        )
        if not entity.primary_key:
            return cols, [f"{entity.name}_id"]
    if entity.primary_key:
        return cols, list(entity.primary_key)
    warnings.append(
        f"Entity {entity.name} has no primary key: staging adds a surrogate key "
        f"({entity.name}_key = hash of all columns) and uniqueness is checked on it."
    )
    key = Column(
        name=f"{entity.name}_key"[:63],
        type="string",
        nullable=False,
        description="Surrogate key: hash of all source columns (no primary key in the source).",
    )
    return [key, *cols], [key.name]


def _ingest_columns(method: str) -> list[TableColumn]:
    cols = [
        TableColumn(
            name="_ingested_at", type="timestamp", nullable=False, description="When the record landed (UTC)."
        ),
        TableColumn(
            name="_batch_id",
            type="string",
            nullable=False,
            description="Pipeline run / data interval that loaded it (idempotency).",
        ),
    ]
    if method in ("cdc", "stream"):
        cols += [
            TableColumn(name="_op", type="string", description="Change operation: c, u, d, r."),
            TableColumn(
                name="_source_offset",
                type="string",
                description="Source log position (LSN/offset) for ordering and replay.",
            ),
        ]
    return cols


def _masking_for(column: str) -> str:
    low = column.lower()
    return next((m for key, m in MASKING.items() if key in low), "hash")


def _describe(column: str) -> str:
    if column.endswith("_id"):
        return f"Identifier of the {column[:-3].replace('_', ' ')}."
    if column.endswith("_at") or column.endswith("_ts"):
        return f"Timestamp (UTC): {column.rsplit('_', 1)[0].replace('_', ' ')}."
    return column.replace("_", " ").capitalize() + "."


def _q(name: str) -> str:
    """A column as the model SQL writes it: double-quoted (ANSI) when reserved or not plain lowercase.
    The model template turns the quotes into backticks for BigQuery and Databricks."""
    from agent.render import RESERVED

    if name.lower() in RESERVED or not re.match(r"^[a-z_][a-z0-9_]*$", name):
        return '"' + name.replace('"', '""') + '"'
    return name


def _snake(name: str) -> str:
    """snake_case for a source name (AccountId -> account_id); plain lowercase names are unchanged."""
    if re.match(r"^[a-z_][a-z0-9_]*$", name):
        return name
    out = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    out = re.sub(r"(?<=[A-Z])([A-Z][a-z])", r"_\1", out)
    return re.sub(r"_+", "_", out).lower()


def _raw_name(stg: Table, column: str) -> str:
    col = next((c for c in stg.columns if c.name == column), None)
    return col.source.rsplit(".", 1)[1] if col is not None and col.source else column


def _internal(column: TableColumn) -> bool:
    """A pipeline bookkeeping column (_loaded_at, _op ...), not a source column such as MongoDB's _id."""
    return column.name.startswith("_") and not column.source


def _time_column(cols: Sequence) -> str | None:
    """The column that says when a row changed: never a PII date (a birth date is no clock)."""
    cols = [c for c in cols if not c.pii and not re.search(r"birth|dob", c.name.lower())]
    for prefer in ("updated_at", "created_at"):
        if any(c.name == prefer for c in cols):
            return prefer
    for kinds in (("timestamp", "timestamptz"), ("date",)):
        if found := next((c.name for c in cols if parse_logical_type(c.type)[0] in kinds), None):
            return found
    return None


def _is_fact(table: Table, entity_names: set[str]) -> bool:
    base = table.name.removeprefix("stg_")
    if any(w in base for w in FACT_WORDS):
        return True
    fks = [c for c in table.columns if c.name.endswith("_id") and c.name not in table.primary_key]
    measures = [c for c in table.columns if parse_logical_type(c.type)[0] in ("decimal", "float")]
    return bool(fks and measures)


def _staging_sql(raw: Table, stg: Table, pk: list[str], method: str) -> Transformation:
    cols = [c for c in stg.columns if c.name != "_loaded_at"]
    raw_names = {rc.name for rc in raw.columns}
    select = []
    for c in cols:
        src = c.source.rsplit(".", 1)[1] if c.source else c.name
        if src != c.name and src in raw_names and not c.masking:
            select.append(f"{_q(src)} as {_q(c.name)}")
            continue
        if c.masking == "hash":
            select.append(f"md5(lower(trim(cast({_q(src)} as varchar)))) as {_q(c.name)}")
        elif c.masking in ("mask", "tokenize"):
            select.append(
                f"case when {_q(src)} is null then null else concat(left(cast({_q(src)} as varchar), 1), "
                f"'***') end as {_q(c.name)}"
            )
        elif c.masking == "encrypt":
            select.append(f"md5(cast({_q(src)} as varchar)) as {_q(c.name)}")
        elif raw.columns and any(rc.name == c.name for rc in raw.columns):
            select.append(_q(c.name))
        else:  # surrogate key drafted for an entity with no primary key
            others = [rc.name for rc in raw.columns if not rc.name.startswith("_") and rc.name != c.name]
            select.append(
                "md5(concat_ws('|', "
                + ", ".join(f"cast({_q(o)} as varchar)" for o in others)
                + f")) as {_q(c.name)}"
            )
    key_expr = ", ".join(pk)
    order = "_source_offset desc, _ingested_at desc" if method in ("cdc", "stream") else "_ingested_at desc"
    where = "where _op is distinct from 'd'" if method in ("cdc", "stream") else ""
    raw_sel = ", ".join(_q(rc.name) for rc in raw.columns)
    dedup_source = (
        f"(select {raw_sel}, row_number() over (partition by "
        + (", ".join(_q(_raw_name(stg, p)) for p in pk if _raw_name(stg, p) in raw_names) or "_batch_id")
        + f" order by {order}) as _rn from {{{{ source('raw', '{raw.name}') }}}} {where})"
    )
    sql = (
        "select\n    " + ",\n    ".join(select) + ",\n    current_timestamp as _loaded_at\n"
        f"from {dedup_source} as latest\nwhere _rn = 1"
    )
    return Transformation(
        name=stg.name,
        target_table=stg.qualified,
        materialization="incremental",
        inputs=[raw.qualified],
        sql=sql,
        description=f"Latest version of each {key_expr}, PII masked, deletes removed.",
    )


def _model_core(
    modelling: str, staging: list[Table], entity_names: set[str], owner: str, request: DesignRequest
) -> tuple[list[Table], list[Transformation]]:
    tables: list[Table] = []
    sqls: list[Transformation] = []
    if modelling == "data_vault":
        for stg in staging:
            base = stg.name.removeprefix("stg_")
            bk = stg.primary_key[0]
            hub = Table(
                name=f"hub_{base}",
                layer="core",
                schema_name="vault",
                kind="hub",
                owner=owner,
                columns=[
                    TableColumn(
                        name=f"{base}_hk",
                        type="string",
                        nullable=False,
                        description=f"Hash key of {bk}.",
                        source=f"{stg.qualified}.{bk}",
                    ),
                    TableColumn(
                        name=bk,
                        type=_col(stg, bk).type,
                        nullable=False,
                        description="Business key.",
                        source=f"{stg.qualified}.{bk}",
                    ),
                    TableColumn(
                        name="load_ts", type="timestamp", nullable=False, description="First load time."
                    ),
                    TableColumn(
                        name="record_source", type="string", nullable=False, description="Source system."
                    ),
                ],
                primary_key=[f"{base}_hk"],
                description=f"Hub of {base} business keys.",
            )
            attrs = [c for c in stg.columns if c.name not in stg.primary_key and not _internal(c)]
            sat = Table(
                name=f"sat_{base}",
                layer="core",
                schema_name="vault",
                kind="satellite",
                owner=owner,
                columns=[
                    TableColumn(
                        name=f"{base}_hk", type="string", nullable=False, source=f"{stg.qualified}.{bk}"
                    ),
                    TableColumn(name="load_ts", type="timestamp", nullable=False),
                    TableColumn(
                        name="hashdiff",
                        type="string",
                        nullable=False,
                        description="Hash of the attributes, to detect change.",
                    ),
                    *[_carried(c, stg, nullable=True) for c in attrs],
                ],
                primary_key=[f"{base}_hk", "load_ts"],
                description=f"Descriptive history of {base}.",
            )
            tables += [hub, sat]
            sqls.append(
                Transformation(
                    name=hub.name,
                    target_table=hub.qualified,
                    materialization="incremental",
                    inputs=[stg.qualified],
                    sql=(
                        f"select distinct md5(cast({_q(bk)} as varchar)) as {base}_hk, {_q(bk)}, current_timestamp as load_ts, "
                        f"'{stg.source_entity}' as record_source\nfrom {{{{ ref('{stg.name}') }}}}"
                    ),
                    description="Insert-only hub: one row per business key.",
                )
            )
            attr_list = ", ".join(_q(c.name) for c in attrs) or _q(bk)
            sqls.append(
                Transformation(
                    name=sat.name,
                    target_table=sat.qualified,
                    materialization="incremental",
                    inputs=[stg.qualified],
                    sql=(
                        f"select md5(cast({_q(bk)} as varchar)) as {base}_hk, current_timestamp as load_ts, "
                        f"md5(concat_ws('|', {', '.join(f'cast({_q(c.name)} as varchar)' for c in attrs) or _q(bk)})) as hashdiff"
                        + (f", {attr_list}" if attrs else "")
                        + f"\nfrom {{{{ ref('{stg.name}') }}}}"
                    ),
                    description="Satellite rows are inserted only when the hashdiff changes.",
                )
            )
        for stg in staging:
            base = stg.name.removeprefix("stg_")
            for c in stg.columns:
                other = _referenced_entity(c.name, entity_names, base)
                if other and c.name not in stg.primary_key:
                    link = Table(
                        name=f"link_{base}_{other}"[:63],
                        layer="core",
                        schema_name="vault",
                        kind="link",
                        owner=owner,
                        columns=[
                            TableColumn(name=f"{base}_{other}_hk"[:63], type="string", nullable=False),
                            TableColumn(
                                name=f"{base}_hk",
                                type="string",
                                nullable=False,
                                source=f"{stg.qualified}.{stg.primary_key[0]}",
                            ),
                            TableColumn(
                                name=f"{other}_hk",
                                type="string",
                                nullable=False,
                                source=f"{stg.qualified}.{c.name}",
                            ),
                            TableColumn(name="load_ts", type="timestamp", nullable=False),
                        ],
                        primary_key=[f"{base}_{other}_hk"[:63]],
                        description=f"Link {base} to {other}.",
                    )
                    tables.append(link)
                    sqls.append(
                        Transformation(
                            name=link.name,
                            target_table=link.qualified,
                            materialization="incremental",
                            inputs=[stg.qualified],
                            sql=(
                                f"select distinct md5(concat_ws('|', cast({_q(stg.primary_key[0])} as varchar), "
                                f"cast({_q(c.name)} as varchar))) as {link.columns[0].name}, "
                                f"md5(cast({_q(stg.primary_key[0])} as varchar)) as {base}_hk, "
                                f"md5(cast({_q(c.name)} as varchar)) as {other}_hk, current_timestamp as load_ts\n"
                                f"from {{{{ ref('{stg.name}') }}}}\nwhere {_q(c.name)} is not null"
                            ),
                            description=f"Relationship {base} -> {other}.",
                        )
                    )
        return tables, sqls

    facts = [s for s in staging if _is_fact(s, entity_names)] or staging[:1]
    dims = [s for s in staging if s not in facts]
    if modelling == "one_big_table":
        main = facts[0]
        joins, cols, seen = [], [], set()
        for c in main.columns:
            if not _internal(c):
                cols.append(_carried(c, main))
                seen.add(c.name)
        select = [f"f.{_q(c.name)}" for c in cols]
        for i, d in enumerate(dims + facts[1:]):
            key = d.primary_key[0]
            if key in seen:
                alias = f"d{i}"
                joins.append(
                    f"left join {{{{ ref('{d.name}') }}}} as {alias} on f.{_q(key)} = {alias}.{_q(key)}"
                )
                for c in d.columns:
                    if c.name in seen or _internal(c):
                        continue
                    seen.add(c.name)
                    cols.append(_carried(c, d, nullable=True))
                    select.append(f"{alias}.{_q(c.name)}")
        obt = Table(
            name=f"obt_{main.name.removeprefix('stg_')}",
            layer="core",
            schema_name="core",
            kind="obt",
            owner=owner,
            columns=cols,
            primary_key=list(main.primary_key),
            partition_by=main.partition_by,
            cluster_by=main.primary_key[:1],
            description=f"One big table: {main.name} with its related entities pre-joined.",
        )
        sql = "select\n    " + ",\n    ".join(select) + f"\nfrom {{{{ ref('{main.name}') }}}} as f"
        if joins:
            sql += "\n" + "\n".join(joins)
        return [obt], [
            Transformation(
                name=obt.name,
                target_table=obt.qualified,
                materialization="table",
                inputs=[main.qualified] + [d.qualified for d in dims],
                sql=sql,
                description="Wide table for BI.",
            )
        ]

    # Kimball
    dim_date = Table(
        name="dim_date",
        layer="core",
        schema_name="core",
        kind="date_dimension",
        owner=owner,
        columns=[
            TableColumn(name="date_key", type="integer", nullable=False, description="yyyymmdd."),
            TableColumn(name="calendar_date", type="date", nullable=False),
            TableColumn(name="year", type="integer", nullable=False),
            TableColumn(name="quarter", type="integer", nullable=False),
            TableColumn(name="month", type="integer", nullable=False),
            TableColumn(name="day_of_week", type="integer", nullable=False),
            TableColumn(name="is_weekend", type="boolean", nullable=False),
        ],
        primary_key=["date_key"],
        description="Calendar dimension, one row per day.",
    )
    tables.append(dim_date)
    sqls.append(
        Transformation(
            name="dim_date",
            target_table=dim_date.qualified,
            materialization="table",
            inputs=[],
            sql=(
                "select\n    cast(strftime(d, '%Y%m%d') as integer) as date_key,\n    cast(d as date) as calendar_date,\n"
                "    cast(extract(year from d) as integer) as year,\n    cast(extract(quarter from d) as integer) as quarter,\n"
                "    cast(extract(month from d) as integer) as month,\n    cast(extract(dow from d) as integer) as day_of_week,\n"
                "    extract(dow from d) in (0, 6) as is_weekend\n"
                "from (select unnest(generate_series(date '2020-01-01', date '2030-12-31', interval 1 day)) as d) as days"
            ),
            description="Generated calendar 2020-2030.",
        )
    )
    dim_names: dict[str, Table] = {}
    for d in dims:
        base = d.name.removeprefix("stg_")
        singular = base[:-1] if base.endswith("s") and not base.endswith("ss") else base
        attrs = [c for c in d.columns if not _internal(c)]
        dim = Table(
            name=f"dim_{singular}",
            layer="core",
            schema_name="core",
            kind="dimension",
            owner=owner,
            scd_type=2,
            columns=[
                TableColumn(
                    name=f"{singular}_sk",
                    type="string",
                    nullable=False,
                    description="Surrogate key: hash of business key and valid_from.",
                ),
                *[_carried(c, d) for c in attrs],
                TableColumn(
                    name="valid_from",
                    type="timestamp",
                    nullable=False,
                    description="Start of this version (SCD2).",
                ),
                TableColumn(
                    name="valid_to",
                    type="timestamp",
                    nullable=True,
                    description="End of this version; null while current.",
                ),
                TableColumn(
                    name="is_current",
                    type="boolean",
                    nullable=False,
                    description="True for the current version of the business key.",
                ),
            ],
            primary_key=[f"{singular}_sk"],
            cluster_by=d.primary_key[:1],
            description=f"{base} with full history (SCD type 2).",
            source_entity=d.source_entity,
        )
        tables.append(dim)
        for key in d.primary_key:
            dim_names[key] = dim
        bk = ", ".join(_q(k) for k in d.primary_key)
        sqls.append(
            Transformation(
                name=dim.name,
                target_table=dim.qualified,
                materialization="incremental",
                inputs=[d.qualified],
                sql=(
                    f"select\n    md5(concat_ws('|', {', '.join(f'cast({_q(k)} as varchar)' for k in d.primary_key)}, "
                    f"cast(_loaded_at as varchar))) as {singular}_sk,\n    "
                    + ",\n    ".join(_q(c.name) for c in attrs)
                    + ",\n    _loaded_at as valid_from,\n"
                    f"    lead(_loaded_at) over (partition by {bk} order by _loaded_at) as valid_to,\n"
                    f"    lead(_loaded_at) over (partition by {bk} order by _loaded_at) is null as is_current\n"
                    f"from {{{{ ref('{d.name}') }}}}"
                ),
                description="SCD2: a new version per change of the business key's attributes.",
            )
        )
    for f in facts:
        base = f.name.removeprefix("stg_")
        attrs = [c for c in f.columns if not _internal(c)]
        tcol = _time_column(attrs)
        cols = [_carried(c, f) for c in attrs]
        extra_sel = []
        if tcol:
            cols.append(
                TableColumn(
                    name="date_key",
                    type="integer",
                    nullable=False,
                    description="Foreign key to dim_date.",
                    source=f"{f.qualified}.{tcol}",
                )
            )
            extra_sel.append(f"cast(strftime(cast({_q(tcol)} as date), '%Y%m%d') as integer) as date_key")
        fact = Table(
            name=f"fct_{base}",
            layer="core",
            schema_name="core",
            kind="fact",
            owner=owner,
            columns=cols,
            primary_key=list(f.primary_key),
            partition_by=tcol,
            cluster_by=[k for k in (["date_key"] if tcol else []) + f.primary_key[:1]],
            description=f"One row per {base.rstrip('s')} (grain: {', '.join(f.primary_key)}).",
            source_entity=f.source_entity,
        )
        tables.append(fact)
        sqls.append(
            Transformation(
                name=fact.name,
                target_table=fact.qualified,
                materialization="incremental",
                inputs=[f.qualified],
                sql="select\n    "
                + ",\n    ".join([_q(c.name) for c in attrs] + extra_sel)
                + f"\nfrom {{{{ ref('{f.name}') }}}}",
                description="Incremental merge on the grain's key.",
            )
        )
    return tables, sqls


def _carried(column: TableColumn, table: Table, *, nullable: bool | None = None) -> TableColumn:
    """A column carried from ``table`` into the next layer: same name, type, PII and masking, with lineage."""
    update: dict[str, object] = {"source": f"{table.qualified}.{column.name}"}
    if nullable is not None:
        update["nullable"] = nullable
    return column.model_copy(update=update)


def _col(table: Table, name: str) -> TableColumn:
    return next(c for c in table.columns if c.name == name)


def _referenced_entity(column: str, entity_names: set[str], own: str) -> str | None:
    if not column.endswith("_id"):
        return None
    stem = column[:-3]
    for e in sorted(entity_names):
        if e != own and e.rstrip("s") == stem.rstrip("s"):
            return e
    return None


def _mart_daily(fact: Table, owner: str) -> tuple[Table, Transformation]:
    date_col = "date_key" if any(c.name == "date_key" for c in fact.columns) else None
    measures = [
        c
        for c in fact.columns
        if parse_logical_type(c.type)[0] in ("decimal", "float") and not c.name.endswith("_id") and not c.pii
    ]
    base = fact.name.removeprefix("fct_").removeprefix("obt_")
    cols = []
    select = []
    if date_col:
        cols.append(
            TableColumn(name="date_key", type="integer", nullable=False, source=f"{fact.qualified}.date_key")
        )
        select.append("date_key")
    cols.append(
        TableColumn(
            name=f"{base}_count",
            type="bigint",
            nullable=False,
            description=f"Number of {base} (metric).",
            source=f"{fact.qualified}.{fact.primary_key[0]}",
        )
    )
    select.append(f"count(*) as {base}_count")
    for m in measures[:4]:
        cols.append(
            TableColumn(
                name=f"total_{m.name}",
                type="decimal(18,2)",
                nullable=True,
                description=f"Sum of {m.name} (metric).",
                source=f"{fact.qualified}.{m.name}",
            )
        )
        select.append(f"cast(sum({_q(m.name)}) as decimal(18,2)) as total_{m.name}")
    mart = Table(
        name=f"{base}_daily",
        layer="mart",
        schema_name="mart",
        kind="mart",
        owner=owner,
        columns=cols,
        primary_key=["date_key"] if date_col else [],
        description=f"Daily {base} metrics for BI.",
    )
    sql = "select\n    " + ",\n    ".join(select) + f"\nfrom {{{{ ref('{fact.name}') }}}}"
    if date_col:
        sql += "\ngroup by date_key"
    return mart, Transformation(
        name=mart.name,
        target_table=mart.qualified,
        materialization="table",
        inputs=[fact.qualified],
        sql=sql,
        description="Metric layer: daily aggregates.",
    )


def _quality(
    tables: list[Table], request: DesignRequest, pattern: str, fresh: float, stream: str | None
) -> tuple[list[QualityRule], list[Monitor]]:
    rules: list[QualityRule] = []

    def add(
        table: Table, column: str | None, dimension: str, check: str, description: str, **params: object
    ) -> None:
        rid = f"dq_{table.name}_{column or 'table'}_{check}"[:80]
        rules.append(
            QualityRule(
                id=rid,
                table=table.qualified,
                column=column,
                dimension=dimension,
                check=check,
                params=dict(params),
                description=description,
            )
        )

    keyed = {t.primary_key[0]: t for t in tables if t.layer == "staging" and len(t.primary_key) == 1}
    for t in tables:
        if t.layer not in ("staging", "core", "mart") or t.kind == "date_dimension":
            continue
        for key in t.primary_key:
            add(t, key, "completeness", "not_null", f"{key} is always present")
        if len(t.primary_key) == 1 and t.scd_type != 2:
            add(t, t.primary_key[0], "uniqueness", "unique", f"one row per {t.primary_key[0]}")
        if t.scd_type == 2:
            bk = next((c.name for c in t.columns if c.source and c.name.endswith("_id")), None)
            if bk:
                add(
                    t,
                    bk,
                    "consistency",
                    "scd2_one_current",
                    f"exactly one current version per {bk}",
                    flag="is_current",
                )
        for c in t.columns:
            base, _, _ = parse_logical_type(c.type)
            if (
                base in ("decimal", "float", "integer", "bigint")
                and re.search(r"amount|price|quantity|total|count|value|cost|revenue", c.name)
                and not c.pii
            ):
                add(t, c.name, "accuracy", "range", f"{c.name} is not negative", min=0)
            if c.name in ("currency", "currency_code") and t.layer == "staging":
                add(t, c.name, "validity", "regex", "ISO-4217 three-letter code", pattern="^[A-Z]{3}$")
            if (
                t.kind == "fact"
                and c.name.endswith("_id")
                and c.name not in t.primary_key
                and c.name in keyed
                and keyed[c.name].name != f"stg_{t.name.removeprefix('fct_')}"
            ):
                add(
                    t,
                    c.name,
                    "consistency",
                    "relationships",
                    f"every {c.name} exists in its source entity",
                    to=keyed[c.name].qualified,
                    field=c.name,
                )
        if t.layer == "staging" and t.partition_by:
            add(
                t,
                t.partition_by,
                "timeliness",
                "freshness",
                f"newest row within the {request.freshness} SLA",
                # a date column only says which day: allow the day in progress plus the SLA
                max_age_minutes=int(
                    max(fresh * 2, 30)
                    + (2880 if parse_logical_type(_col(t, t.partition_by).type)[0] == "date" else 0)
                ),
            )
    for t in tables:
        if t.layer == "raw":
            add(t, None, "completeness", "row_count", "each load lands at least one row", min=1)
    monitors = [
        Monitor(
            name="freshness",
            metric="minutes since newest staged row",
            threshold=f"> {max(fresh * 2, 30):g} min",
            alert="page the owner",
        ),
        Monitor(
            name="volume",
            metric="rows loaded per run vs 7-day median",
            threshold="< 50% or > 200%",
            alert="notify the owner",
        ),
        Monitor(
            name="schema_drift",
            metric="source columns added, removed or retyped",
            threshold="any change",
            alert="block the load for removals and retypes; notify for additions",
        ),
        Monitor(
            name="pipeline_failures",
            metric="failed task runs after retries",
            threshold=">= 1",
            alert="page on-call",
        ),
        Monitor(
            name="dq_failures",
            metric="failed error-severity quality rules",
            threshold=">= 1",
            alert="quarantine the batch and notify the owner",
        ),
    ]
    if stream:
        monitors.append(
            Monitor(
                name="consumer_lag",
                metric=f"{stream} consumer lag (seconds)",
                threshold=f"> {max(fresh * 60 / 2, 30):g} s",
                alert="page on-call",
            )
        )
    monitors.append(
        Monitor(
            name="cost",
            metric="daily compute spend vs budget",
            threshold="> 120% of plan",
            alert="notify the platform team",
        )
    )
    return rules, monitors


def _capacity_and_cost(
    request: DesignRequest, tables: list[Table], warehouse: str | None, streaming: bool
) -> tuple[dict, dict]:
    rows_day = 0
    gb_day = 0.0
    for s in request.sources:
        v = s.volume
        r = v.rows_per_day or (int(v.events_per_second * 86400) if v.events_per_second else 0)
        if not r:
            r = sum(e.rows or 0 for e in s.entities) // 30 or 100_000
        rows_day += r
        width = max((len(e.columns) for e in s.entities), default=10) * 12
        gb_day += v.gb_per_day if v.gb_per_day else r * width / 1e9
    g = request.growth_factor
    gb_year = round(gb_day * 365 * 0.3, 1)  # ~3x columnar compression
    cap = {
        "rows_per_day": rows_day,
        "rows_per_day_at_growth": int(rows_day * g),
        "gb_per_day": round(gb_day, 3),
        "gb_per_day_at_growth": round(gb_day * g, 3),
        "storage_gb_year": gb_year,
        "storage_gb_year_at_growth": round(gb_year * g, 1),
        "peak_events_per_second_at_growth": round(rows_day * g / 86400 * 5, 1),
        "notes": (
            f"Peak assumed 5x the daily average. At {g:g}x, "
            + (
                "partitions/shards: "
                + str(max(3, int(rows_day * g / 86400 * 5 / 1000) + 1))
                + " stream partitions at ~1k events/s each; "
                if streaming
                else ""
            )
            + "warehouse compute scales by size tier; storage grows linearly and is pruned by retention."
        ),
    }
    compute, base, per_tb = WAREHOUSE_COMPUTE.get(warehouse or "duckdb")
    storage_cost = round(cap["storage_gb_year"] / 1000 * per_tb, 2)
    stream_cost = 700.0 if streaming else 0.0
    monthly = round(base + storage_cost + stream_cost + 150.0, 2)
    cost = {
        "currency": "USD",
        "monthly_estimate": monthly,
        "monthly_estimate_at_growth": round(
            base * max(1.0, g**0.5) + storage_cost * g + stream_cost * max(1.0, g**0.5) + 150.0, 2
        ),
        "drivers": {
            "compute": f"{compute}: ~${base:,.0f}/month",
            "storage": f"~${storage_cost:,.2f}/month for year one",
            "streaming": f"~${stream_cost:,.0f}/month" if streaming else "none",
            "orchestration": "~$150/month (managed scheduler, small)",
        },
        "levers": [
            "auto-suspend idle compute",
            "partition pruning and clustering",
            "retention on raw",
            "incremental models instead of full rebuilds",
        ],
        "budget_usd_month": request.constraints.budget_usd_month,
        "within_budget": (
            monthly <= request.constraints.budget_usd_month if request.constraints.budget_usd_month else None
        ),
    }
    return cap, cost


def _schedule(fresh: float, pattern: str) -> str:
    if fresh <= 5:
        return "*/5 * * * *"
    if fresh <= 15:
        return "*/15 * * * *"
    if fresh <= 60:
        return "0 * * * *"
    if fresh <= 360:
        return "0 */6 * * *"
    if fresh <= 1440:
        return "0 2 * * *"
    return "0 2 * * 1"


def _layers(retention_raw: int, file_format: str, table_format: str | None) -> list[Layer]:
    return [
        Layer(
            name="raw",
            purpose="as extracted, immutable, restricted",
            retention_days=retention_raw,
            file_format=file_format,
        ),
        Layer(
            name="staging", purpose="typed, deduplicated, PII masked", file_format=table_format or "parquet"
        ),
        Layer(
            name="core",
            purpose="modelled facts and dimensions (or vault)",
            file_format=table_format or "parquet",
        ),
        Layer(
            name="mart",
            purpose="metrics and wide tables for consumers",
            file_format=table_format or "parquet",
        ),
    ]


def _flows(
    request: DesignRequest,
    components: list[Component],
    warehouse: str | None,
    lake: str | None,
    streaming: bool,
) -> list[Flow]:
    flows = []
    for s in request.sources:
        method = EXTRACTION[s.kind][0]
        flows.append(Flow(source=s.name, target=f"ingest_{s.name}", mode=method))
        flows.append(
            Flow(
                source=f"ingest_{s.name}",
                target="event_log" if streaming and method in ("cdc", "stream") else "landing",
                mode=method,
            )
        )
    if streaming:
        flows.append(Flow(source="event_log", target="landing", mode="stream"))
    if any(c.name == "lakehouse" for c in components):
        flows.append(Flow(source="landing", target="lakehouse", mode="batch"))
    flows.append(
        Flow(
            source="landing",
            target="warehouse" if warehouse else "lakehouse",
            mode="batch",
            description="raw load",
        )
    )
    flows.append(Flow(source="warehouse" if warehouse else "lakehouse", target="transform", mode="transform"))
    flows.append(Flow(source="transform", target="consumers", mode="serve"))
    if any(c.name == "feature_store" for c in components):
        flows.append(Flow(source="transform", target="feature_store", mode="serve"))
    if any(c.name == "timeseries_store" for c in components):
        flows.append(Flow(source="transform", target="timeseries_store", mode="serve"))
    return flows
