"""fedstream's Delta tables: their Spark schemas, locations, creation and idempotent appends.

Every append inside ``foreachBatch`` carries ``txnAppId``/``txnVersion`` = (table writer, batch id), so a
micro-batch replayed after a crash never writes its rows twice. Columns added in later fedstream versions are
nullable: ``ensure`` adds them to a table an older version created, and appends merge them in too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

from schemas.rows import ClientKeyRow, ModelVersionRow, RejectedUpdateRow, UpdateRow

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
    """A Delta table: its name, Spark schema and the pydantic row model that describes one row."""

    name: str
    schema: StructType
    row_model: type[BaseModel]


UPDATES = TableSpec("updates", UPDATES_SCHEMA, UpdateRow)
REJECTED_UPDATES = TableSpec("rejected_updates", REJECTED_UPDATES_SCHEMA, RejectedUpdateRow)
MODEL_VERSIONS = TableSpec("model_versions", MODEL_VERSIONS_SCHEMA, ModelVersionRow)
CLIENT_KEYS = TableSpec("client_keys", CLIENT_KEYS_SCHEMA, ClientKeyRow)
ALL_TABLES = (UPDATES, REJECTED_UPDATES, MODEL_VERSIONS, CLIENT_KEYS)


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

    def ensure(self, spark: SparkSession) -> None:
        """Create every missing table, empty, with its schema; add the columns an older table lacks (idempotent)."""
        from delta.tables import DeltaTable

        for table in ALL_TABLES:
            builder = DeltaTable.createIfNotExists(spark).addColumns(table.schema)
            if self.catalog_schema:
                builder = builder.tableName(self.identifier(table))
            else:
                builder = builder.location(self.identifier(table))
            builder.execute()
            self._add_missing_columns(spark, table)

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
        reference = self.identifier(table) if self.catalog_schema else f"delta.`{self.identifier(table)}`"
        columns = ", ".join(f"{field.name} {field.dataType.simpleString()}" for field in missing)
        spark.sql(f"ALTER TABLE {reference} ADD COLUMNS ({columns})")

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
        frame = spark.createDataFrame([_as_tuple(row, table.schema) for row in rows], schema=table.schema)
        self.append_frame(table, frame, app_id=app_id, batch_id=batch_id)

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


def _as_tuple(row: BaseModel, schema: StructType) -> tuple[Any, ...]:
    values = row.model_dump()
    return tuple(values[field.name] for field in schema.fields)
