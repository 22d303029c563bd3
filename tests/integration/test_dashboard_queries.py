"""Every dataset and widget query of the Databricks dashboard runs on Spark against the auditors' views.

The views are made as the job makes them in Unity Catalog (``TableLocations.ensure_table`` on a schema of the
session catalog, ``spark_catalog.<schema>``), with a few rows from the project's row builders; the dashboard's
SQL then runs by unqualified names with that schema as the current one, as the bundle's ``dataset_catalog`` and
``dataset_schema`` make it run on a SQL warehouse. A blob or column the views lack fails the query here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fedstream import dashboard
from fedstream.dashboard import ACTIVITY, CLIENTS, DATASETS, PRIVACY, REJECTIONS, STALENESS, VERSIONS
from fedstream.report.data import pseudonym
from streaming_jobs.tables import MODEL_VERSIONS, REJECTED_UPDATES, UPDATES, TableLocations
from tests.rows import rejected_row, update_row, version_row

pytestmark = pytest.mark.stack

HOUR = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CLIENT_IDS = ("subject-01", "subject-02")


def _rows() -> dict[Any, list[Any]]:
    """Model ``m``: updates 0-2 (0 and 1 in version 1, ε on); model ``other``: one update, no version; 3 rejections."""
    updates = [
        update_row(0, client_id="subject-01", sample_count=10, received_at=HOUR + timedelta(minutes=5)),
        update_row(1, client_id="subject-02", sample_count=20, received_at=HOUR + timedelta(minutes=10)),
        update_row(2, client_id="subject-01", sample_count=30, received_at=HOUR + timedelta(hours=1, minutes=1)),
        update_row(3, client_id="subject-02", model_name="other", received_at=HOUR),
    ]
    versions = [
        version_row(0, created_at=HOUR),
        version_row(
            1,
            created_at=HOUR + timedelta(minutes=20),
            update_ids=[f"{0:032x}", f"{1:032x}"],
            update_weights=[0.5, 0.5],
            update_staleness=[0, 2],
            federated_validation_accuracy=0.75,
            epsilon=1.5,
            epsilon_assumption="no_amplification",
            privacy_budget_exhausted=False,
        ),
    ]
    rejected = [
        rejected_row(client_id="subject-01", reason="bad_signature", rejected_at=HOUR + timedelta(minutes=30)),
        rejected_row(client_id="subject-01", reason="bad_signature", rejected_at=HOUR + timedelta(minutes=40)),
        rejected_row(client_id=None, reason="undecodable", rejected_at=HOUR + timedelta(hours=1, minutes=2)),
    ]
    return {UPDATES: updates, MODEL_VERSIONS: versions, REJECTED_UPDATES: rejected}


@pytest.fixture(scope="module")
def views(spark, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """The three tables and their auditors' views in a fresh schema, made the current schema for the module."""
    name = f"spark_catalog.fedstream_dashboard_{uuid.uuid4().hex[:10]}"
    spark.sql(f"CREATE SCHEMA {name} LOCATION '{tmp_path_factory.mktemp('dashboard') / 'schema'}'")
    locations = TableLocations(str(tmp_path_factory.mktemp("unused")), name)
    previous = spark.catalog.currentDatabase()
    try:
        for table, rows in _rows().items():
            locations.ensure_table(spark, table)
            locations.append(spark, table, rows, app_id=None, batch_id=None)
        spark.catalog.setCurrentDatabase(name.split(".", 1)[1])
        yield
    finally:
        spark.catalog.setCurrentDatabase(previous)
        spark.sql(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture(scope="module")
def results(spark, views: None) -> dict[str, list[dict[str, Any]]]:  # type: ignore[no-untyped-def]
    """Each dataset's rows, its SQL run once as the dashboard has it; its columns are the ones it declares."""
    rows = {}
    for dataset in DATASETS:
        frame = spark.sql(dataset.sql)
        assert tuple(frame.columns) == dataset.columns, f"{dataset.name} returns {frame.columns}"
        rows[dataset.name] = [row.asDict() for row in frame.collect()]
    return rows


def _aware(moment: datetime) -> datetime:
    """PySpark hands timestamps back as naive local times; the same instant, in UTC."""
    return datetime.fromtimestamp(moment.timestamp(), UTC)


def test_every_dataset_returns_rows_and_no_client_id(results: dict[str, list[dict[str, Any]]]) -> None:
    for dataset in DATASETS:
        assert results[dataset.name], f"{dataset.name} returned no row"
        text = repr(results[dataset.name])
        assert not any(client_id in text for client_id in CLIENT_IDS), f"{dataset.name} shows a raw client id"


def test_versions(results: dict[str, list[dict[str, Any]]]) -> None:
    rows = sorted(results[VERSIONS.name], key=lambda row: row["version"])
    assert [(row["model_name"], row["version"], row["updates_aggregated"]) for row in rows] == [
        ("m", 0, 0),
        ("m", 1, 2),
    ]
    assert [_aware(row["created_at"]) for row in rows] == [HOUR, HOUR + timedelta(minutes=20)]
    assert [row["federated_validation_accuracy"] for row in rows] == [None, 0.75]


def test_privacy_lists_only_versions_with_epsilon(results: dict[str, list[dict[str, Any]]]) -> None:
    (row,) = results[PRIVACY.name]
    assert (row["model_name"], row["version"], row["epsilon"]) == ("m", 1, 1.5)
    assert (row["epsilon_assumption"], row["privacy_budget_exhausted"]) == ("no_amplification", False)


def test_staleness_counts_each_aggregated_update(results: dict[str, list[dict[str, Any]]]) -> None:
    rows = results[STALENESS.name]
    assert sorted((row["model_name"], row["staleness"], row["updates"]) for row in rows) == [("m", 0, 1), ("m", 2, 1)]


def test_activity_counts_per_hour_and_outcome(results: dict[str, list[dict[str, Any]]]) -> None:
    rows = {(row["model_name"], _aware(row["hour"]), row["outcome"]): row["messages"] for row in results[ACTIVITY.name]}
    later = HOUR + timedelta(hours=1)
    assert rows == {
        ("m", HOUR, "accepted"): 2,
        ("m", later, "accepted"): 1,
        ("other", HOUR, "accepted"): 1,
        ("m", HOUR, "rejected: bad_signature"): 2,
        ("m", later, "rejected: undecodable"): 1,
    }


def test_rejections_by_reason(results: dict[str, list[dict[str, Any]]]) -> None:
    rows = {row["reason"]: row for row in results[REJECTIONS.name]}
    assert {reason: (row["model_name"], row["messages"], row["clients"]) for reason, row in rows.items()} == {
        "bad_signature": ("m", 2, 1),
        "undecodable": ("m", 1, 0),
    }
    assert _aware(rows["bad_signature"]["latest_at"]) == HOUR + timedelta(minutes=40)


def test_clients_are_the_reports_pseudonyms(results: dict[str, list[dict[str, Any]]]) -> None:
    one, two = (pseudonym(client_id) for client_id in CLIENT_IDS)
    counts = {
        (row["model_name"], row["client_pseudonym"]): (
            row["accepted"],
            row["in_versions"],
            row["rejected"],
            row["samples"],
        )
        for row in results[CLIENTS.name]
    }
    assert counts == {("m", one): (2, 1, 2, 40), ("m", two): (1, 1, 0, 20), ("other", two): (1, 0, 0, 64)}


def _widget_sql(query: dict[str, Any], datasets: dict[str, str]) -> str:
    """The SQL a widget query stands for: its fields over the dataset, grouped by the plain ones when aggregated."""
    fields = query["fields"]
    selected = ", ".join(f"{field['expression']} AS `{field['name']}`" for field in fields)
    sql = f"SELECT {selected} FROM ({datasets[query['datasetName']]}) AS dataset"
    plain = [field["expression"] for field in fields if field["expression"].startswith("`")]
    if not query["disaggregated"] and plain:
        sql += f" GROUP BY {', '.join(plain)}"
    return sql


def test_every_widget_query_is_valid_sql_over_its_dataset(spark, views: None) -> None:  # type: ignore[no-untyped-def]
    """Spark analyses each widget's query (columns resolve, aggregates and grouping fit); running them adds nothing."""
    serialized = dashboard.dashboard()
    datasets = {dataset["name"]: "".join(dataset["queryLines"]) for dataset in serialized["datasets"]}
    checked = 0
    for page in serialized["pages"]:
        for entry in page["layout"]:
            for query in entry["widget"]["queries"]:
                frame = spark.sql(_widget_sql(query["query"], datasets))
                assert frame.columns == [field["name"] for field in query["query"]["fields"]], entry["widget"]["name"]
                checked += 1
    assert checked >= len(dashboard.WIDGETS)
