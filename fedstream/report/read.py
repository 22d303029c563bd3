"""The report's rows from the Delta tables: only the columns it shows, never a blob.

The one part of :mod:`fedstream.report` that needs Spark. Timestamps are brought back as microseconds since the
Unix epoch and made UTC datetimes here, since PySpark hands ``TIMESTAMP`` values back as naive local times.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fedstream.report.data import REJECTED_COLUMNS, UPDATE_COLUMNS, VERSION_COLUMNS, ReportData, summarize

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from streaming_jobs.tables import TableLocations

TIMESTAMP_COLUMNS = frozenset({"created_at", "received_at", "rejected_at"})
"""The columns read as microseconds (``unix_micros``) and turned into aware UTC datetimes."""
DETAIL_CHARACTERS_READ = 1000
"""Characters of each rejection detail brought to the driver (an ``internal_error`` detail holds a traceback)."""


def read_report_data(
    spark: SparkSession,
    locations: TableLocations,
    model_name: str,
    *,
    generated_at: datetime | None = None,
) -> ReportData:
    """The report of ``model_name`` from the tables at ``locations`` (see :func:`fedstream.report.data.summarize`)."""
    from pyspark.sql import functions as F  # noqa: N812

    from streaming_jobs.tables import MODEL_VERSIONS, REJECTED_UPDATES, UPDATES

    versions = locations.read(spark, MODEL_VERSIONS).where(F.col("model_name") == model_name)
    updates = locations.read(spark, UPDATES).where(F.col("model_name") == model_name)
    rejected = locations.read(spark, REJECTED_UPDATES).withColumn(
        "detail", F.substring("detail", 1, DETAIL_CHARACTERS_READ)
    )
    return summarize(
        model_name,
        collect_columns(versions, VERSION_COLUMNS),
        collect_columns(updates, UPDATE_COLUMNS),
        collect_columns(rejected, REJECTED_COLUMNS),
        generated_at=generated_at,
        source=locations.catalog_schema or locations.root,
    )


def collect_columns(frame: DataFrame, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """``frame``'s ``columns`` (those it has) as dicts, timestamps as aware UTC datetimes; nothing else is read."""
    from pyspark.sql import functions as F  # noqa: N812

    present = [column for column in columns if column in frame.columns]
    selected = [
        F.unix_micros(F.col(column)).alias(column) if column in TIMESTAMP_COLUMNS else F.col(column)
        for column in present
    ]
    return [_row(row.asDict()) for row in frame.select(*selected).collect()]


def _row(values: dict[str, Any]) -> dict[str, Any]:
    return {column: _from_micros(value) if column in TIMESTAMP_COLUMNS else value for column, value in values.items()}


def _from_micros(micros: int | None) -> datetime | None:
    if micros is None:
        return None
    seconds, remainder = divmod(micros, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=remainder)
