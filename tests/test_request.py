"""Turning what a user gives into a DesignRequest: freshness, free text, YAML errors, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import RequestError
from agent.models import SOURCE_KINDS
from agent.redact import contains_secret, redact
from agent.request import freshness_minutes, load_request, load_request_file, request_from_text

# ---------------------------------------------------------------------------------------------------
# freshness


@pytest.mark.parametrize(
    "text, minutes",
    [
        ("real-time", 1.0),
        ("Real Time", 1.0),
        ("hourly", 60.0),
        ("daily", 1440.0),
        ("nightly", 1440.0),
        ("weekly", 10080.0),
        ("15m", 15.0),
        ("15 min", 15.0),
        ("2h", 120.0),
        ("1.5 hours", 90.0),
        ("30s", 0.5),
        ("1d", 1440.0),
        ("  5 minutes ", 5.0),
    ],
)
def test_freshness_minutes(text: str, minutes: float) -> None:
    assert freshness_minutes(text) == pytest.approx(minutes)


@pytest.mark.parametrize("text", ["whenever", "15", "fortnightly", "m15", ""])
def test_freshness_rejects_unknown_forms_and_says_which_work(text: str) -> None:
    with pytest.raises(ValueError, match="real-time, hourly, daily"):
        freshness_minutes(text)


# ---------------------------------------------------------------------------------------------------
# free text


def _pii(req) -> dict[str, bool]:
    return {f"{e.name}.{c.name}": c.pii for s in req.sources for e in s.entities for c in e.columns}


def test_free_text_cdc_to_warehouse() -> None:
    req = request_from_text(
        "CDC from Postgres orders and customers into Snowflake every 15 minutes; emails are PII; GDPR"
    )
    assert [s.kind for s in req.sources] == ["postgres"]
    assert {e.name for e in req.sources[0].entities} == {"orders", "customers"}
    assert [t.warehouse for t in req.targets] == ["snowflake"]
    assert req.freshness_minutes == 15
    assert req.compliance == ["gdpr"]
    pii = _pii(req)
    assert pii["orders.email"] is True and pii["customers.email"] is True
    assert pii["orders.status"] is False and pii["orders.amount"] is False


def test_free_text_pii_sentence_flags_the_named_columns_only() -> None:
    plain = _pii(request_from_text("Load Kafka events into a Delta lakehouse hourly"))
    flagged = _pii(request_from_text("Load Kafka events into a Delta lakehouse hourly; user ids are PII"))
    assert plain["events.user_id"] is False
    assert flagged["events.user_id"] is True
    assert flagged["events.event_type"] is False


@pytest.mark.parametrize(
    "sentence, column",
    [
        ("countries are PII", "customers.country"),
        ("phone numbers and countries are personal data", "customers.country"),
        ("customer ids are sensitive", "customers.customer_id"),
    ],
)
def test_free_text_pii_phrases_map_to_columns(sentence: str, column: str) -> None:
    req = request_from_text(f"Postgres customers into Snowflake daily; {sentence}")
    pii = _pii(req)
    assert pii[column] is True
    assert pii["customers.created_at"] is False and pii["customers.updated_at"] is False


def test_free_text_streaming_lakehouse() -> None:
    req = request_from_text("Stream clickstream events from Kafka into an Iceberg lakehouse on S3, real-time")
    assert [s.kind for s in req.sources] == ["kafka"]
    assert req.targets[0].lake == "s3" and req.targets[0].table_format == "iceberg"
    assert req.targets[0].warehouse is None
    assert req.freshness_minutes == 1
    assert req.compliance == []


def test_free_text_saas_to_bigquery_with_several_regimes() -> None:
    req = request_from_text("Poll the Salesforce API for contacts daily into BigQuery; HIPAA and CCPA apply")
    assert [s.kind for s in req.sources] == ["saas"]
    assert req.targets[0].warehouse == "bigquery"
    assert req.freshness == "daily"
    assert set(req.compliance) == {"hipaa", "ccpa"}


def test_free_text_records_every_guess_as_an_assumption() -> None:
    vague = request_from_text("build me a pipeline for reporting")
    assert vague.sources[0].kind == "postgres" and vague.targets[0].warehouse == "snowflake"
    text = " ".join(vague.assumptions).lower()
    assert "no source" in text and "no target" in text and "freshness" in text
    precise = request_from_text("Postgres orders into Snowflake hourly")
    assert not any("no source" in a.lower() or "no target" in a.lower() for a in precise.assumptions)


def test_empty_free_text_is_a_request_error() -> None:
    with pytest.raises(RequestError, match="empty"):
        request_from_text("  \n ")


# ---------------------------------------------------------------------------------------------------
# request files: line numbers and fields in errors


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """\
name: demo
goal: Load orders
sources:
  - name: shop
    kind: postgres
    entities:
      - name: orders
        columns:
          - {name: id, type: bigint}
targets:
  - warehouse: snowflake
