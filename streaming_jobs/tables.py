"""fedstream's Delta tables: their Spark schemas, locations, creation and idempotent appends.

Appends can carry ``txnAppId``/``txnVersion`` = (table writer, batch id), so a micro-batch replayed after a
crash never writes its rows twice; the job's ``updates`` and ``model_versions`` appends are made once by its
own replay check instead (``streaming_jobs.update_batch``). Columns added in later fedstream versions are
nullable: ``ensure`` adds them to a table an older version created, and appends merge them in too.

The tables are an audit log: fedstream only ever appends to them (no DELETE, UPDATE, MERGE or overwrite), so
each is created ``delta.appendOnly`` and keeps its Delta history for the audit window, long enough for
``fedstream audit --as-of`` to read any version inside it after VACUUM or predictive optimization. In a catalog
each table also gets an auditor's view without its binary blobs (update payloads, raw rejected bytes, model
parameters), which is what auditors are granted instead of the tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from schemas.rows import ClientKeyRow, ModelShardRow, ModelVersionRow, RejectedUpdateRow, UpdateChunkRow, UpdateRow

_KAFKA_FIELDS = [
    StructField("kafka_topic", StringType(), False),
    StructField("kafka_partition", IntegerType(), False),
    StructField("kafka_offset", LongType(), False),
    StructField("kafka_timestamp", TimestampType(), False),
]

UPDATES_SCHEMA = StructType(
    [
        *_KAFKA_FIELDS,
        StructField("update_id", StringType(), False),
        StructField("client_id", StringType(), False),
        StructField("model_name", StringType(), False),
        StructField("base_version", LongType(), False),
        StructField("sample_count", LongType(), False),
        StructField("payload_sha256", StringType(), False),
        StructField("payload", BinaryType(), False),
        StructField("signature", BinaryType(), False),
        StructField("validation_loss", DoubleType(), True),
        StructField("validation_accuracy", DoubleType(), True),
        StructField("validation_count", LongType(), False),
        StructField("training_loss", DoubleType(), True),
        StructField("training_steps", LongType(), False),
        StructField("client_created_at", TimestampType(), False),
        StructField("received_at", TimestampType(), False),
        StructField("batch_id", LongType(), False),
    ]
)

REJECTED_UPDATES_SCHEMA = StructType(
    [
        *_KAFKA_FIELDS,
        StructField("reason", StringType(), False),
        StructField("detail", StringType(), False),
        StructField("all_reasons", ArrayType(StringType(), False), False),
        StructField("update_id", StringType(), True),
        StructField("client_id", StringType(), True),
        StructField("key", BinaryType(), True),
        StructField("raw_value", BinaryType(), True),
        StructField("raw_size", LongType(), False),
        StructField("rejected_at", TimestampType(), False),
        StructField("batch_id", LongType(), False),
        StructField("job_model", StringType(), True),
    ]
)

UPDATE_CHUNKS_SCHEMA = StructType(
    [
        *_KAFKA_FIELDS,
        StructField("model_name", StringType(), False),
        StructField("assembly_id", StringType(), False),
        StructField("update_id", StringType(), False),
        StructField("client_id", StringType(), False),
        StructField("chunk_index", LongType(), False),
        StructField("chunk_count", LongType(), False),
        StructField("key", BinaryType(), True),
        StructField("value", BinaryType(), False),
        StructField("received_at", TimestampType(), False),
        StructField("batch_id", LongType(), False),
    ]
)

MODEL_VERSIONS_SCHEMA = StructType(
    [
        StructField("model_name", StringType(), False),
        StructField("version", LongType(), False),
        StructField("parent_version", LongType(), True),
        StructField("parent_parameter_hash", StringType(), True),
        StructField("created_at", TimestampType(), False),
        StructField("parameters", BinaryType(), False),
        StructField("parameter_hash", StringType(), False),
        StructField("update_ids", ArrayType(StringType(), False), False),
        StructField("update_weights", ArrayType(DoubleType(), False), False),
        StructField("update_staleness", ArrayType(LongType(), False), False),
        StructField("staleness_mean", DoubleType(), True),
        StructField("staleness_max", LongType(), True),
        StructField("aggregation_mode", StringType(), False),
        StructField("server_optimizer", StringType(), False),
        StructField("optimizer_state", BinaryType(), False),
        StructField("config_json", StringType(), False),
        StructField("federated_validation_loss", DoubleType(), True),
        StructField("federated_validation_accuracy", DoubleType(), True),
        StructField("batch_id", LongType(), False),
        StructField("epsilon", DoubleType(), True),
        StructField("epsilon_assumption", StringType(), True),
        StructField("privacy_budget_exhausted", BooleanType(), True),
        StructField("shards_key", StringType(), True),
    ]
)

MODEL_SHARDS_SCHEMA = StructType(
    [
        StructField("model_name", StringType(), False),
        StructField("version", LongType(), False),
        StructField("version_key", StringType(), False),
        StructField("shard_ordinal", LongType(), False),
        StructField("tensor", StringType(), False),
        StructField("tensor_shape", ArrayType(LongType(), False), False),
        StructField("shard_index", LongType(), False),
        StructField("value_start", LongType(), False),
        StructField("value_stop", LongType(), False),
        StructField("values", BinaryType(), False),
        StructField("values_sha256", StringType(), False),
        StructField("optimizer_slots", BinaryType(), False),
        StructField("created_at", TimestampType(), False),
        StructField("batch_id", LongType(), False),
    ]
)

CLIENT_KEYS_SCHEMA = StructType(
    [
        StructField("client_id", StringType(), False),
        StructField("public_key", BinaryType(), False),
        StructField("action", StringType(), False),
        StructField("recorded_at", TimestampType(), False),
    ]
)


@dataclass(frozen=True)
class TableSpec:
    """A Delta table: its name, Spark schema and the pydantic row model that describes one row.

    ``audit_columns`` (column name, SQL expression) replaces or adds columns in the auditor's view; binary
    columns are left out of that view unless replaced here.
    """

    name: str
    schema: StructType
    row_model: type[BaseModel]
    append_only: bool = True
    audit_columns: tuple[tuple[str, str], ...] = ()
    stats_columns: tuple[str, ...] = ()
    """Columns Delta keeps file statistics on (``delta.dataSkippingStatsColumns``): those queries filter on."""

    @property
    def audit_view(self) -> str:
        """Name of the auditor's view of this table: the table's name with ``_audit``."""
        return f"{self.name}_audit"

    def audit_select(self) -> list[str]:
        """The auditor's view's select list: every column but the binary blobs, with ``audit_columns`` applied."""
        replaced = dict(self.audit_columns)
        selected = []
        for field in self.schema.fields:
            if field.name in replaced:
                selected.append(f"{replaced.pop(field.name)} AS `{field.name}`")
            elif not isinstance(field.dataType, BinaryType):
                selected.append(f"`{field.name}`")
        selected.extend(f"{expression} AS `{name}`" for name, expression in replaced.items())
        return selected


_REDACTED_DP_SEED = """regexp_replace(config_json, '"dp_seed": *-?[0-9]+', '"dp_seed": "redacted"')"""
"""``config_json`` without the DP noise seed: with it, an auditor who also saw a version could subtract the noise."""

UPDATES = TableSpec(
    "updates",
    UPDATES_SCHEMA,
    UpdateRow,
    stats_columns=("update_id", "client_id", "model_name", "base_version", "received_at", "batch_id"),
)
REJECTED_UPDATES = TableSpec(
    "rejected_updates",
    REJECTED_UPDATES_SCHEMA,
    RejectedUpdateRow,
    stats_columns=("reason", "update_id", "client_id", "rejected_at", "batch_id"),
)
MODEL_VERSIONS = TableSpec(
    "model_versions",
    MODEL_VERSIONS_SCHEMA,
    ModelVersionRow,
    audit_columns=(("config_json", _REDACTED_DP_SEED),),
    stats_columns=("model_name", "version", "created_at", "batch_id"),
)
CLIENT_KEYS = TableSpec(
    "client_keys", CLIENT_KEYS_SCHEMA, ClientKeyRow, audit_columns=(("public_key_sha256", "sha2(public_key, 256)"),)
)
UPDATE_CHUNKS = TableSpec(
    "update_chunks",
    UPDATE_CHUNKS_SCHEMA,
    UpdateChunkRow,
    stats_columns=("model_name", "assembly_id", "update_id", "client_id", "received_at", "batch_id"),
)
MODEL_SHARDS = TableSpec(
    "model_shards",
    MODEL_SHARDS_SCHEMA,
    ModelShardRow,
    stats_columns=("model_name", "version", "version_key", "shard_ordinal", "batch_id"),
)
"""Versions computed on executors, one row per shard: created by :mod:`streaming_jobs.executor_aggregation`."""
ALL_TABLES = (UPDATES, REJECTED_UPDATES, MODEL_VERSIONS, CLIENT_KEYS, UPDATE_CHUNKS)
"""The tables every job creates when it starts (:meth:`TableLocations.ensure`)."""
ON_DEMAND_TABLES = (MODEL_SHARDS,)
"""Tables created by what writes them first (:meth:`TableLocations.ensure_table`)."""

CHECKPOINT_INTERVAL = 100
"""Commits between Delta checkpoints of fedstream's tables (see ``bench.delta_commits``)."""
DEFAULT_AUDIT_WINDOW_DAYS = 90
"""Days of Delta history every table keeps (``--audit-window-days``): ``audit --as-of`` works this far back."""
MINIMUM_AUDIT_WINDOW_DAYS = 7
"""Delta's own floor for VACUUM: files a running reader may still need are never removed sooner."""


