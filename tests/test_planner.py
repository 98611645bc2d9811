"""The offline planner: each choice follows from a feature of the request (or a policy), and says why."""

from __future__ import annotations

from typing import Any

import pytest

from agent import DataEngineerAgent


def request(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "t",
        "goal": "test design",
        "owner": "data-team",
        "sources": [
            {
                "name": "app_db",
                "kind": "postgres",
                "volume": {"rows_per_day": 100000, "gb_per_day": 1},
                "entities": [
                    {
                        "name": "orders",
                        "primary_key": ["order_id"],
                        "columns": [
                            {"name": "order_id", "type": "bigint"},
                            {"name": "customer_id", "type": "bigint"},
                            {"name": "total_amount", "type": "decimal(12,2)"},
                            {"name": "updated_at", "type": "timestamp"},
                        ],
                    },
                    {
                        "name": "customers",
                        "primary_key": ["customer_id"],
                        "columns": [
                            {"name": "customer_id", "type": "bigint"},
                            {"name": "email", "type": "string", "pii": True},
                            {"name": "updated_at", "type": "timestamp"},
                        ],
                    },
                ],
            }
        ],
        "targets": [{"warehouse": "snowflake"}],
        "freshness": "hourly",
    }
    base.update(over)
    return base


def source(kind: str, **extra: Any) -> dict[str, Any]:
    s = request()["sources"][0]
    return {**s, "name": f"{kind}_src", "kind": kind, **extra}


@pytest.fixture(scope="module")
def agent():
    return DataEngineerAgent(use_memory=False, remember=False)


_POLICIES: list = []


def plan(agent, **over):
    """Request -> steering -> pack -> rules planner only (rendering is tested in test_deliverables)."""
    from agent.compress import pack
    from agent.planner.rules import plan_design
    from agent.runtime import to_request

    if not _POLICIES:
        _POLICIES.append(agent.policies())
    req = to_request(request(**over))
    return plan_design(req, pack(_POLICIES[0], req, budget=4000), _POLICIES[0])


def decision(design, topic):
    return next(d for d in design.architecture.decisions if d.topic.startswith(topic))


def tech(design):
    return " | ".join(c.technology for c in design.architecture.components)


def test_every_decision_has_rationale_alternatives_and_cites_only_packed_policies(agent):
    res = agent.design(request(consumers=["looker", "ml"]))
    packed = set(res.pack.policy_ids)
    cited = set()
    for d in res.design.architecture.decisions:
        assert d.rationale and d.alternatives, d.topic
        assert set(d.policy_ids) <= packed
        cited |= set(d.policy_ids)
    assert cited, "the default policies should be cited by some decisions"


@pytest.mark.parametrize(
    "over, pattern",
    [
        ({"freshness": "daily"}, "batch"),
        ({"freshness": "real-time", "sources": [source("kafka")]}, "kappa"),
        ({"freshness": "hourly", "sources": [source("kafka")]}, "streaming"),
        ({"freshness": "real-time", "sources": [source("kafka"), source("files")]}, "lambda"),
    ],
)
def test_pattern_follows_latency_and_source(agent, over, pattern):
    assert plan(agent, **over).architecture.pattern == pattern


def test_daily_file_drop_with_realtime_sla_states_the_conflict_and_choice(agent):
    d = plan(agent, freshness="real-time", sources=[source("files")])
    assert d.conflicts and "cannot be met" in d.conflicts[0] and "Chose" in d.conflicts[0]
    assert d.architecture.pattern == "batch"


def test_elt_with_a_warehouse_etl_without(agent):
    assert plan(agent).architecture.approach == "ELT"
    lake_only = plan(agent, targets=[{"lake": "s3", "table_format": "iceberg"}])
    assert lake_only.architecture.approach == "ETL"


