"""Turn what the user gave (a file, free text, or another agent's task) into a validated DesignRequest.

Errors name the file, the line and the field. Every inference made from free text is written into
``assumptions`` so the design can show what was guessed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from agent import yamlio
from agent.errors import RequestError
from agent.models import DesignRequest, slugify
from agent.redact import redact

MAX_REQUEST_BYTES = 2_000_000
MAX_GOAL_CHARS = 20_000  # DesignRequest.goal's limit

_FRESHNESS_WORDS = {
    "real-time": 1.0,
    "realtime": 1.0,
    "real time": 1.0,
    "streaming": 1.0,
    "near-real-time": 5.0,
    "near real-time": 5.0,
    "continuous": 1.0,
    "hourly": 60.0,
    "daily": 1440.0,
    "nightly": 1440.0,
    "weekly": 10080.0,
    "monthly": 43200.0,
}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|sec|seconds?|m|min|mins|minutes?|h|hr|hours?|d|days?)$")
_UNIT_MINUTES = {"s": 1 / 60, "m": 1, "h": 60, "d": 1440}


def freshness_minutes(text: str) -> float:
    """'hourly' -> 60, '15m' -> 15, 'real-time' -> 1. Raises ValueError with the accepted forms."""
    raw = text.strip().lower()
    if raw in _FRESHNESS_WORDS:
        return _FRESHNESS_WORDS[raw]
    if m := _DURATION.match(raw):
        return float(m.group(1)) * _UNIT_MINUTES[m.group(2)[0]]
    raise ValueError(
        f"freshness {text!r} is not understood; use real-time, hourly, daily, weekly or a duration like 15m, 2h"
    )


# ---------------------------------------------------------------------------------------------------
# Files


def looks_like_path(arg: str) -> bool:
    return bool(re.search(r"\.(ya?ml|json)$", arg.strip(), re.I)) and "\n" not in arg and len(arg) < 4096


def load_request(arg: str, *, name: str | None = None) -> DesignRequest:
    """A path to a YAML/JSON request, or free text."""
    if looks_like_path(arg) or (len(arg) < 1024 and "\n" not in arg and Path(arg).is_file()):
        return load_request_file(Path(arg))
    return request_from_text(arg, name=name)


def load_request_file(path: Path) -> DesignRequest:
    if not path.exists():
        raise RequestError("request file not found", path=path)
    if path.is_dir():
        raise RequestError("is a directory, not a request file", path=path)
    try:
        size = path.stat().st_size
        if size > MAX_REQUEST_BYTES:
            raise RequestError(
                f"request file is {size:,} bytes; the limit is {MAX_REQUEST_BYTES:,}", path=path
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise RequestError(f"cannot read request file: {exc.strerror}", path=path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RequestError("request file is not UTF-8 text", path=path, line=line) from None
    return parse_request_text(text, path=path)


def parse_request_text(text: str, *, path: Path | str = "<request>") -> DesignRequest:
    path = Path(path)
    is_json = path.suffix.lower() == ".json"
    try:
        data = json.loads(text) if is_json else yamlio.load(text)
    except json.JSONDecodeError as exc:
        raise RequestError(f"malformed JSON: {exc.msg}", path=path, line=exc.lineno) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RequestError(
            f"malformed YAML: {problem}", path=path, line=mark.line + 1 if mark else None
        ) from None
    if data is None:
        raise RequestError("the request file is empty", path=path)
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a plain string"}.get(type(data), f"a {type(data).__name__}")
        raise RequestError(
            f"a request must be a mapping of fields (name, goal, sources, targets, ...), got {kind}",
            path=path,
            line=1,
        )
    return validate_request(data, path=path, text=None if is_json else text)


def validate_request(
    data: dict[str, Any], *, path: Path | str = "<request>", text: str | None = None
) -> DesignRequest:
    from pydantic import ValidationError

    data = dict(data)
    data.setdefault("name", slugify(str(data.get("goal", "design")))[:40] or "design")
    # secrets typed into the prose of a request file are caught here, as free text is in request_from_text
    if isinstance(data.get("goal"), str):
        data["goal"] = redact(data["goal"])
    if isinstance(data.get("sources"), list):
        data["sources"] = [
            {**s, "description": redact(s["description"])}
            if isinstance(s, dict) and isinstance(s.get("description"), str)
            else s
            for s in data["sources"]
        ]
    try:
        return DesignRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after"))]
        field = ".".join(str(p) for p in loc) or None
        line = yaml_line(text, loc) if text else None
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "string_pattern_mismatch":
            message = (
                f"{str(err.get('input'))[:80]!r} is not a valid identifier (a letter or underscore, then "
                "letters, digits or underscores, at most 63 characters)"
            )
        more = len(exc.errors()) - 1
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise RequestError(message, path=path, line=line, field=field) from None


def yaml_line(text: str, loc: list[Any]) -> int | None:
    """The 1-based line of the node at ``loc`` in a YAML document (nearest existing ancestor)."""
    try:
        node = yamlio.compose(text)
    except yaml.YAMLError:
        return None
    line = node.start_mark.line + 1 if node else None
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if key.value == part:
                    nxt = value
                    line = key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node = nxt
    return line


# ---------------------------------------------------------------------------------------------------
# Free text: the offline rules extractor

_SOURCE_WORDS: list[tuple[str, str]] = [
    (r"\bpostgres(ql)?\b|\bpg\b", "postgres"),
    (r"\bmysql\b|\bmariadb\b|\baurora\b", "mysql"),
    (r"\bsql ?server\b|\bmssql\b", "sqlserver"),
    (r"\boracle\b", "oracle"),
    (r"\bmongo(db)?\b", "mongodb"),
    (r"\bcassandra\b", "cassandra"),
    (r"\bdynamo(db)?\b", "dynamodb"),
    (r"\bkafka\b", "kafka"),
    (r"\bkinesis\b", "kinesis"),
    (r"\biot\b|\bsensors?\b|\btelemetry\b|\bdevices?\b", "iot"),
    (r"\binflux(db)?\b", "influxdb"),
    (r"\btimescale(db)?\b", "timescaledb"),
    (
        r"\bsalesforce\b|\bhubspot\b|\bstripe\b|\bzendesk\b|\bshopify\b|\bsaas\b|\bmarketo\b|\bnetsuite\b",
        "saas",
    ),
    (r"\brest\b|\bapi\b|\bwebhooks?\b", "rest_api"),
    (r"\bsftp\b|\bcsv\b|\bfile drops?\b|\bfiles\b", "files"),
]
_WAREHOUSE_WORDS = {
    "snowflake": "snowflake",
    "bigquery": "bigquery",
    "big query": "bigquery",
    "redshift": "redshift",
    "databricks": "databricks",
    "duckdb": "duckdb",
}
_LAKE_WORDS = {
    "adls": "adls",
    "azure data lake": "adls",
    "gcs": "gcs",
    "google cloud storage": "gcs",
    "s3": "s3",
    "lakehouse": "s3",
    "data lake": "s3",
}
_FORMAT_WORDS = {"delta": "delta", "iceberg": "iceberg", "parquet": "parquet"}
_ORCHESTRATOR_WORDS = {"airflow": "airflow", "dagster": "dagster", "prefect": "prefect"}
_CONSUMER_WORDS = {
    "looker": "looker",
    "tableau": "tableau",
    "power bi": "power_bi",
    "powerbi": "power_bi",
    "metabase": "metabase",
    "superset": "superset",
    "machine learning": "ml",
    " ml ": "ml",
    "feature store": "feature_store",
    "dashboards": "bi",
    "reverse etl": "reverse_etl",
}

# Entities a free-text request usually means, so the offline planner can draft real tables.
ENTITY_HINTS: dict[str, list[tuple[str, str, bool]]] = {
    "orders": [
        ("order_id", "bigint", False),
        ("customer_id", "bigint", False),
        ("email", "string", True),
        ("status", "string", False),
        ("amount", "decimal(12,2)", False),
        ("currency", "string", False),
        ("created_at", "timestamp", False),
        ("updated_at", "timestamp", False),
    ],
    "customers": [
        ("customer_id", "bigint", False),
        ("email", "string", True),
        ("full_name", "string", True),
        ("phone", "string", True),
        ("country", "string", False),
        ("created_at", "timestamp", False),
        ("updated_at", "timestamp", False),
    ],
    "events": [
        ("event_id", "string", False),
        ("user_id", "string", False),
        ("event_type", "string", False),
        ("event_ts", "timestamp", False),
        ("ip_address", "string", True),
        ("properties", "json", False),
    ],
    "payments": [
        ("payment_id", "bigint", False),
        ("order_id", "bigint", False),
        ("amount", "decimal(12,2)", False),
        ("card_last4", "string", True),
        ("status", "string", False),
        ("created_at", "timestamp", False),
        ("updated_at", "timestamp", False),
    ],
    "readings": [
        ("reading_id", "string", False),
        ("device_id", "string", False),
        ("metric", "string", False),
        ("value", "float", False),
        ("reading_ts", "timestamp", False),
    ],
    "contacts": [
        ("contact_id", "string", False),
        ("email", "string", True),
        ("full_name", "string", True),
        ("company", "string", False),
        ("lifecycle_stage", "string", False),
        ("updated_at", "timestamp", False),
    ],
    "tickets": [
        ("ticket_id", "bigint", False),
        ("requester_email", "string", True),
        ("subject", "string", False),
        ("status", "string", False),
        ("priority", "string", False),
        ("created_at", "timestamp", False),
        ("updated_at", "timestamp", False),
    ],
}
_ENTITY_ALIASES = {
    "order": "orders",
    "customer": "customers",
    "user": "customers",
    "users": "customers",
    "event": "events",
    "clickstream": "events",
    "clicks": "events",
    "payment": "payments",
    "transactions": "payments",
    "reading": "readings",
    "telemetry": "readings",
    "sensor": "readings",
    "contact": "contacts",
    "crm": "contacts",
    "leads": "contacts",
    "ticket": "tickets",
    "support": "tickets",
}


def _find(words: dict[str, str], text: str) -> list[str]:
    found = []
    for word, value in words.items():
        if re.search(r"(?<![a-z])" + re.escape(word.strip()) + r"(?![a-z])", text) and value not in found:
            found.append(value)
    return found


def request_from_text(text: str, *, name: str | None = None) -> DesignRequest:
    """The offline extractor: keywords and patterns, every guess recorded as an assumption."""
    if len(text) > MAX_GOAL_CHARS:  # before any pattern runs over it
        raise RequestError(
            f"the request text is {len(text):,} characters; the limit is {MAX_GOAL_CHARS:,}", field="goal"
        )
    goal = redact(" ".join(text.split()))
    if not goal:
        raise RequestError("the request is empty", field="goal")
    low = f" {goal.lower()} "
    assumptions: list[str] = []

    warehouses = _find(_WAREHOUSE_WORDS, low)
    # "into postgres" is a target; elsewhere postgres is a source
    if re.search(r"\b(into|to) (a )?postgres", low) and re.search(r"\bfrom\b", low):
        warehouses.append("postgres")
    source_kinds: list[str] = []
    for pattern, kind in _SOURCE_WORDS:
        if re.search(pattern, low) and kind not in source_kinds:
            if kind == "postgres" and "postgres" in warehouses:
                continue
            source_kinds.append(kind)
    if "kafka" in source_kinds and "iot" in source_kinds:
        source_kinds.remove("iot")
    if "saas" in source_kinds and "rest_api" in source_kinds:
        source_kinds.remove("rest_api")
    if not source_kinds:
        source_kinds = ["postgres"]
        assumptions.append("No source system was named; assumed an OLTP Postgres database.")

    lakes = [lk for lk in _find(_LAKE_WORDS, low) if not (lk == "s3" and "s3" in source_kinds)]
    formats = _find(_FORMAT_WORDS, low)
    if not warehouses and not lakes:
        if formats or "lakehouse" in low:
            lakes = ["s3"]
        else:
            warehouses = ["snowflake"]
            assumptions.append("No target was named; assumed Snowflake as the warehouse.")
    targets: list[dict[str, Any]] = [{"warehouse": w} for w in warehouses[:1]]
    if lakes:
        fmt = formats[0] if formats else "delta"
        if not formats:
            assumptions.append("A lake target without a table format; assumed Delta Lake.")
        if targets:
            targets[0].update({"lake": lakes[0], "table_format": fmt})
        else:
            targets.append({"lake": lakes[0], "table_format": fmt})

    freshness = None
    if m := re.search(r"every (\d+)\s*(seconds?|minutes?|mins?|hours?)", low):
        freshness = f"{m.group(1)}{m.group(2)[0]}"
    else:
        for word in (
            "real-time",
            "realtime",
            "real time",
            "near real-time",
            "streaming",
            "hourly",
            "daily",
            "nightly",
            "weekly",
        ):
            if word in low:
                freshness = word
                break
    if freshness is None:
        freshness = "real-time" if set(source_kinds) & {"kafka", "kinesis", "iot"} else "daily"
        assumptions.append(f"No freshness was stated; assumed {freshness}.")

    compliance = [c for c in ("gdpr", "hipaa", "pci", "ccpa", "sox") if re.search(rf"\b{c}\b", low)]
    pii_words = set()
    for m in re.finditer(
        r"\b([a-z_ ,]{1,120}?)\s+(?:is|are|contain|contains)\s+(?:pii|personal data|sensitive)", low
    ):
        for phrase in re.split(r",|\band\b", m.group(1)):
            pii_words.update(_pii_candidates(phrase))

    entity_names: list[str] = []
    for word in re.findall(r"[a-z]+", low):
        canon = word if word in ENTITY_HINTS else _ENTITY_ALIASES.get(word)
        if canon and canon not in entity_names:
            entity_names.append(canon)
    if not entity_names:
        entity_names = (
            ["events"]
            if set(source_kinds) & {"kafka", "kinesis"}
            else (["readings"] if "iot" in source_kinds else ["orders"])
        )
        assumptions.append(f"No entities were named; drafted a '{entity_names[0]}' entity to design against.")
    else:
        assumptions.append(
            f"Entity columns for {', '.join(entity_names)} are drafted from common schemas; "
            "replace them with the real ones."
        )

    entities = []
    for ename in entity_names[:4]:
        cols = []
        for cname, ctype, pii in ENTITY_HINTS[ename]:
            stem = cname.removesuffix("_address")
            flagged = pii or any(p and (p in cname or p == stem) for p in pii_words)
            cols.append({"name": cname, "type": ctype, "pii": flagged})
        entities.append({"name": ename, "columns": cols, "primary_key": [ENTITY_HINTS[ename][0][0]]})

    sources = []
    for i, kind in enumerate(source_kinds[:3]):
        sources.append(
            {
                "name": f"{kind}_src" if i else f"{kind}_source",
                "kind": kind,
                "entities": entities if i == 0 else [],
            }
        )

    constraints: dict[str, Any] = {}
    if orch := _find(_ORCHESTRATOR_WORDS, low):
        constraints["orchestrator"] = orch[0]
    for cloud in ("aws", "gcp", "azure"):
        if re.search(rf"\b{cloud}\b", low):
            constraints["cloud"] = cloud
    if re.search(r"data vault", low):
        constraints["modelling"] = "data_vault"
    elif re.search(r"one big table|\bobt\b", low):
        constraints["modelling"] = "one_big_table"

    data = {
        "name": name or _name_from(goal, source_kinds, warehouses or lakes),
        "goal": goal,
        "sources": sources,
        "targets": targets,
        "freshness": freshness,
        "compliance": compliance,
        "consumers": _find(_CONSUMER_WORDS, low),
        "constraints": constraints,
        "assumptions": assumptions,
    }
    return validate_request(data, path="<free text>")


_GENERIC_COLUMN_WORDS = {"id", "name", "number", "address", "code", "date", "value"}


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("sses") or word.endswith("shes"):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        return word[:-1]
    return word


def _pii_candidates(phrase: str) -> set[str]:
    """Column-name stems a phrase such as "user ids" or "email addresses" means: user_id, email_address.

    A generic last word ("ids", "names") on its own would flag every *_id column, so it only counts
    joined with the word before it.
    """
    words = [w for w in re.split(r"[\s]+", phrase.strip()) if w]
    if not words:
        return set()
    last = _singular(words[-1])
    found = set()
    if len(words) >= 2:
        found.add(f"{_singular(words[-2])}_{last}")
    if len(words) == 1 or last not in _GENERIC_COLUMN_WORDS:
        found.add(last)
    return found


def _name_from(goal: str, sources: list[str], targets: list[str]) -> str:
    return slugify(f"{sources[0]}_to_{targets[0] if targets else 'warehouse'}")