def table_properties(table: TableSpec, audit_window_days: int) -> dict[str, str]:
    """Delta table properties of ``table`` for an audit window of ``audit_window_days`` days.

    ``delta.logRetentionDuration`` keeps the transaction log (time travel needs it) and
    ``delta.deletedFileRetentionDuration`` keeps the data files an older version reads from VACUUM, which
    predictive optimization runs on its own; ``delta.appendOnly`` makes Delta refuse deletes and updates.
    For a log written every second: a checkpoint every :data:`CHECKPOINT_INTERVAL` commits instead of Delta's 10
    (a checkpoint is written inside the commit that triggers it), and file statistics only on the columns that
    audits and the job filter on (``delta.dataSkippingStatsColumns``). Compaction (``OPTIMIZE``) is left to
    maintenance outside the job: predictive optimization on Databricks, ``OPTIMIZE`` by hand locally.
    """
    if isinstance(audit_window_days, bool) or not isinstance(audit_window_days, int):
        raise TypeError(
            f"audit_window_days must be an int, got {audit_window_days!r} ({type(audit_window_days).__name__})"
        )
    if audit_window_days < MINIMUM_AUDIT_WINDOW_DAYS:
        raise ValueError(
            f"audit_window_days must be at least {MINIMUM_AUDIT_WINDOW_DAYS} (Delta's VACUUM floor), "
            f"got {audit_window_days}"
        )
    window = f"interval {audit_window_days} days"
    properties = {
        "delta.logRetentionDuration": window,
        "delta.deletedFileRetentionDuration": window,
        "delta.checkpointInterval": str(CHECKPOINT_INTERVAL),
    }
    if table.stats_columns:
        properties["delta.dataSkippingStatsColumns"] = ",".join(table.stats_columns)
    if table.append_only:
        properties["delta.appendOnly"] = "true"
    return properties