@pytest.mark.parametrize(
    "kind, freshness, method",
    [
        ("postgres", "hourly", "cdc"),
        ("postgres", "daily", "incremental"),
        ("rest_api", "daily", "api_poll"),
        ("saas", "hourly", "api_poll"),
        ("files", "daily", "file_drop"),
        ("mongodb", "hourly", "cdc"),
        ("cassandra", "daily", "incremental"),
        ("dynamodb", "hourly", "cdc"),
        ("kinesis", "hourly", "stream"),
        ("influxdb", "hourly", "incremental"),
    ],
)
def test_extraction_method_by_source(agent, kind, freshness, method):
    d = plan(agent, freshness=freshness, sources=[source(kind)])
    ex = decision(d, "Extraction from")
    assert ex.choice.startswith(method + ":")
    assert d.pipelines[0].extraction == method
    if kind == "postgres" and method == "cdc":
        assert "Debezium" in ex.choice


def test_kinesis_source_means_kinesis_and_kafka_source_means_kafka(agent):
    assert decision(plan(agent, sources=[source("kinesis")]), "Streaming platform").choice == "kinesis"
    assert decision(plan(agent, sources=[source("kafka")]), "Streaming platform").choice == "kafka"
    assert "Kinesis" in tech(plan(agent, sources=[source("kinesis")]))


@pytest.mark.parametrize("orchestrator", ["airflow", "dagster", "prefect"])
def test_orchestrator_from_constraints(agent, orchestrator):
    d = plan(agent, constraints={"orchestrator": orchestrator})
    assert {p.orchestrator for p in d.pipelines} == {orchestrator}
    assert decision(d, "Orchestration").choice == orchestrator


@pytest.mark.parametrize("warehouse", ["snowflake", "bigquery", "redshift", "databricks"])
def test_warehouse_drives_compute_and_partitioning(agent, warehouse):
    d = plan(agent, targets=[{"warehouse": warehouse}])
    assert d.storage.warehouse == warehouse
    assert any(
        c.kind == "warehouse" and warehouse.lower()[:4] in c.technology.lower()
        for c in d.architecture.components
    )
    part = decision(d, "Partitioning").choice.lower()
    assert {
        "snowflake": "cluster by",
        "bigquery": "partition by",
        "redshift": "distkey",
        "databricks": "liquid",
    }[warehouse] in part


@pytest.mark.parametrize("lake, cloud", [("s3", "aws"), ("adls", "azure"), ("gcs", "gcp")])
def test_lake_is_the_landing_zone(agent, lake, cloud):
    d = plan(agent, targets=[{"warehouse": "snowflake", "lake": lake}])
    landing = next(c for c in d.architecture.components if c.name == "landing")
    assert landing.technology.startswith(lake)
    assert d.pipelines[0].dead_letter.startswith(f"{lake}://")


@pytest.mark.parametrize("table_format", ["delta", "iceberg"])
def test_table_format(agent, table_format):
    d = plan(agent, targets=[{"lake": "s3", "table_format": table_format}])
    assert decision(d, "Table format").choice == table_format


def test_table_format_defaults_follow_the_engine(agent):
    assert (
        decision(plan(agent, targets=[{"warehouse": "databricks", "lake": "s3"}]), "Table format").choice
        == "delta"
    )
    assert (
        decision(plan(agent, targets=[{"warehouse": "snowflake", "lake": "s3"}]), "Table format").choice
        == "iceberg"
    )


def test_file_format_by_use(agent):
    assert decision(plan(agent, freshness="daily"), "File formats").choice.startswith("PARQUET")
    assert decision(plan(agent, sources=[source("kafka")]), "File formats").choice.startswith("AVRO")
    hive = plan(agent, freshness="daily", consumers=["hive"])
    assert decision(hive, "File formats").choice.startswith("ORC")


def test_time_series_store(agent):
    ts = plan(agent, sources=[source("timescaledb")], targets=[{"warehouse": "postgres"}])
    assert decision(ts, "Time-series store").choice == "TimescaleDB"
    influx = plan(agent, sources=[source("influxdb")], targets=[{"warehouse": "snowflake"}])
    assert decision(influx, "Time-series store").choice == "InfluxDB"
    assert not any(d.topic == "Time-series store" for d in plan(agent).architecture.decisions)


