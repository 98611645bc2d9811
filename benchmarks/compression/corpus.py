"""A synthetic but realistic corpus of data-platform policies with annotated must-keep facts.

Facts are hand-written normative clauses; each request paraphrases the situation the facts govern
(it does not quote them). The rest of the corpus is filler: real-looking rules about other subjects
drawn from the same vocabulary, and decoy prose that shares the facts' words but imposes no rule.
``build(root, scale)`` writes Markdown (with and without front matter), YAML rule files and plain text;
scale 1 is about 40k tokens, scale ~26 about 1 MB. Deterministic for a given scale.
"""

from __future__ import annotations

import random
from pathlib import Path

import yaml

# topic -> (file stem, policy title, applies_to, section title, facts)
TOPICS: dict[str, tuple[str, str, list[str], str, list[str]]] = {
    "kafka": (
        "streaming",
        "Streaming platform",
        [],
        "Topics and consumers",
        [
            "Every Kafka topic MUST have a registered Avro or Protobuf schema with BACKWARD compatibility enforced by the schema registry.",
            "Events that fail deserialisation MUST be routed to a dead-letter topic and retained there for 14 days.",
            "Consumers MUST commit offsets only after the batch has been durably written to the sink.",
            "Topic retention MUST be at least 7 days so that a consumer outage over a long weekend can be replayed.",
        ],
    ),
    "cdc": (
        "replication",
        "Database replication",
        [],
        "Change data capture",
        [
            "CDC connectors MUST read from a logical replication slot and MUST NOT run full-table scans against the primary during business hours.",
            "Replication slot lag MUST raise an alert when it exceeds 10 GB of retained WAL.",
            "Deletes captured by CDC MUST be applied as soft deletes with an is_deleted flag and a deleted_at timestamp.",
            "Initial snapshots SHOULD be taken from a read replica rather than the primary.",
        ],
    ),
    "pii": (
        "privacy",
        "Privacy and personal data",
        ["pii"],
        "Protecting personal data",
        [
            "Columns classified as PII MUST be masked by a dynamic masking policy for every role except pii_reader.",
            "Email addresses MUST be hashed with a keyed HMAC-SHA256 before they leave the raw layer.",
            "PII MUST NOT appear in log messages, error payloads or alert text.",
            "Access to unmasked PII MUST be approved by the data owner and reviewed every 90 days.",
        ],
    ),
    "gdpr": (
        "privacy",
        "Privacy and personal data",
        ["pii"],
        "Data subject rights",
        [
            "Erasure requests MUST be completed within 30 days across every layer, including backups.",
            "Every table holding personal data MUST carry a subject key so that a person's rows can be located for erasure.",
            "The erasure job MUST write a tombstone record so that a replay of raw data does not resurrect erased rows.",
            "Backups containing personal data MUST expire within 35 days.",
        ],
    ),
    "api": (
        "ingestion",
        "Ingestion standards",
        [],
        "SaaS and REST APIs",
        [
            "API extractors MUST respect the vendor rate limit and back off exponentially with jitter on HTTP 429.",
            "Incremental API loads MUST use a high-water mark on the updated_at cursor and overlap the previous window by at least 1 hour.",
            "API credentials MUST be read from the secrets manager at runtime and MUST NOT be stored in the repository or in DAG code.",
            "Raw API responses SHOULD be stored unmodified as JSON in the landing zone before parsing.",
        ],
    ),
    "freshness": (
        "serving",
        "Serving and consumption",
        [],
        "Freshness and dashboards",
        [
            "Every published dataset MUST declare a freshness SLA and a monitor that pages the owning team when it is breached.",
            "Freshness breaches on tier-1 dashboards MUST page the on-call engineer within 15 minutes.",
            "Dashboards MUST read only from the gold layer and never from staging or raw tables.",
            "Tier-1 dashboards SHOULD display a last-updated timestamp to viewers.",
        ],
    ),
    "modelling": (
        "modelling",
        "Modelling standards",
        [],
        "Dimensional models",
        [
            "Fact tables MUST be named fct_<business_process> and dimension tables dim_<entity>.",
            "Every dimension MUST have a surrogate key generated in the warehouse rather than the source natural key.",
            "Slowly changing customer attributes MUST be modelled as SCD type 2 with valid_from, valid_to and is_current columns.",
            "Monetary amounts MUST be stored as DECIMAL(38, 9) with a separate ISO 4217 currency column, and FLOAT MUST NOT be used for money.",
        ],
    ),
    "backfill": (
        "operations",
        "Pipeline operations",
        [],
        "Backfills and reprocessing",
        [
            "Backfills MUST be idempotent: rerunning a date range MUST produce the same rows without duplicates.",
            "Backfills covering more than 30 days of data MUST be announced to consumers one business day ahead.",
            "Backfills MUST run in a separate pool with at most 4 concurrent tasks so that they cannot starve scheduled runs.",
            "A backfill MUST NOT overwrite a partition that is under legal hold.",
        ],
    ),
    "cost": (
        "cost",
        "Cost management",
        [],
        "Compute and spend",
        [
            "Every virtual warehouse or compute cluster MUST auto-suspend after at most 5 minutes idle.",
            "Queries that scan more than 1 TB MUST be approved by the cost-review role before they are scheduled.",
            "All cloud resources MUST carry cost_center, owner and environment tags.",
            "Development environments SHOULD use the smallest warehouse size available.",
        ],
    ),
    "quality": (
        "quality",
        "Data quality",
        [],
        "Tests and gates",
        [
            "Every model MUST have not-null and unique tests on its primary key.",
            "Quality checks that fail at error severity MUST block publication of the dataset to consumers.",
            "Row-count checks MUST compare each load with the trailing 7-day average and alert on a deviation above 30 percent.",
            "Referential integrity between facts and dimensions SHOULD be tested nightly.",
        ],
    ),
    "ml": (
        "ml",
        "Machine learning data",
        [],
        "Features and training sets",
        [
            "Training datasets MUST be point-in-time correct, joining every feature as of the label timestamp.",
            "Feature tables MUST record the code version and the source snapshot that produced them.",
            "Sensitive attributes such as race, religion or health status MUST NOT be used as model features without an approved fairness review.",
            "Features served online SHOULD be computed by the same code as the offline features.",
        ],
    ),
    "hipaa": (
        "hipaa",
        "Health data",
        ["hipaa", "phi"],
        "Protected health information",
        [
            "PHI MUST be stored only in the dedicated HIPAA account with customer-managed keys.",
            "Every access to PHI MUST be logged, and those audit logs MUST be retained at least 6 years.",
            "PHI MUST NOT be copied to non-production environments, and test data for health systems MUST be synthetic.",
            "A Business Associate Agreement MUST be in place before PHI is sent to any vendor.",
        ],
    ),
    "pci": (
        "pci",
        "Payment card data",
        ["pci"],
        "Cardholder data",
        [
            "Primary account numbers MUST NOT be stored after authorisation; only the token and the last four digits may be kept.",
            "Systems in PCI scope MUST sit in a segmented network with no inbound access from the analytics VPC.",
            "Cardholder data MUST be encrypted with AES-256 keys that are rotated every 12 months.",
            "Audit logs for systems in PCI scope MUST be retained at least 12 months, with 3 months immediately searchable.",
        ],
    ),
    "orchestration": (
        "operations",
        "Pipeline operations",
        [],
        "Orchestration",
        [
            "Every task MUST have at least 2 retries with exponential backoff and an execution timeout.",
            "DAGs MUST be deployed from the main branch through CI, and DAG files MUST NOT be edited on the scheduler host.",
            "Tasks MUST be idempotent so that a retry never duplicates rows.",
            "Every DAG MUST declare an owner and an on-call alert channel.",
        ],
    ),
    "files": (
        "ingestion",
        "Ingestion standards",
        [],
        "Partner file drops",
        [
            "Partner files MUST land in a quarantine prefix and be checked for schema, encoding and row count before promotion.",
            "Files that fail validation MUST be moved to a rejected prefix and the partner notified within 1 business day.",
            "Landing buckets MUST block public access and require TLS for every request.",
            "Processed files SHOULD be archived to cold storage after 90 days.",
        ],
    ),
    "contracts": (
        "contracts",
        "Data contracts",
        [],
        "Schema change",
        [
            "Breaking schema changes such as dropping or renaming a column or narrowing a type MUST go through a new major contract version with a 30-day deprecation notice.",
            "Producers MUST publish an ODCS data contract for every dataset that another team consumes.",
            "Additive nullable columns MAY be added without a new major version.",
            "Consumers MUST pin the major version of each contract they read.",
        ],
    ),
    "lake": (
        "lake",
        "Lake storage",
        [],
        "Raw and bronze layers",
        [
            "Raw landing data containing PII MUST be deleted within 30 days of ingestion.",
            "Raw landing data without PII MUST be retained for 13 months to allow year-over-year replay.",
            "Lake tables MUST use Iceberg or Delta, with snapshots expired after 7 days.",
            "Small files SHOULD be compacted into files of at least 128 MB.",
        ],
    ),
}

