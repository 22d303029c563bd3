"""Fuzzed input through the real topic and job: hypothesis draws a batch of messages (intact signed updates,
whole or in chunks, mutated ones and mutated chunks, arbitrary bytes, signed but invalid ones), the test
publishes them to ``fl.updates`` and reads the Delta tables back. Every message the broker stored is, by its
Kafka coordinates, in ``updates`` (the intact ones, and the chunk that completed each intact chunked update),
``update_chunks`` only (the other chunks of those), or ``rejected_updates`` with a reason (all others), exactly
once, and the job keeps running."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F  # noqa: N812

from devstack.topics import ensure_topics
from producers.identity import ClientIdentity
from producers.transport import PublishedAt, UpdatePublisher
from producers.updates import build_update
from schemas.chunks import UPDATE_CHUNK_MAGIC, encode_update_chunks
from schemas.messages import UpdateHeader
from schemas.rejections import RejectionReason
from schemas.tensors import encode_tensors
from schemas.topics import UPDATES_TOPIC
from streaming_jobs.tables import REJECTED_UPDATES, UPDATE_CHUNKS, UPDATES, TableLocations
from tests.conftest import RunningStack
from tests.integration.job_process import test_job_thread, wait_until

pytestmark = pytest.mark.stack

MESSAGES = 150
PARAMETERS = {"w": np.zeros((6, 4), dtype=np.float32), "b": np.zeros(4, dtype=np.float32)}
DEVICE = ClientIdentity.generate("fuzz-device")
STRANGER = ClientIdentity.generate("fuzz-stranger")  # never enrolled
KINDS = (
    "intact",
    "flip",
    "truncate",
    "append",
    "arbitrary",
    "empty",
    "other_key",
    "unsigned",
    "stranger",
    "nan",
    "wrong_shape",
    "future_base",
    "chunked",
    "chunk_flip",
    "chunk_truncate",
    "chunk_arbitrary",
)
CHUNK_KINDS = ("chunked", "chunk_flip", "chunk_truncate", "chunk_arbitrary")
"""Sent as chunks: all of an intact update's, or one mutated chunk (the first) of one."""


@dataclass(frozen=True)
class Plan:
    """How to build one message: a kind, a position (fraction of its length), a byte and a length."""

    kind: str
    position: float
    byte: int
    size: int


plans = st.builds(
    Plan,
    kind=st.sampled_from(KINDS),
    position=st.floats(0.0, 1.0, exclude_max=True),
    byte=st.integers(1, 255),
    size=st.integers(0, 2048),
)


def build(plan: Plan, model: str) -> tuple[str, list[bytes]]:
    """``(message key, values)`` for ``plan``; a fresh update id each time, so no intact message is a replay."""
    rng = np.random.default_rng(int(plan.position * 1e6))
    delta = {name: rng.normal(size=array.shape).astype(np.float32) for name, array in PARAMETERS.items()}
    signer = DEVICE.sign
    base_version = 0
    if plan.kind == "nan":
        delta["w"][0, 0] = np.nan
    elif plan.kind == "wrong_shape":
        delta["w"] = np.zeros((4, 6), dtype=np.float32)
    elif plan.kind == "future_base":
        base_version = 7
    client_id = DEVICE.client_id
    if plan.kind == "stranger":
        client_id, signer = STRANGER.client_id, STRANGER.sign
    if plan.kind in CHUNK_KINDS:
        return client_id, _chunks(plan, model, delta)
    _, value = build_update(
        client_id=client_id, model_name=model, base_version=base_version, sample_count=5, delta=delta,
        update_id=uuid.uuid4().hex, signer=None if plan.kind == "unsigned" else signer,
    )  # fmt: skip
    index = int(plan.position * len(value))
    if plan.kind == "flip":
        value = value[:index] + bytes([value[index] ^ plan.byte]) + value[index + 1 :]
    elif plan.kind == "truncate":
        value = value[:index]
    elif plan.kind == "append":
        value = value + bytes([plan.byte]) * max(plan.size, 1)
    elif plan.kind == "arbitrary":
        value = rng.integers(0, 256, size=plan.size, dtype=np.uint8).tobytes()
    elif plan.kind == "empty":
        value = b""
    key = "fuzz-other" if plan.kind == "other_key" else client_id
    return key, [value]