freshness: hourly
"""


def test_good_file_loads(tmp_path: Path) -> None:
    req = load_request(str(_file(tmp_path, "ok.yaml", GOOD)))
    assert req.name == "demo" and req.freshness_minutes == 60


@pytest.mark.parametrize(
    "old, new, line, field",
    [
        ("kind: postgres", "kind: carrier_pigeon", 5, "sources.0.kind"),
        ("warehouse: snowflake", "warehouse: excel", 11, "targets.0.warehouse"),
        ("freshness: hourly", "freshness: sometimes", 12, "freshness"),
        ("name: demo", "name: Not A Slug!", 1, "name"),
    ],
)
def test_invalid_field_names_file_line_and_field(
    tmp_path: Path, old: str, new: str, line: int, field: str
) -> None:
    path = _file(tmp_path, "req.yaml", GOOD.replace(old, new, 1))
    with pytest.raises(RequestError) as info:
        load_request_file(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), line, field)
    assert str(err).startswith(f"{path}:{line}, field '{field}': ")


def test_unknown_kind_lists_every_known_kind(tmp_path: Path) -> None:
    path = _file(tmp_path, "req.yaml", GOOD.replace("kind: postgres", "kind: fax"))
    with pytest.raises(RequestError) as info:
        load_request_file(path)
    assert all(kind in info.value.message for kind in SOURCE_KINDS)


@pytest.mark.parametrize(
    "text, line",
    [
        ("name: x\ngoal: y\nsources: [\n", 4),
        ("name: x\ngoal: y\n  bad: indent\n", 3),
        ("name: x\n\tgoal: tab\n", 2),
        ("name: x\ngoal: 'unterminated\n", 3),
    ],
)
def test_malformed_yaml_reports_the_line(tmp_path: Path, text: str, line: int) -> None:
    path = _file(tmp_path, "broken.yaml", text)
    with pytest.raises(RequestError, match="malformed YAML") as info:
        load_request_file(path)
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_malformed_json_reports_the_line(tmp_path: Path) -> None:
    path = _file(tmp_path, "broken.json", '{\n  "name": "x",\n  "goal": \n}\n')
    with pytest.raises(RequestError, match="malformed JSON") as info:
        load_request_file(path)
    assert info.value.line == 4


@pytest.mark.parametrize(
    "name, text, expect",
    [
        ("empty.yaml", "", "empty"),
        ("comment.yaml", "# nothing here\n", "empty"),
        ("list.yaml", "- a\n- b\n", "got a list"),
        ("scalar.json", '"orders"', "got a plain string"),
    ],
)
def test_request_must_be_a_mapping(tmp_path: Path, name: str, text: str, expect: str) -> None:
    with pytest.raises(RequestError, match=expect):
        load_request_file(_file(tmp_path, name, text))


def test_not_utf8_reports_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: x\ngoal: caf\xe9\n")
    with pytest.raises(RequestError, match="not UTF-8") as info:
        load_request_file(path)
    assert info.value.line == 2


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(RequestError, match="not found"):
        load_request(str(tmp_path / "nope.yaml"))
    with pytest.raises(RequestError, match="directory"):
        load_request_file(tmp_path)


# ---------------------------------------------------------------------------------------------------
# secrets never survive parsing


@pytest.mark.parametrize(
    "secret, text",
    [
        ("hunter2", "postgresql://loader:hunter2@db.internal:5432/shop"),
        ("p%40ss", "mysql://root:p%40ss@10.0.0.5/app?ssl=true"),
        ("Zx9ab", "mongodb+srv://svc:Zx9ab@cluster0.example.net/orders"),
        ("abc123secret", "password=abc123secret"),
        ("AKIAABCDEFGHIJKLMNOP", "key AKIAABCDEFGHIJKLMNOP in the config"),
        ("sk-ant-api03-abcdefghijkl", "use sk-ant-api03-abcdefghijkl for claude"),
    ],
)
def test_redact_hides_secrets_and_keeps_the_rest(secret: str, text: str) -> None:
    out = redact(text)
    assert secret not in out
    assert contains_secret(text) and not contains_secret(out)
    assert out.split()[0][:5] == text.split()[0][:5]


def test_redact_leaves_plain_urls_alone() -> None:
    text = "postgresql://cdc_reader@orders-db.internal:5432/orders?sslmode=require"
    assert redact(text) == text and not contains_secret(text)


def test_connection_strings_in_request_files_are_redacted(tmp_path: Path) -> None:
    text = GOOD.replace(
        "    kind: postgres\n",
        "    kind: postgres\n    connection: postgresql://loader:s3cr3tPW@db:5432/shop\n",
    ).replace("goal: Load orders", "goal: Load orders from postgresql://admin:g0alPW@db/shop")
    req = load_request_file(_file(tmp_path, "req.yaml", text))
    dumped = req.model_dump_json()
    assert "s3cr3tPW" not in dumped and "g0alPW" not in dumped
    assert req.sources[0].connection == "postgresql://loader:***@db:5432/shop"
    assert "admin:***@db/shop" in req.goal


def test_secrets_in_free_text_are_redacted() -> None:
    req = request_from_text("Copy postgres://etl:topsecret@pg/app orders into Snowflake, token=abcdef123456")
    dumped = req.model_dump_json()
    assert "topsecret" not in dumped and "abcdef123456" not in dumped
    assert [s.kind for s in req.sources] == ["postgres"]