REQUESTS: dict[str, str] = {
    "kafka": "Design a pipeline that takes clickstream events off our Kafka event bus and lands them in the lakehouse. Some messages are malformed and cannot be decoded, we must be able to replay after a consumer outage, and nothing may be lost if the sink write fails.",
    "cdc": "Replicate the orders and customers tables from our production Postgres database into Snowflake continuously, including rows that get deleted, without hurting the primary.",
    "pii": "Analysts need to query customer tables that include email addresses and phone numbers in the warehouse; how should the sensitive columns be protected and who gets to see them?",
    "gdpr": "A customer invoked their right to be forgotten under GDPR; we need a process that removes their personal data across the platform, including backups and replays.",
    "api": "Pull accounts and opportunities from the Salesforce REST API every hour into the warehouse. The vendor throttles us, we need the records changed since the last run, and the connection needs a password.",
    "freshness": "The executive revenue dashboard must be updated hourly; design the serving tables and what happens when the data is late.",
    "modelling": "Model sales transactions in the warehouse as a star schema with customer and product attributes that change over time, and prices in several currencies.",
    "backfill": "We found a bug in a transformation and need to reprocess the last six months of order history without duplicating data or disrupting the daily runs.",
    "cost": "Finance says our Snowflake bill doubled; set up the compute and queries for the new marketing pipeline so spend stays under control.",
    "quality": "Add tests to the new subscriptions model so that bad data never reaches consumers and we notice when a load is suspiciously small.",
    "ml": "Build a training dataset and feature pipeline for a churn prediction model, with the features also served online.",
    "hipaa": "Ingest patient encounter records from the hospital EHR for a healthcare analytics product; developers want realistic data to test with.",
    "pci": "Design storage for card payment transactions from our payment processor for fraud analytics.",
    "orchestration": "Write the Airflow DAGs for the nightly inventory pipeline so that failures recover on their own and someone is told.",
    "files": "A logistics partner sends CSV files over SFTP into S3 each night; some files arrive with the wrong columns or the wrong encoding.",
    "contracts": "The orders service team wants to rename and drop columns in the events they publish, which three downstream teams read.",
    "lake": "Set up the raw and bronze layers of the new data lake on S3 for web and CRM data, including how long we keep things.",
}