def test_kimball_has_facts_scd2_dimensions_and_a_date_dimension(agent):
    d = plan(agent)
    kinds = {t.kind for t in d.storage.tables}
    assert {"fact", "dimension", "date_dimension"} <= kinds
    dim = next(t for t in d.storage.tables if t.kind == "dimension")
    assert dim.scd_type == 2
    assert {"valid_from", "valid_to", "is_current"} <= {c.name for c in dim.columns}
    assert any(r.check == "scd2_one_current" for r in d.quality.rules)
    assert any(t.name == "dim_date" for t in d.storage.tables)


def test_data_vault_constraint_gives_hubs_links_satellites(agent):
    d = plan(agent, constraints={"modelling": "data_vault"})
    kinds = {t.kind for t in d.storage.tables}
    assert {"hub", "link", "satellite"} <= kinds
    assert all(
        t.name.startswith(("hub_", "link_", "sat_"))
        for t in d.storage.tables
        if t.kind in ("hub", "link", "satellite")
    )
    assert d.architecture.modelling == "data_vault"


def test_one_big_table(agent):
    d = plan(agent, constraints={"modelling": "one_big_table"}, consumers=["tableau"])
    obt = next(t for t in d.storage.tables if t.kind == "obt")
    assert {"email", "total_amount"} <= {c.name for c in obt.columns}  # the customer is pre-joined


def test_ml_consumers_get_a_feature_store(agent):
    d = plan(agent, consumers=["ml"], targets=[{"warehouse": "databricks"}])
    fs = next(c for c in d.architecture.components if c.name == "feature_store")
    assert "Databricks" in fs.technology
    assert decision(d, "Feature store hand-off")
    assert not any(c.name == "feature_store" for c in plan(agent).architecture.components)


def test_bi_consumers_get_integration_and_a_metric_layer(agent):
    d = plan(agent, consumers=["looker", "tableau"])
    assert decision(d, "BI integration").choice == "looker, tableau"
    assert "LookML" in decision(d, "Metric layer").choice
    assert "MetricFlow" in decision(plan(agent, consumers=["tableau"]), "Metric layer").choice


def test_growth_capacity_numbers_and_cost(agent):
    small = plan(agent, growth_factor=2)
    big = plan(agent, growth_factor=100)
    assert (
        big.architecture.capacity["rows_per_day_at_growth"]
        == 100 * small.architecture.capacity["rows_per_day"]
    )
    assert "100x" in decision(big, "Capacity").choice
    assert (
        big.architecture.cost["monthly_estimate_at_growth"]
        > small.architecture.cost["monthly_estimate_at_growth"]
    )
    assert "$" in decision(big, "Cost estimate").choice
    over = plan(agent, constraints={"budget_usd_month": 1})
    assert "OVER budget" in decision(over, "Cost estimate").rationale


def test_spark_tuning_and_sharding_only_when_volume_warrants(agent):
    huge = source(
        "kafka", volume={"rows_per_day": 2_000_000_000, "gb_per_day": 900, "events_per_second": 25000}
    )
    d = plan(agent, sources=[huge], freshness="real-time")
    assert decision(d, "Spark tuning")
    assert any("Spark tuning" in n for n in d.processing.notes)
    shards = decision(d, "Sharding")
    assert int(shards.choice.split()[0]) > 3
    assert not any(x.topic == "Spark tuning" for x in plan(agent).architecture.decisions)


def test_failure_handling_monitoring_contracts_and_versions(agent):
    d = plan(agent)
    for p in d.pipelines:
        assert p.idempotency_key and p.dead_letter and p.backfill
    assert "retries" in decision(d, "Failure handling").choice
    assert {"freshness", "volume", "schema_drift"} <= {m.name for m in d.quality.monitors}
    assert "contract" in decision(d, "Ownership and contracts").choice
    assert d.documentation.versions["schema"] and decision(d, "Versions")


def test_pii_is_masked_in_staging(agent):
    d = plan(agent)
    email = next(c for t in d.storage.tables if t.layer == "staging" for c in t.columns if c.name == "email")
    assert email.masking == "hash"
