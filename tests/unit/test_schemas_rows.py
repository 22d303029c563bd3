"""Each pydantic Delta row model agrees with the Spark schema of its table, field by field."""

import types
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import AwareDatetime, BaseModel, ValidationError
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DataType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructType,
    TimestampType,
)

from schemas import rows
from schemas.rows import (
    ClientKeyRow,
    KafkaCoordinates,
    ModelShardRow,
    ModelVersionRow,
    RejectedUpdateRow,
    UpdateChunkRow,
    UpdateRow,
)
from streaming_jobs.tables import ALL_TABLES, ON_DEMAND_TABLES, TableSpec
from tests import rows as rows_for_tests

TABLES = (*ALL_TABLES, *ON_DEMAND_TABLES)
TABLE_IDS = [table.name for table in TABLES]
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
KAFKA: dict[str, Any] = {
    "kafka_topic": "fl.updates",
    "kafka_partition": 2,
    "kafka_offset": 1234,
    "kafka_timestamp": NOW,
}


def strip_optional(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``| None``, and whether ``None`` was allowed."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        rest = [member for member in members if member is not type(None)]
        assert len(rest) == 1, f"unexpected union {annotation}"
        return rest[0], len(rest) < len(members)
    return annotation, False


def strip_annotated(annotation: Any) -> Any:
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def spark_type_matches(annotation: Any, spark_type: DataType) -> bool:
    """Whether a (non-optional) Python annotation fits a Spark column type."""
    annotation = strip_annotated(annotation)
    if typing.get_origin(annotation) is list:
        (element,) = typing.get_args(annotation)
        element, element_nullable = strip_optional(element)
        return (
            isinstance(spark_type, ArrayType)
            and spark_type.containsNull == element_nullable
            and spark_type_matches(element, spark_type.elementType)
        )
    expected: dict[Any, tuple[type[DataType], ...]] = {
        bool: (BooleanType,),
        int: (LongType, IntegerType),
        float: (DoubleType,),
        str: (StringType,),
        bytes: (BinaryType,),
        AwareDatetime: (TimestampType,),
        datetime: (TimestampType,),
    }
    if typing.get_origin(annotation) is typing.Literal:
        return all(isinstance(value, str) for value in typing.get_args(annotation)) and isinstance(
            spark_type, StringType
        )
    return annotation in expected and isinstance(spark_type, expected[annotation])


def test_every_row_model_has_a_table_and_every_table_a_row_model() -> None:
    row_models = {
        value
        for value in vars(rows).values()
        if isinstance(value, type)
        and issubclass(value, BaseModel)
        and value.__module__ == rows.__name__
        and not value.__name__.startswith("_")
    }
    assert row_models - {KafkaCoordinates} == {table.row_model for table in TABLES}
    assert {table.row_model for table in ALL_TABLES} == {
        UpdateRow,
        RejectedUpdateRow,
        ModelVersionRow,
        ClientKeyRow,
        UpdateChunkRow,
    }
    assert {table.row_model for table in ON_DEMAND_TABLES} == {ModelShardRow}
    assert len({table.name for table in TABLES}) == len(TABLES)


@pytest.mark.parametrize("table", TABLES, ids=TABLE_IDS)
def test_row_fields_equal_the_spark_columns_in_name_and_nullability(table: TableSpec) -> None:
    model_columns = {name: strip_optional(field.annotation)[1] for name, field in table.row_model.model_fields.items()}
    spark_columns = {field.name: field.nullable for field in table.schema.fields}
    assert model_columns == spark_columns


@pytest.mark.parametrize("table", TABLES, ids=TABLE_IDS)
def test_row_fields_are_in_the_spark_column_order(table: TableSpec) -> None:
    assert list(table.row_model.model_fields) == table.schema.fieldNames()


@pytest.mark.parametrize("table", TABLES, ids=TABLE_IDS)
def test_row_field_types_fit_the_spark_column_types(table: TableSpec) -> None:
    mismatched = []
    for column in table.schema.fields:
        annotation, _ = strip_optional(table.row_model.model_fields[column.name].annotation)
        if not spark_type_matches(annotation, column.dataType):
            mismatched.append(f"{column.name}: {annotation} vs {column.dataType}")
    assert mismatched == []


@pytest.mark.parametrize("table", TABLES, ids=TABLE_IDS)
def test_every_row_field_is_required_so_a_writer_cannot_forget_one(table: TableSpec) -> None:
    optional = [name for name, field in table.row_model.model_fields.items() if not field.is_required()]
    assert optional == []


@pytest.mark.parametrize("table", TABLES, ids=TABLE_IDS)
def test_the_spark_schema_has_no_duplicate_columns(table: TableSpec) -> None:
    assert isinstance(table.schema, StructType)
    names = table.schema.fieldNames()
    assert len(names) == len(set(names))


def update_row() -> UpdateRow:
    return rows_for_tests.update_row(7, **KAFKA, model_name="har.mlp", validation_accuracy=0.75, validation_count=10)


def rejected_row() -> RejectedUpdateRow:
    return rows_for_tests.rejected_row(**KAFKA)


def model_version_row() -> ModelVersionRow:
    return rows_for_tests.version_row(
        1, model_name="har.mlp", update_ids=["0" * 32], update_weights=[1.0], update_staleness=[0], batch_id=2
    )


def client_key_row() -> ClientKeyRow:
    return ClientKeyRow(client_id="client-007", public_key=bytes(32), action="enrol", recorded_at=NOW)


def update_chunk_row() -> UpdateChunkRow:
    return UpdateChunkRow(
        **KAFKA,
        model_name="har.mlp",
        assembly_id="a" * 64,
        update_id="0" * 32,
        client_id="client-007",
        chunk_index=1,
        chunk_count=3,
        key=b"client-007",
        value=b"FUC1...",
        received_at=NOW,
        batch_id=2,
    )


def model_shard_row() -> ModelShardRow:
    """A row as the executors write it (``shard_rows`` makes the same dicts ``aggregate_on_executors`` appends)."""
    import numpy as np

    from aggregator import AggregationConfig
    from streaming_jobs.executor_aggregation import shard_rows

    config = AggregationConfig.from_dict({"server_optimizer": "adam", "server_learning_rate": 0.1})
    optimizer = config.make_optimizer()
    parameters = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    optimizer.step(parameters, {"w": np.ones((2, 3), np.float32)})  # so the state has slots
    (row,) = shard_rows("har.mlp", 3, "f" * 64, parameters, optimizer.state_dict(), config, batch_id=4)
    return ModelShardRow(**row)


SAMPLES: dict[type[BaseModel], Callable[[], BaseModel]] = {
    ModelShardRow: model_shard_row,
    ClientKeyRow: client_key_row,
    UpdateChunkRow: update_chunk_row,
    UpdateRow: update_row,
    RejectedUpdateRow: rejected_row,
    ModelVersionRow: model_version_row,
}


@pytest.mark.parametrize("table", TABLES, ids=TABLE_IDS)
def test_a_sample_row_dumps_exactly_the_spark_columns(table: TableSpec) -> None:
    row = SAMPLES[table.row_model]()
    assert set(row.model_dump()) == set(table.schema.fieldNames())


@pytest.mark.parametrize("table", TABLES, ids=TABLE_IDS)
def test_rows_are_frozen(table: TableSpec) -> None:
    row = SAMPLES[table.row_model]()
    field = next(iter(type(row).model_fields))
    before = getattr(row, field)
    with pytest.raises(ValidationError, match="frozen"):
        setattr(row, field, before)
    assert getattr(row, field) == before


@pytest.mark.parametrize("table", TABLES, ids=TABLE_IDS)
def test_rows_forbid_extra_fields(table: TableSpec) -> None:
    values = SAMPLES[table.row_model]().model_dump()
    with pytest.raises(ValidationError, match="extra"):
        table.row_model(**values, note="free text")


@pytest.mark.parametrize("table", TABLES, ids=TABLE_IDS)
def test_rows_refuse_naive_datetimes(table: TableSpec) -> None:
    values = SAMPLES[table.row_model]().model_dump()
    timestamp_columns = [field.name for field in table.schema.fields if isinstance(field.dataType, TimestampType)]
    assert timestamp_columns
    for name in timestamp_columns:
        with pytest.raises(ValidationError, match=name):
            table.row_model(**{**values, name: datetime(2025, 3, 1, 12, 0)})


@pytest.mark.parametrize("table", TABLES, ids=TABLE_IDS)
def test_a_non_nullable_column_refuses_none(table: TableSpec) -> None:
    values = SAMPLES[table.row_model]().model_dump()
    for column in table.schema.fields:
        if not column.nullable:
            with pytest.raises(ValidationError, match=column.name):
                table.row_model(**{**values, column.name: None})


def test_update_row_identifiers_follow_the_header_patterns() -> None:
    values = update_row().model_dump()
    for name, bad in [("client_id", "Alice"), ("update_id", "xyz"), ("payload_sha256", "A" * 64), ("sample_count", 0)]:
        with pytest.raises(ValidationError, match=name):
            UpdateRow(**{**values, name: bad})
