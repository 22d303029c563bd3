"""Several models on one ``fl.updates`` topic: a job reads past the messages whose model header names another
model (never judged, never recorded), and judges every other message as before, on the real broker and Spark."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F  # noqa: N812

from producers.transport import PublishedAt, UpdatePublisher
from producers.updates import build_update
from schemas.topics import UPDATES_TOPIC
from streaming_jobs.checkpoint_identity import CheckpointIdentity
from streaming_jobs.intake_limits import IntakeLimits
from streaming_jobs.settings import JobSettings
from streaming_jobs.update_batch import UpdateBatchProcessor
from tests.conftest import RunningStack

pytestmark = pytest.mark.stack

LARGEST_UPDATE = 2**18
"""The job's largest update here: "oversized" messages of twice that still fit the broker's stock limit."""


def _update(model: str) -> bytes:
    delta = {"w": np.full((4, 2), 0.01, dtype=np.float32)}
    return build_update(client_id="client-0", model_name=model, base_version=0, sample_count=5, delta=delta)[1]


def test_a_job_reads_past_other_models_messages_and_judges_the_rest(
    spark, local_stack: RunningStack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    publisher = UpdatePublisher(local_stack.kafka)
    oversized = os.urandom(2 * LARGEST_UPDATE)
    sent: dict[str, PublishedAt | None] = {
        "mine": publisher.publish("client-0", _update("mine"), model_name="mine"),
        "theirs": publisher.publish("client-0", _update("theirs"), model_name="theirs"),
        "theirs without a header": publisher.publish("client-0", _update("theirs")),
        "garbage claiming mine": publisher.publish("client-0", b"not an update", model_name="mine"),
        "oversized claiming mine": publisher.publish("client-0", oversized, model_name="mine"),
        "oversized claiming theirs": publisher.publish("client-0", oversized, model_name="theirs"),
    }
    publisher.close()
    where = {(at.partition, at.offset): label for label, at in sent.items() if at is not None}
    assert len(where) == len(sent)

    wanted = F.lit(False)
    for partition, offset in where:
        wanted = wanted | ((F.col("partition") == partition) & (F.col("offset") == offset))
    batch = (
        spark.read.format("kafka")
        .options(**local_stack.kafka.spark_source_options())
        .option("subscribe", UPDATES_TOPIC)
        .option("startingOffsets", "earliest")
        .option("includeHeaders", "true")  # as the job reads fl.updates
        .load()
        .where(wanted)
    )
    settings = JobSettings(model_name="mine", tables_root=str(tmp_path / "tables"), require_signatures=False)
    identity = CheckpointIdentity(writer_id="mine:test", first_batch_id=0, created_at=datetime.now(UTC).isoformat())
    limits = IntakeLimits(
        max_update_bytes=LARGEST_UPDATE, max_offsets_per_trigger=10, batch_bytes_budget=2**24, rejected_bytes_kept=64
    )
    messages, too_large, others = UpdateBatchProcessor(spark, settings, identity, limits)._read_messages(batch)

    assert sorted(where[message.partition, message.offset] for message in messages) == sorted(
        ["mine", "theirs without a header", "garbage claiming mine"]
    ), "judged: this model's, and every message without a header naming another"
    assert [where[message.partition, message.offset] for message in too_large] == ["oversized claiming mine"]
    assert too_large[0].value is None and too_large[0].size == len(oversized), "its bytes stayed in Spark"
    assert others == 2, "another model's update and its oversized message: read past, never judged"