def _sql_properties(properties: Mapping[str, str]) -> str:
    return ", ".join(f"'{key}' = '{value}'" for key, value in properties.items())


def _column_definitions(schema: StructType) -> str:
    """``name type [NOT NULL], ...`` of ``schema`` for CREATE TABLE (array elements become nullable in SQL DDL)."""
    return ", ".join(
        f"`{field.name}` {field.dataType.simpleString()}{'' if field.nullable else ' NOT NULL'}"
        for field in schema.fields
    )


@dataclass(frozen=True)
class TableLocations:
    """Where the tables live: a folder of Delta tables locally (``root``), or a Unity Catalog schema."""

    root: str
    catalog_schema: str | None = None

    def identifier(self, table: TableSpec) -> str:
        """Path or ``catalog.schema.table`` name of ``table``."""
        if self.catalog_schema:
            return f"{self.catalog_schema}.{table.name}"
        return str(Path(self.root) / table.name)

    def read(self, spark: SparkSession, table: TableSpec) -> DataFrame:
        """The table's current snapshot."""
        if self.catalog_schema:
            return spark.read.table(self.identifier(table))
        return spark.read.format("delta").load(self.identifier(table))

    def reference(self, table: TableSpec) -> str:
        """How SQL names ``table``: ``catalog.schema.table``, or ``delta.`<folder>``` for a path."""
        return self.identifier(table) if self.catalog_schema else f"delta.`{self.identifier(table)}`"

    def audit_view(self, table: TableSpec) -> str:
        """``catalog.schema.<table>_audit``: the auditor's view of ``table`` (only in a catalog)."""
        if not self.catalog_schema:
            raise ValueError(f"tables in folders ({self.root!r}) have no auditor's views; they need a catalog schema")
        return f"{self.catalog_schema}.{table.audit_view}"

    def ensure(self, spark: SparkSession, *, audit_window_days: int | None = None) -> None:
        """Create every missing table, empty, with its schema and properties; add the columns an older table lacks.

        A table named in a catalog is created with SQL (``CREATE TABLE IF NOT EXISTS``), which open-source Delta
        and Unity Catalog both accept for three-part names; a folder with ``DeltaTable.createIfNotExists``. In a
        catalog the auditor's views are created, or brought in line with the tables' columns. With
        ``audit_window_days`` (the job passes its setting) the retention and append-only properties of tables
        that already exist are brought in line too; without it (one-off commands) existing tables keep theirs and
        new ones get :data:`DEFAULT_AUDIT_WINDOW_DAYS`. Idempotent: nothing is written when nothing differs.
        """
        for table in ALL_TABLES:
            self.ensure_table(spark, table, audit_window_days=audit_window_days)

    def ensure_table(self, spark: SparkSession, table: TableSpec, *, audit_window_days: int | None = None) -> None:
        """:meth:`ensure` for one table (also one outside :data:`ALL_TABLES`, such as :data:`MODEL_SHARDS`)."""
        window = DEFAULT_AUDIT_WINDOW_DAYS if audit_window_days is None else audit_window_days
        properties = table_properties(table, window)
        if self.catalog_schema:
            spark.sql(
                f"CREATE TABLE IF NOT EXISTS {self.identifier(table)} ({_column_definitions(table.schema)}) "
                f"USING DELTA TBLPROPERTIES ({_sql_properties(properties)})"
            )
        else:
            from delta.tables import DeltaTable

            builder = DeltaTable.createIfNotExists(spark).addColumns(table.schema).location(self.identifier(table))
            for key, value in properties.items():
                builder = builder.property(key, value)
            builder.execute()
        self._add_missing_columns(spark, table)
        if audit_window_days is not None:
            self._set_properties(spark, table, properties)
        if self.catalog_schema:
            self._ensure_audit_view(spark, table)

    def properties(self, spark: SparkSession, table: TableSpec) -> dict[str, str]:
        """The stored table's properties (``SHOW TBLPROPERTIES``)."""
        return {row["key"]: row["value"] for row in spark.sql(f"SHOW TBLPROPERTIES {self.reference(table)}").collect()}

    def _set_properties(self, spark: SparkSession, table: TableSpec, wanted: Mapping[str, str]) -> None:
        """``ALTER TABLE ... SET TBLPROPERTIES`` for the properties that differ (no commit when none do)."""
        present = self.properties(spark, table)
        differing = {key: value for key, value in wanted.items() if present.get(key) != value}
        if differing:
            spark.sql(f"ALTER TABLE {self.reference(table)} SET TBLPROPERTIES ({_sql_properties(differing)})")

    def _ensure_audit_view(self, spark: SparkSession, table: TableSpec) -> None:
        """Create the auditor's view, or redefine it (``ALTER VIEW``, which keeps its grants) when columns changed."""
        view, query = self.audit_view(table), f"SELECT {', '.join(table.audit_select())} FROM {self.identifier(table)}"
        if not spark.catalog.tableExists(view):
            comment = f"fedstream: {table.name} without binary blobs, for auditors"
            spark.sql(f"CREATE VIEW IF NOT EXISTS {view} COMMENT '{comment}' AS {query}")
        elif spark.read.table(view).columns != spark.sql(query).columns:
            spark.sql(f"ALTER VIEW {view} AS {query}")

    def _add_missing_columns(self, spark: SparkSession, table: TableSpec) -> None:
        """``ALTER TABLE ... ADD COLUMNS`` for the nullable columns of ``table.schema`` the stored table lacks."""
        present = set(self.read(spark, table).columns)
        missing = [field for field in table.schema.fields if field.name not in present]
        required = [field.name for field in missing if not field.nullable]
        if required:
            raise RuntimeError(
                f"table {self.identifier(table)} lacks the non-nullable columns {required}: "
                "it was not created by fedstream, or by an incompatible version"
            )
        if not missing:
            return
        columns = ", ".join(f"{field.name} {field.dataType.simpleString()}" for field in missing)
        spark.sql(f"ALTER TABLE {self.reference(table)} ADD COLUMNS ({columns})")

    def append(
        self,
        spark: SparkSession,
        table: TableSpec,
        rows: Sequence[BaseModel],
        *,
        app_id: str | None,
        batch_id: int | None,
    ) -> None:
        """Append ``rows`` once per ``(app_id, batch_id)``: a replayed batch is skipped by Delta itself.

        ``app_id=None`` appends without a transaction id (one-off writes such as enrolments).
        """
        if not rows:
            return
        self.append_frame(table, arrow_frame(spark, table, rows), app_id=app_id, batch_id=batch_id)

    def append_frame(
        self, table: TableSpec, frame: DataFrame | None, *, app_id: str | None, batch_id: int | None
    ) -> None:
        """Append a DataFrame with ``table``'s columns, idempotently as :meth:`append` does."""
        if frame is None:
            return
        # mergeSchema: a table created before a nullable column existed takes it on this append
        writer = frame.write.format("delta").mode("append").option("mergeSchema", "true")
        if app_id is not None and batch_id is not None:
            writer = writer.option("txnAppId", f"{app_id}:{table.name}").option("txnVersion", batch_id)
        if self.catalog_schema:
            writer.saveAsTable(self.identifier(table))
        else:
            writer.save(self.identifier(table))


def arrow_frame(spark: SparkSession, table: TableSpec, rows: Sequence[BaseModel]) -> DataFrame:
    """A DataFrame of ``rows`` with ``table``'s schema, handed to the JVM as one Arrow table (no row pickling).

    One partition: the rows are already in the driver, so each append is one task writing one file, not one
    per core, and a table appended to every micro-batch gathers half as many small files.
    """
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(table.schema, timezone="UTC")
    return spark.createDataFrame(pa.Table.from_pylist([row.model_dump() for row in rows], schema=schema)).coalesce(1)