# Filler rules: true rules about other subjects, in the same vocabulary.
SUBJECTS = [
    "Notebook exports",
    "Semantic layer metrics",
    "Looker explores",
    "dbt snapshots",
    "Terraform modules",
    "Service accounts",
    "Staging schemas",
    "Reverse ETL syncs",
    "Airbyte connections",
    "Catalog entries",
    "Glossary terms",
    "Sandbox schemas",
    "Spark jobs",
    "Query tags",
    "Lineage graphs",
    "Data products",
    "Incident postmortems",
    "Runbooks",
    "Access reviews",
    "Vendor datasets",
    "Kafka Connect workers",
    "Snowflake stages",
    "Postgres read replicas",
    "S3 access logs",
    "Dashboard tiles",
    "Airflow pools",
    "Scheduler variables",
    "Feature flags",
    "Warehouse roles",
    "Row access policies",
    "Materialized views",
    "Export jobs",
    "Survey responses",
    "Marketing audiences",
    "Geospatial layers",
    "Currency rate tables",
    "Holiday calendars",
    "Sample datasets",
    "Benchmark queries",
    "On-call handovers",
    "Data sharing agreements",
    "External tables",
    "UDF libraries",
    "Secrets rotation jobs",
    "Cluster policies",
    "Jupyter kernels",
]
PREDICATES = [
    "MUST be reviewed by the platform guild every {n} days",
    "SHOULD be documented in the catalog with a business description and an example query",
    "MUST be tagged with the owning domain and a support channel",
    "MUST NOT be created without a ticket reference in the change log",
    "MAY be deleted after {n} days without use",
    "SHOULD follow the shared naming convention for the {d} domain",
    "MUST be provisioned through Terraform rather than the console",
    "SHOULD be load-tested with {n} times the expected volume before launch",
    "MUST expose their lineage to the catalog within {n} hours of deployment",
    "MUST NOT grant write access to analyst roles",
    "SHOULD be reviewed for unused columns every quarter",
    "MUST be versioned in git and reviewed by a second engineer",
    "MAY be shared with partner teams after a privacy review",
    "SHOULD emit usage metrics to the platform observability stack",
    "MUST record the requester and the business justification",
    "MUST be recreated from code in a disaster-recovery drill at least once a year",
    "SHOULD keep at most {n} versions in the registry",
    "MUST NOT depend on personal user credentials",
    "SHOULD be benchmarked against the previous release before promotion",
    "MUST declare the expected daily row volume in their metadata",
    "MAY use the shared {d} compute pool outside business hours",
    "SHOULD document known data gaps and their dates",
    "MUST have an alert on failure routed to the {d} team",
    "MUST be removed from the catalog when they are decommissioned",
]
DOMAINS = [
    "finance",
    "marketing",
    "sales",
    "logistics",
    "support",
    "product",
    "hr",
    "risk",
    "growth",
    "platform",
]
SECTION_NAMES = [
    "General",
    "Ownership",
    "Lifecycle",
    "Access",
    "Change management",
    "Documentation",
    "Operations",
    "Review",
    "Tooling",
    "Observability",
    "Exceptions",
    "Onboarding",
]
DECOYS = [
    "In 2022 the platform team debated whether {w1} and {w2} deserved their own guideline; the notes are in the wiki.",
    "Engineers often ask about {w1} when they first meet {w2}, which is why this page exists.",
    "Historically the {d} team handled {w1} by hand, and {w2} was tracked in a spreadsheet.",
    "The vendor documentation describes {w1} in detail, and a summary of {w2} is linked from the handbook.",
    "A 2021 retrospective mentioned {w1} alongside {w2} as a source of confusion for new joiners.",
    "This section gives background on {w1}; the history of {w2} is covered in the onboarding course.",
]
DECOY_WORDS = [
    "dead-letter topics",
    "replication slots",
    "masking policies",
    "erasure requests",
    "rate limits",
    "freshness monitors",
    "surrogate keys",
    "backfills",
    "auto-suspend",
    "row-count checks",
    "feature tables",
    "PHI audit logs",
    "cardholder data",
    "DAG retries",
    "quarantine prefixes",
    "contract versions",
    "snapshot expiry",
    "schema registry",
    "soft deletes",
    "HMAC hashing",
    "cost tags",
    "tier-1 dashboards",
    "point-in-time joins",
    "tokenised card numbers",
    "partner files",
    "Iceberg tables",
    "consumer offsets",
]


