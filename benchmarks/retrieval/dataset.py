"""A synthetic, seeded corpus of past designs and queries with graded relevance.

Each design is drawn from facets (domain, source kind, target, pattern, compliance) and written in free text
with varied wording; each query is a request in other words (synonyms, a different order, no facet names
spelled the same way every time). Relevance is graded from the facets a data engineer would judge by:

    3  same source kind, target, pattern and domain
    2  same source kind, target and pattern (another domain)
    1  same source kind and target, or same target and pattern
    0  otherwise
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

DOMAINS = {
    "ecommerce": ["orders", "customers", "carts", "products", "returns"],
    "healthcare": ["claims", "patients", "encounters", "providers", "prescriptions"],
    "finance": ["payments", "ledger_entries", "accounts", "card_transactions", "chargebacks"],
    "iot": ["sensor_readings", "devices", "alarms", "firmware_versions", "sites"],
    "marketing": ["campaigns", "ad_impressions", "clicks", "conversions", "audiences"],
    "logistics": ["shipments", "parcels", "routes", "warehouses", "delivery_events"],
    "gaming": ["player_sessions", "matches", "purchases", "inventory_items", "players"],
    "saas": ["subscriptions", "invoices", "tenants", "feature_usage", "seats"],
}
SOURCES = {
    "postgres": ["PostgreSQL", "Postgres", "an Aurora PostgreSQL database"],
    "mysql": ["MySQL", "a MySQL 8 primary", "Aurora MySQL"],
    "mongodb": ["MongoDB", "MongoDB Atlas", "a Mongo replica set"],
    "kafka": ["Kafka topics", "Apache Kafka", "an MSK cluster"],
    "s3": ["CSV file drops in S3", "daily S3 file exports", "partner files landing in an S3 bucket"],
    "rest_api": ["a REST API", "a paginated HTTP API", "a vendor REST endpoint"],
    "kinesis": ["Kinesis Data Streams", "AWS Kinesis", "a Kinesis stream"],
    "sqlserver": ["SQL Server", "Microsoft SQL Server", "an MSSQL OLTP database"],
}
TARGETS = {
    "snowflake": ["Snowflake", "a Snowflake warehouse"],
    "bigquery": ["BigQuery", "Google BigQuery"],
    "redshift": ["Redshift", "Amazon Redshift"],
    "databricks": ["Databricks Delta tables", "a Databricks lakehouse"],
    "iceberg": ["Apache Iceberg tables", "an Iceberg lake on S3"],
    "postgres": ["a Postgres reporting database", "PostgreSQL serving tables"],
}
PATTERNS = {
    "batch": ["nightly batch loads", "scheduled batch ELT", "a daily batch pipeline"],
    "cdc": ["change data capture with Debezium", "log-based CDC", "CDC replication with merge"],
    "streaming": ["real-time streaming", "a continuous streaming pipeline", "sub-minute streaming ingestion"],
    "lambda": ["a lambda architecture (batch plus speed layer)", "batch and streaming paths merged"],
}
COMPLIANCE = ["gdpr", "hipaa", "pci", None]
EXTRAS = [
    "Partitioned by event date and clustered by customer key.",
    "dbt models with SCD type 2 dimensions.",
    "Airflow orchestrates the loads with retries and SLAs.",
    "Great Expectations style quality rules on completeness and freshness.",
    "Costs are kept down with auto-suspend and incremental models.",
    "Late-arriving records are merged by primary key and updated_at.",
    "Schema changes are versioned and additive only.",
    "Data contracts define ownership and retention.",
]


@dataclass
class Doc:
    id: str
    text: str
    facets: dict[str, str]
    rating: float | None = None
    age_days: float = 0.0
    use_count: int = 0


@dataclass
class Query:
    id: str
    text: str
    facets: dict[str, str]
    grades: dict[str, int] = field(default_factory=dict)


def facet_set(f: dict[str, str]) -> set[str]:
    out = {f"source:{f['source']}", f"target:{f['target']}", f"pattern:{f['pattern']}"}
    if f.get("compliance"):
        out.add(f"compliance:{f['compliance']}")
    return out


def grade(q: dict[str, str], d: dict[str, str]) -> int:
    same = {k: q[k] == d[k] for k in ("source", "target", "pattern", "domain")}
    if all(same.values()):
        return 3
    if same["source"] and same["target"] and same["pattern"]:
        return 2
    if (same["source"] and same["target"]) or (same["target"] and same["pattern"]):
        return 1
    return 0


def _facets(rng: random.Random) -> dict[str, str]:
    return {
        "domain": rng.choice(list(DOMAINS)),
        "source": rng.choice(list(SOURCES)),
        "target": rng.choice(list(TARGETS)),
        "pattern": rng.choice(list(PATTERNS)),
        "compliance": rng.choice(COMPLIANCE) or "",
    }


def _doc_text(rng: random.Random, f: dict[str, str], n: int) -> str:
    ents = rng.sample(DOMAINS[f["domain"]], 3)
    comp = f" Subject to {f['compliance'].upper()}: PII columns masked." if f["compliance"] else ""
    return (
        f"Design {f['domain']}-{n}: ingest {', '.join(ents)} from {rng.choice(SOURCES[f['source']])} into "
        f"{rng.choice(TARGETS[f['target']])} using {rng.choice(PATTERNS[f['pattern']])} for the "
        f"{f['domain']} team.{comp} {' '.join(rng.sample(EXTRAS, 2))}"
    )


def _query_text(rng: random.Random, f: dict[str, str]) -> str:
    ent = rng.choice(DOMAINS[f["domain"]])
    src = rng.choice(SOURCES[f["source"]])
    tgt = rng.choice(TARGETS[f["target"]])
    pat = rng.choice(PATTERNS[f["pattern"]])
    forms = [
        f"We need {ent} data from {src} in {tgt}; {pat}.",
        f"{pat} of {ent} into {tgt}, source is {src}",
        f"Move {f['domain']} {ent} from {src} to {tgt} with {pat}",
    ]
    return rng.choice(forms)


def build(n_docs: int = 240, n_queries: int = 40, seed: int = 7) -> tuple[list[Doc], list[Query]]:
    rng = random.Random(seed)
    docs: list[Doc] = []
    # every query's facet combination has 2-3 designs in the same domain, plus random designs around them
    combos = [_facets(rng) for _ in range(n_queries)]
    for c in combos:
        for _ in range(rng.randint(2, 3)):
            docs.append(Doc(f"d{len(docs):04d}", "", dict(c, compliance=rng.choice(COMPLIANCE) or "")))
    while len(docs) < n_docs:
        docs.append(Doc(f"d{len(docs):04d}", "", _facets(rng)))
    for n, d in enumerate(docs):
        d.text = _doc_text(rng, d.facets, n)
        d.rating = rng.choice([None, None, None, 2.0, 3.0, 4.0, 5.0])
        d.age_days = rng.uniform(0, 720)
        d.use_count = rng.choice([0, 0, 0, 1, 2, 5, 12])
    queries = []
    for i, c in enumerate(combos):
        q = Query(f"q{i:02d}", _query_text(rng, c), c)
        q.grades = {d.id: g for d in docs if (g := grade(c, d.facets))}
        queries.append(q)
    return docs, queries


def filler(n: int, seed: int = 11) -> list[tuple[str, str, dict[str, str]]]:
    """n more synthetic designs for the latency runs: (id, text, facets)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        f = _facets(rng)
        out.append((f"f{i:06d}", _doc_text(rng, f, i), f))
    return out