def _chunks(plan: Plan, model: str, delta: dict[str, np.ndarray]) -> list[bytes]:
    """All chunks of an intact update (at a limit that cuts it in two or more), or its first chunk, mutated."""
    header = UpdateHeader(
        update_id=uuid.uuid4().hex, client_id=DEVICE.client_id, model_name=model, base_version=0, sample_count=5,
        created_at=datetime.now(UTC), payload_sha256="0" * 64,
    )  # fmt: skip
    values = next(
        values
        for limit in range(1500, 500, -25)
        if len(values := encode_update_chunks(header, delta, max_message_bytes=limit, signer=DEVICE.sign)) > 1
    )
    if plan.kind == "chunked":
        return values
    first = values[0]
    index = int(plan.position * len(first))
    if plan.kind == "chunk_flip":
        return [first[:index] + bytes([first[index] ^ plan.byte]) + first[index + 1 :]]
    if plan.kind == "chunk_truncate":
        return [first[:index]]
    rng = np.random.default_rng(plan.size)
    return [UPDATE_CHUNK_MAGIC + rng.integers(0, 256, size=plan.size, dtype=np.uint8).tobytes()]


@settings(
    max_examples=1,
    deadline=None,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(batch=st.lists(plans, min_size=MESSAGES, max_size=MESSAGES))
def test_every_fuzzed_message_is_accepted_or_rejected_with_a_reason_exactly_once(
    spark, local_stack: RunningStack, tmp_path_factory: pytest.TempPathFactory, batch: list[Plan]
) -> None:  # type: ignore[no-untyped-def]
    ensure_topics(local_stack.kafka)
    folder = tmp_path_factory.mktemp("fuzz")
    model = f"fuzz-{uuid.uuid4().hex[:8]}"
    initial = folder / "initial.safetensors"
    initial.write_bytes(encode_tensors(PARAMETERS))
    keys = folder / "keys"
    keys.mkdir()
    (keys / f"{DEVICE.client_id}.pub").write_text(DEVICE.public_key.hex())
    job = test_job_thread(spark, folder, model, initial, {"buffer_size": 10_000, "max_wait_seconds": None}, keys)
    publisher = UpdatePublisher(local_stack.kafka)
    sent: dict[PublishedAt, str] = {}
    completing: set[PublishedAt] = set()  # the last chunk of each intact chunked update
    held: set[PublishedAt] = set()  # its other chunks
    locations = TableLocations(str(job.tables))
    try:
        job.start()
        job.wait_for_version(local_stack.kafka, 0)
        for plan in batch:
            key, values = build(plan, model)
            where = publisher.publish_chunks(key, values)
            sent.update(dict.fromkeys(where, plan.kind))
            if plan.kind == "chunked":
                completing.add(where[-1])
                held.update(where[:-1])
        wait_until(lambda: _rows_for(spark, locations, sent) + len(held) >= len(sent), 240, f"{len(sent)} rows")
        assert job.running(), f"the job stopped:\n{job.log()}"
    finally:
        job.stop()
        publisher.close()

    accepted = _coordinates(locations.read(spark, UPDATES), sent)
    rejected_rows = (
        locations.read(spark, REJECTED_UPDATES)
        .where(F.col("kafka_topic") == UPDATES_TOPIC)
        .select("kafka_partition", "kafka_offset", "reason", "detail")
        .collect()
    )
    rejected = {
        PublishedAt(row.kafka_partition, row.kafka_offset): row
        for row in rejected_rows
        if PublishedAt(row.kafka_partition, row.kafka_offset) in sent
    }
    matching = sum(PublishedAt(row.kafka_partition, row.kafka_offset) in sent for row in rejected_rows)
    assert matching == len(rejected), "no message rejected twice"
    assert len(accepted) == len(set(accepted)), "no message accepted twice"
    assert not set(accepted) & set(rejected), "no message both accepted and rejected"
    kept = set(_coordinates(locations.read(spark, UPDATE_CHUNKS), sent))
    assert kept == held | completing, "every chunk of an intact chunked update is kept, no other"
    assert not kept & set(rejected), "no kept chunk rejected"
    assert set(accepted) | set(rejected) | held == set(sent), "none silently dropped"
    intact = {where for where, kind in sent.items() if kind == "intact"} | completing
    assert set(accepted) == intact, {sent[where] for where in set(accepted) ^ intact}
    reasons = {reason.value for reason in RejectionReason}
    for where, row in rejected.items():
        assert row.reason in reasons and row.detail, (sent[where], row.reason, row.detail)


def _coordinates(frame, sent: dict[PublishedAt, str]) -> list[PublishedAt]:  # type: ignore[no-untyped-def]
    rows = frame.where(F.col("kafka_topic") == UPDATES_TOPIC).select("kafka_partition", "kafka_offset").collect()
    found = [PublishedAt(row.kafka_partition, row.kafka_offset) for row in rows]
    return [where for where in found if where in sent]


def _rows_for(spark, locations: TableLocations, sent: dict[PublishedAt, str]) -> int:  # type: ignore[no-untyped-def]
    accepted = _coordinates(locations.read(spark, UPDATES), sent)
    return len(accepted) + len(_coordinates(locations.read(spark, REJECTED_UPDATES), sent))
