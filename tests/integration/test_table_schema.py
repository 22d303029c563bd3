"""Tables created by an older fedstream keep working: new nullable columns are added on start and on append."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

import pytest
from pyspark.sql.types import StructType

from schemas.rows import ModelVersionRow
from streaming_jobs.tables import MODEL_VERSIONS, MODEL_VERSIONS_SCHEMA, TableLocations
from tests.rows import version_row

pytestmark = pytest.mark.stack

NEW_COLUMNS = ("epsilon_assumption", "privacy_budget_exhausted", "shards_key")
OLD_SCHEMA = StructType([field for field in MODEL_VERSIONS_SCHEMA.fields if field.name not in NEW_COLUMNS])


def _row(version: int, assumption: str | None, exhausted: bool | None) -> ModelVersionRow:
    epsilon = None if assumption is None else 1.5
    return version_row(version, epsilon=epsilon, epsilon_assumption=assumption, privacy_budget_exhausted=exhausted)


def _old_table(spark, path: str) -> None:  # type: ignore[no-untyped-def]
    """``model_versions`` as fedstream created and wrote it before the privacy columns existed."""
    from delta.tables import DeltaTable

    DeltaTable.createIfNotExists(spark).addColumns(OLD_SCHEMA).location(path).execute()
    values = _row(0, None, None).model_dump()
    frame = spark.createDataFrame([tuple(values[field.name] for field in OLD_SCHEMA.fields)], schema=OLD_SCHEMA)
    frame.write.format("delta").mode("append").save(path)


def _read(spark, locations: TableLocations) -> dict[int, tuple[object, object]]:  # type: ignore[no-untyped-def]
    rows = locations.read(spark, MODEL_VERSIONS).collect()
    return {row.version: (row.epsilon_assumption, row.privacy_budget_exhausted) for row in rows}


def test_an_append_merges_the_new_columns_into_an_old_table(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    locations = TableLocations(str(tmp_path))
    _old_table(spark, locations.identifier(MODEL_VERSIONS))
    locations.append(spark, MODEL_VERSIONS, [_row(1, "no_amplification", True)], app_id="test", batch_id=1)
    assert _read(spark, locations) == {0: (None, None), 1: ("no_amplification", True)}


def test_ensure_adds_the_new_columns_to_an_old_table_before_anything_reads_them(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    locations = TableLocations(str(tmp_path))
    _old_table(spark, locations.identifier(MODEL_VERSIONS))
    locations.ensure(spark)
    locations.ensure(spark)  # idempotent
    schema = locations.read(spark, MODEL_VERSIONS).schema
    assert schema.fieldNames() == MODEL_VERSIONS_SCHEMA.fieldNames()
    assert all(schema[name].nullable for name in NEW_COLUMNS)
    (old,) = locations.read(spark, MODEL_VERSIONS).collect()
    readable = ModelVersionRow.model_validate({**old.asDict(), "created_at": old.created_at.replace(tzinfo=UTC)})
    assert readable.epsilon_assumption is None, "an old row reads as a row of today (the job republishes it on start)"
    locations.append(spark, MODEL_VERSIONS, [_row(1, "poisson_subsampling q=0.05", False)], app_id="t", batch_id=1)
    assert _read(spark, locations) == {0: (None, None), 1: ("poisson_subsampling q=0.05", False)}