def _filler_rule(rng: random.Random) -> str:
    subject = rng.choice(SUBJECTS)
    pred = rng.choice(PREDICATES).format(
        n=rng.choice([2, 3, 5, 7, 10, 14, 30, 60, 90, 180]), d=rng.choice(DOMAINS)
    )
    tail = rng.choice(
        ["", "", f" in the {rng.choice(DOMAINS)} domain", " unless an exception is recorded", ""]
    )
    return f"{subject} {pred}{tail}."


def _decoy(rng: random.Random) -> str:
    w1, w2 = rng.sample(DECOY_WORDS, 2)
    return rng.choice(DECOYS).format(w1=w1, w2=w2, d=rng.choice(DOMAINS))


def build(root: Path, scale: float = 1.0, seed: int = 7, layout: str = "scattered") -> dict[str, list[str]]:
    """Write the corpus under root; return {request key: [must-keep fact texts]}.

    ``layout="grouped"`` puts each request's facts together in one section (easy for paragraph
    retrieval); ``"scattered"`` (default) keeps the first two there and moves the others into other
    sections of the same document, as real policies are organised by their own axes, not by request.
    """
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict] = {}
    for _key, (stem, title, tags, section, facts) in TOPICS.items():
        doc = files.setdefault(stem, {"title": title, "tags": tags, "sections": []})
        doc["sections"].append((section, list(facts)))
    n_filler = int(1000 * scale)
    stems = sorted(files)
    extra_per_file = max(1, n_filler // len(stems))
    for stem in stems:
        doc = files[stem]
        filler_sections = []
        names = rng.sample(SECTION_NAMES, k=min(len(SECTION_NAMES), 3 + int(2 * scale**0.5)))
        for i in range(extra_per_file):
            if i % 12 == 0:
                name = names[(i // 12) % len(names)]
                if i // 12 >= len(names):
                    name = f"{name} {i // 12 // len(names) + 1}"
                filler_sections.append((name, []))
            filler_sections[-1][1].append(_filler_rule(rng))
        # the facts' section sits somewhere in the middle or the end, never reliably at the head
        for section, facts in doc["sections"]:
            here = facts if layout == "grouped" else facts[:2]
            for fact in facts[len(here) :]:
                clauses = rng.choice(filler_sections)[1]
                clauses.insert(rng.randint(0, len(clauses)), fact)
            filler_sections.insert(rng.randint(1, len(filler_sections)), (section, here))
        doc["all_sections"] = filler_sections
    for n, stem in enumerate(stems):
        doc = files[stem]
        if n % 5 == 3:  # YAML rule file
            rules = []
            for section, clauses in doc["all_sections"]:
                for clause in clauses:
                    rules.append({"section": section, "text": clause})
            data = {"id": stem, "title": doc["title"], "rules": rules}
            if doc["tags"]:
                data["applies_to"] = doc["tags"]
            (root / f"{stem}.yaml").write_text(yaml.safe_dump(data, sort_keys=False, width=1000))
            continue
        out = []
        if n % 5 != 4:
            if n % 2 == 0:
                out.append(f"---\nid: {stem}\ntitle: {doc['title']}\n")
                if doc["tags"]:
                    out.append(f"applies_to: [{', '.join(doc['tags'])}]\n")
                out.append("---\n")
            out.append(f"# {doc['title']}\n\n{_decoy(rng)} {_decoy(rng)}\n")
            for section, clauses in doc["all_sections"]:
                out.append(f"\n## {section}\n\n{_decoy(rng)}\n\n")
                for clause in clauses:
                    out.append(f"- {clause}\n")
                    if rng.random() < 0.15:
                        out.append(f"\n{_decoy(rng)}\n\n")
            (root / f"{stem}.md").write_text("".join(out))
        else:  # plain text: one clause per line, paragraphs of prose between
            for _section, clauses in doc["all_sections"]:
                out.append(f"{_decoy(rng)}\n\n")
                out.extend(f"{c}\n" for c in clauses)
                out.append("\n")
            (root / f"{stem}.txt").write_text("".join(out))
    return {key: list(TOPICS[key][4]) for key in TOPICS}
