"""Tables by catalog name, as the job makes them in Unity Catalog, on local Spark's own session catalog.

Open-source Spark names its session catalog ``spark_catalog``, so ``spark_catalog.<schema>.<table>`` is a
three-part name that goes through exactly the code Unity Catalog's ``<catalog>.<schema>.<table>`` does:
``CREATE TABLE IF NOT EXISTS`` with table properties, ``ALTER TABLE`` for missing columns and properties, the
auditor's views and the saved audit queries. What differs on Databricks (the catalog service itself, grants,
managed storage) is listed in docs/databricks.md. (``DeltaTable.createIfNotExists().tableName()``, which
``ensure`` used before, refuses these three-part names with a ParseException: delta-io/delta#2793.)
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import pytest
from pyspark.sql.types import BinaryType, StructType

from schemas.rows import ClientKeyRow, ModelVersionRow, RejectedUpdateRow, UpdateChunkRow, UpdateRow
from streaming_jobs.tables import (
    ALL_TABLES,
    CLIENT_KEYS,
    DEFAULT_AUDIT_WINDOW_DAYS,
    MODEL_VERSIONS,
    MODEL_VERSIONS_SCHEMA,
    REJECTED_UPDATES,
    UPDATE_CHUNKS,
    UPDATES,
    TableLocations,
    table_properties,
)

pytestmark = pytest.mark.stack

WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
U1, U2, U9 = (f"{n:032x}" for n in (1, 2, 9))
SEED = 8_111_222_333_444_555


@pytest.fixture
def catalog_schema(spark, tmp_path: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh schema of the session catalog, stored under ``tmp_path``, named ``spark_catalog.<schema>``."""
    name = f"spark_catalog.fedstream_uc_{uuid.uuid4().hex[:10]}"
    spark.sql(f"CREATE SCHEMA {name} LOCATION '{tmp_path / 'schema'}'")
    try:
        yield name
    finally:
        spark.sql(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture(scope="module")
def filled(spark, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TableLocations]:  # type: ignore[no-untyped-def]
    """One schema made as the job makes it (a 30-day window), with a few rows in every table; tests only read it."""
    name = f"spark_catalog.fedstream_uc_{uuid.uuid4().hex[:10]}"
    spark.sql(f"CREATE SCHEMA {name} LOCATION '{tmp_path_factory.mktemp('filled') / 'schema'}'")
    locations = TableLocations(str(tmp_path_factory.mktemp("unused") / "tables"), name)
    try:
        locations.ensure(spark, audit_window_days=30)
        _fill(spark, locations)
        yield locations
    finally:
        spark.sql(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def _commits(spark, locations: TableLocations, table) -> int:  # type: ignore[no-untyped-def]
    return int(spark.sql(f"DESCRIBE HISTORY {locations.reference(table)}").count())


def _update(update_id: str, client_id: str) -> UpdateRow:
    return UpdateRow(
        kafka_topic="fl.updates",
        kafka_partition=0,
        kafka_offset=int(update_id, 16),
        kafka_timestamp=WHEN,
        update_id=update_id,
        client_id=client_id,
        model_name="har-cnn",
        base_version=0,
        sample_count=10,
        payload_sha256="a" * 64,
        payload=b"\x00secret-tensors",
        signature=b"\x01" * 64,
        validation_loss=None,
        validation_accuracy=None,
        validation_count=0,
        training_loss=0.5,
        training_steps=3,
        client_created_at=WHEN,
        received_at=WHEN,
        batch_id=1,
    )


def _version(version: int, update_ids: list[str]) -> ModelVersionRow:
    config = {"buffer_size": 2, "dp_noise_multiplier": 1.0, "dp_seed": SEED}
    return ModelVersionRow(
        model_name="har-cnn",
        version=version,
        parent_version=None if version == 0 else version - 1,
        parent_parameter_hash=None if version == 0 else "0" * 64,
        created_at=WHEN,
        parameters=b"\x00parameters",
        parameter_hash=str(version) * 64,
        update_ids=update_ids,
        update_weights=[1 / len(update_ids)] * len(update_ids) if update_ids else [],
        update_staleness=[0] * len(update_ids),
        staleness_mean=0.0 if update_ids else None,
        staleness_max=0 if update_ids else None,
        aggregation_mode="fedbuff",
        server_optimizer="sgd",
        optimizer_state=b"\x00state",
        config_json=json.dumps(config, sort_keys=True),
        federated_validation_loss=None,
        federated_validation_accuracy=None,
        batch_id=version,
        epsilon=1.5 if version else None,
        epsilon_assumption="no_amplification" if version else None,
        privacy_budget_exhausted=False if version else None,
        shards_key=None,
    )


def _rejected(client_id: str) -> RejectedUpdateRow:
    return RejectedUpdateRow(
        kafka_topic="fl.updates",
        kafka_partition=0,
        kafka_offset=9,
        kafka_timestamp=WHEN,
        reason="bad_signature",
        detail="signature does not verify",
        all_reasons=["bad_signature"],
        update_id=U9,
        client_id=client_id,
        key=b"subject-07",
        raw_value=b"\x00raw-message-bytes",
        raw_size=19,
        rejected_at=datetime.now(UTC),
        batch_id=2,
        job_model="har-cnn",
    )


def _fill(spark, locations: TableLocations) -> None:  # type: ignore[no-untyped-def]
    locations.append(spark, UPDATES, [_update(U1, "subject-07"), _update(U2, "subject-08")], app_id="t", batch_id=1)
    locations.append(spark, MODEL_VERSIONS, [_version(0, []), _version(1, [U1, U2])], app_id="t", batch_id=1)
    locations.append(spark, REJECTED_UPDATES, [_rejected("subject-07")], app_id="t", batch_id=2)
    key = ClientKeyRow(client_id="subject-07", public_key=b"\x02" * 32, action="enrol", recorded_at=WHEN)
    locations.append(spark, CLIENT_KEYS, [key], app_id=None, batch_id=None)
    chunk = UpdateChunkRow(
        kafka_topic="fl.updates", kafka_partition=0, kafka_offset=9, kafka_timestamp=WHEN, model_name="har-cnn",
        assembly_id="c" * 64, update_id=U1, client_id="subject-07", chunk_index=0, chunk_count=2,
        key=b"subject-07", value=b"FUC1 secret-tensors", received_at=WHEN, batch_id=1,
    )  # fmt: skip
    locations.append(spark, UPDATE_CHUNKS, [chunk], app_id=None, batch_id=None)


# ── tables ───────────────────────────────────────────────────────────────────────────────────────────────────────


def test_ensure_creates_every_table_by_its_three_part_name(spark, filled: TableLocations) -> None:  # type: ignore[no-untyped-def]
    catalog_schema = str(filled.catalog_schema)
    schema = catalog_schema.split(".")[1]
    assert {row.tableName for row in spark.sql(f"SHOW TABLES IN {catalog_schema}").collect()} >= {
        table.name for table in ALL_TABLES
    }
    for table in ALL_TABLES:
        stored = filled.read(spark, table).schema
        assert stored.fieldNames() == table.schema.fieldNames(), table.name
        assert [field.nullable for field in stored.fields] == [field.nullable for field in table.schema.fields]
        detail = spark.sql(f"DESCRIBE DETAIL {filled.identifier(table)}").first()
        assert detail.format == "delta" and detail.name.endswith(f"{schema}.{table.name}")
        assert filled.properties(spark, table).items() >= table_properties(table, 30).items()
    assert not Path(filled.root).exists(), "named tables must not be written as folders"


def test_ensure_is_idempotent_and_writes_no_commit_when_nothing_differs(spark, filled: TableLocations) -> None:  # type: ignore[no-untyped-def]
    before = {table.name: _commits(spark, filled, table) for table in ALL_TABLES}
    filled.ensure(spark, audit_window_days=30)
    filled.ensure(spark)
    assert {table.name: _commits(spark, filled, table) for table in ALL_TABLES} == before


def test_the_job_brings_existing_tables_to_its_audit_window_and_one_off_commands_leave_it(  # type: ignore[no-untyped-def]
    spark, catalog_schema: str
) -> None:
    locations = TableLocations("unused", catalog_schema)
    locations.ensure(spark)  # as `fedstream clients enrol` would, first
    assert locations.properties(spark, UPDATES)["delta.logRetentionDuration"] == (
        f"interval {DEFAULT_AUDIT_WINDOW_DAYS} days"
    )
    locations.ensure(spark, audit_window_days=400)  # the job
    locations.ensure(spark)  # a later one-off command changes nothing back
    for table in ALL_TABLES:
        properties = locations.properties(spark, table)
        assert properties["delta.logRetentionDuration"] == "interval 400 days"
        assert properties["delta.deletedFileRetentionDuration"] == "interval 400 days"
        assert properties["delta.appendOnly"] == "true"


def test_a_table_created_without_properties_gets_them_and_its_missing_columns(spark, catalog_schema: str) -> None:  # type: ignore[no-untyped-def]
    """A table an older fedstream made (no properties, no privacy columns) is brought in line on the job's start."""
    old_schema = StructType(
        [
            field
            for field in MODEL_VERSIONS_SCHEMA.fields
            if field.name not in ("epsilon_assumption", "privacy_budget_exhausted", "shards_key")
        ]
    )
    locations = TableLocations("unused", catalog_schema)
    columns = ", ".join(f"`{field.name}` {field.dataType.simpleString()}" for field in old_schema.fields)
    spark.sql(f"CREATE TABLE {locations.identifier(MODEL_VERSIONS)} ({columns}) USING DELTA")
    locations.ensure(spark, audit_window_days=60)
    assert locations.read(spark, MODEL_VERSIONS).schema.fieldNames() == MODEL_VERSIONS_SCHEMA.fieldNames()
    assert locations.properties(spark, MODEL_VERSIONS).items() >= table_properties(MODEL_VERSIONS, 60).items()


def test_appends_by_name_are_idempotent_and_delta_refuses_deletes_and_updates(spark, catalog_schema: str) -> None:  # type: ignore[no-untyped-def]
    locations = TableLocations("unused", catalog_schema)
    locations.ensure(spark, audit_window_days=30)
    rows = [_update(U1, "subject-07")]
    locations.append(spark, UPDATES, rows, app_id="writer", batch_id=5)
    locations.append(spark, UPDATES, rows, app_id="writer", batch_id=5)  # a replayed micro-batch
    assert locations.read(spark, UPDATES).count() == 1
    for statement in (
        f"DELETE FROM {locations.identifier(UPDATES)} WHERE client_id = 'subject-07'",
        f"UPDATE {locations.identifier(UPDATES)} SET client_id = 'someone-else'",
    ):
        with pytest.raises(Exception, match=r"(?i)append.?only"):
            spark.sql(statement)
    assert locations.read(spark, UPDATES).count() == 1


def test_folder_tables_get_the_same_properties(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    locations = TableLocations(str(tmp_path))
    locations.ensure(spark, audit_window_days=45)
    for table in ALL_TABLES:
        assert (tmp_path / table.name / "_delta_log").is_dir()
        assert locations.properties(spark, table).items() >= table_properties(table, 45).items()
    with pytest.raises(ValueError, match="catalog schema"):
        locations.audit_view(UPDATES)


# ── auditor's views and saved queries ───────────────────────────────────────────────────────────────────────────


def test_the_views_leave_out_the_blobs_and_return_the_rows(spark, filled: TableLocations) -> None:  # type: ignore[no-untyped-def]
    locations = filled
    for table in ALL_TABLES:
        view = spark.read.table(locations.audit_view(table))
        blobs = {field.name for field in table.schema.fields if isinstance(field.dataType, BinaryType)}
        assert blobs and not blobs & set(view.columns), f"{table.audit_view} shows {blobs & set(view.columns)}"
        assert not [field.name for field in view.schema.fields if isinstance(field.dataType, BinaryType)]
        assert view.count() == locations.read(spark, table).count() > 0
    assert {"payload", "signature"}.isdisjoint(spark.read.table(locations.audit_view(UPDATES)).columns)
    assert {"raw_value", "key"}.isdisjoint(spark.read.table(locations.audit_view(REJECTED_UPDATES)).columns)
    assert {"parameters", "optimizer_state"}.isdisjoint(spark.read.table(locations.audit_view(MODEL_VERSIONS)).columns)
    assert {"value", "key"}.isdisjoint(spark.read.table(locations.audit_view(UPDATE_CHUNKS)).columns)

    (version,) = spark.read.table(locations.audit_view(MODEL_VERSIONS)).where("version = 1").collect()
    assert str(SEED) not in version.config_json, "the DP noise seed must not reach auditors"
    assert json.loads(version.config_json) == {"buffer_size": 2, "dp_noise_multiplier": 1.0, "dp_seed": "redacted"}
    (key,) = spark.read.table(locations.audit_view(CLIENT_KEYS)).collect()
    assert key.public_key_sha256 == hashlib.sha256(b"\x02" * 32).hexdigest()


def test_a_view_follows_a_new_column_and_keeps_its_name(spark, catalog_schema: str) -> None:  # type: ignore[no-untyped-def]
    locations = TableLocations("unused", catalog_schema)
    locations.ensure(spark, audit_window_days=30)
    view = locations.audit_view(UPDATES)
    spark.sql(f"ALTER VIEW {view} AS SELECT update_id FROM {locations.identifier(UPDATES)}")  # an older definition
    locations.ensure(spark, audit_window_days=30)
    assert spark.read.table(view).columns == [
        field.name for field in UPDATES.schema.fields if not isinstance(field.dataType, BinaryType)
    ]


def _saved_queries() -> list[str]:
    text = (resources.files("streaming_jobs") / "sql" / "audit_queries.sql").read_text()
    statements = [statement.strip() for statement in re.split(r";\s*\n", text)]
    return [s for s in statements if any(line.strip() and not line.strip().startswith("--") for line in s.splitlines())]


def _bind(query: str, parameters: dict[str, object]) -> str:
    """``query`` with each ``:name`` marker replaced by its value as an SQL literal.

    The SQL editor binds the markers itself; locally, Spark 4.2's parameter markers (``spark.sql(query, args=...)``)
    are left unbound in a session with Delta's SQL extension, so the test writes the literals in.
    """
    code = re.sub(r"--[^\n]*", "", query)

    def literal(match: re.Match[str]) -> str:
        value = parameters[match.group(1)]
        return str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"

    return re.sub(r"(?<!:):([a-z_]+)", literal, code)


def test_the_saved_audit_queries_run_on_the_views_and_find_the_rows(spark, filled: TableLocations) -> None:  # type: ignore[no-untyped-def]
    catalog_schema = str(filled.catalog_schema)
    queries = _saved_queries()
    assert len(queries) == 7
    for query in queries:
        code = re.sub(r"--[^\n]*", "", query)
        assert not re.search(r"\b(updates|rejected_updates|model_versions|client_keys)\b", code), f"not a view: {query}"
    parameters = {"model_name": "har-cnn", "version": 1, "client_id": "subject-07"}
    previous = spark.catalog.currentDatabase()
    spark.sql(f"USE {catalog_schema}")
    try:
        results = []
        for query in queries:
            results.append(spark.sql(_bind(query, parameters)).collect())
    finally:
        spark.sql(f"USE spark_catalog.{previous}")
    lineage, chain, rejected_by_hour, client_updates, client_rejected, contributions, keys = results
    assert [(row.update_id, row.client_id, row.weight) for row in lineage] == [
        (U1, "subject-07", 0.5),
        (U2, "subject-08", 0.5),
    ]
    assert [(row.version, row.parent_hash_matches) for row in chain] == [(1, True), (0, None)]
    assert [(row.reason, row.rejected) for row in rejected_by_hour] == [("bad_signature", 1)]
    assert [(row.update_id, row.used_in_version) for row in client_updates] == [(U1, 1)]
    assert [(row.reason, row.rejected) for row in client_rejected] == [("bad_signature", 1)]
    assert {row.client_id: row.total_weight for row in contributions} == {"subject-07": 0.5, "subject-08": 0.5}
    assert [(row.client_id, row.action) for row in keys] == [("subject-07", "enrol")]
