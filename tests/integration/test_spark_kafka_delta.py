"""Spark Structured Streaming reads fl.updates from the broker and writes Delta, exactly once across restarts."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kafka import KafkaProducer

from tests.conftest import RunningStack

pytestmark = pytest.mark.stack


def _stream_once(spark, kafka, topic: str, table: Path, checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    query = (
        spark.readStream.format("kafka")
        .options(**kafka.spark_source_options())
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
        .selectExpr("CAST(key AS STRING) AS key", "value", "partition", "offset")
        .writeStream.format("delta")
        .option("checkpointLocation", str(checkpoint))
        .trigger(availableNow=True)
        .start(str(table))
    )
    query.awaitTermination(300)
    assert query.exception() is None


def test_stream_to_delta_and_restart_without_duplicates(spark, local_stack: RunningStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"fl.updates.test-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(**local_stack.kafka.admin_options())
    admin.create_topics([NewTopic(topic, 1, 1)])  # the broker's stock message limit
    admin.close()

    largest = local_stack.kafka.max_message_bytes
    # a stock producer's max.request.size, room for the largest value and its record
    producer = KafkaProducer(**{**local_stack.kafka.producer_options(), "max_request_size": 1_048_576})
    for index in range(5):
        producer.send(topic, key=f"client-{index}".encode(), value=bytes([index]) * (largest if index == 0 else 10))
    producer.flush()

    table, checkpoint = tmp_path / "updates", tmp_path / "checkpoint"
    _stream_once(spark, local_stack.kafka, topic, table, checkpoint)
    _stream_once(spark, local_stack.kafka, topic, table, checkpoint)  # same checkpoint, nothing new
    rows = spark.read.format("delta").load(str(table)).collect()
    assert sorted(row.offset for row in rows) == [0, 1, 2, 3, 4]
    assert max(len(row.value) for row in rows) == largest

    producer.send(topic, key=b"client-late", value=b"late").get(timeout=30)
    producer.close()
    _stream_once(spark, local_stack.kafka, topic, table, checkpoint)
    rows = spark.read.format("delta").load(str(table)).collect()
    assert sorted(row.offset for row in rows) == [0, 1, 2, 3, 4, 5]
    assert [row.key for row in rows if row.offset == 5] == ["client-late"]
