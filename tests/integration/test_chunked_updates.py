"""Updates and versions larger than one Kafka message travel in chunks, through the real broker, job and Delta.

Kafka's message limit is set to 8 KiB for this test, so the 44 KB model's updates and versions all travel as
several chunks: out of order, some twice, some forged, one update split across a restart of the job and one
that never completes. Every whole update is accepted once, the version recomputes from the tables, clients
read the chunked versions, and every refused chunk and the incomplete update have their rejection row.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F  # noqa: N812

from devstack.topics import ensure_topics
from producers.identity import ClientIdentity
from producers.transport import GlobalModelSubscriber, UpdatePublisher
from schemas.chunks import encode_update_chunks
from schemas.kafka_settings import KafkaSettings
from schemas.messages import Encoding, UpdateHeader
from schemas.tensors import encode_tensors, parameter_hash
from schemas.wire import Signer
from streaming_jobs.audit import verify_version
from streaming_jobs.tables import MODEL_VERSIONS, REJECTED_UPDATES, UPDATE_CHUNKS, UPDATES, TableLocations
from tests.conftest import RunningStack
from tests.integration.job_process import JobThread, quick_job_options, wait_until

pytestmark = pytest.mark.stack

LIMIT = 8 * 1024
PARAMETERS = {
    "conv.weight": np.zeros((64, 9, 8), dtype=np.float32),
    "dense.weight": np.zeros((100, 64), dtype=np.float32),
    "dense.bias": np.zeros(100, dtype=np.float32),
}
AGGREGATION = {"buffer_size": 3, "max_wait_seconds": None}
DEADLINE_SECONDS = 60
"""Far longer than a restart of the job takes, even on a loaded CI machine (bob's update waits across one)."""


def _chunks(
    identity: ClientIdentity, model: str, encoding: Encoding, seed: int, signer: Signer | None = None
) -> tuple[str, list[bytes]]:
    rng = np.random.default_rng(seed)
    header = UpdateHeader(
        update_id=uuid.uuid4().hex, client_id=identity.client_id, model_name=model, base_version=0,
        sample_count=10 + seed, created_at=datetime.now(UTC), payload_sha256="0" * 64,
    )  # fmt: skip
    delta = {name: rng.normal(0, 0.01, array.shape).astype(np.float32) for name, array in PARAMETERS.items()}
    values = encode_update_chunks(
        header, delta, max_message_bytes=LIMIT, encoding=encoding, signer=signer or identity.sign
    )
    return header.update_id, values


def test_chunked_updates_and_versions_cross_a_restart_and_stock_size_limits(
    spark, local_stack: RunningStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FEDSTREAM_KAFKA_MAX_MESSAGE_BYTES", str(LIMIT))
    kafka = KafkaSettings.from_env()
    ensure_topics(local_stack.kafka)
    model = f"test-{uuid.uuid4().hex[:8]}"
    initial = tmp_path / "initial.safetensors"
    initial.write_bytes(encode_tensors(PARAMETERS))
    assert len(initial.read_bytes()) > 2 * LIMIT
    keys = tmp_path / "enrolled"
    keys.mkdir()
    alice, bob, carol = (ClientIdentity.generate(name) for name in ("alice", "bob", "carol"))
    for identity in (alice, bob, carol):
        (keys / f"{identity.client_id}.pub").write_text(identity.public_key.hex())
    mallory = ClientIdentity.generate("mallory")

    options = quick_job_options(model, initial, AGGREGATION, keys, ("--chunk-deadline-seconds", str(DEADLINE_SECONDS)))
    job = JobThread(spark, tmp_path, options)
    locations = TableLocations(str(job.tables))
    publisher = UpdatePublisher(kafka)
    alice_id, alice_chunks = _chunks(alice, model, Encoding.FLOAT32, 1)
    bob_id, bob_chunks = _chunks(bob, model, Encoding.FLOAT16, 2)
    carol_id, carol_chunks = _chunks(carol, model, Encoding.INT8, 3)
    forged_id, forged_chunks = _chunks(carol, model, Encoding.FLOAT32, 4, signer=mallory.sign)  # mallory as carol
    lost_id, lost_chunks = _chunks(alice, model, Encoding.FLOAT32, 5)
    assert min(len(chunks) for chunks in (alice_chunks, bob_chunks, carol_chunks)) >= 2
    assert all(len(value) <= LIMIT for value in [*alice_chunks, *bob_chunks, *carol_chunks])

    def send(client: str, values: list[bytes]) -> None:
        for value in values:
            publisher.publish(client, value, model_name=model)

    try:
        send("alice", lost_chunks[:1])  # never completed: expires DEADLINE_SECONDS later, in Kafka time
        lost_sent_at = time.monotonic()
        job.start()
        job.wait_for_version(kafka, 0)
        send("alice", [*reversed(alice_chunks), alice_chunks[0]])  # out of order, and chunk 0 twice
        send("bob", bob_chunks[:1])  # the rest after the restart
        send("carol", forged_chunks)
        wait_until(lambda: job.status().get("open_chunked_updates") == 2, 60, "bob's first chunk held")
        job.stop()

        send("bob", bob_chunks[1:])
        send("carol", [carol_chunks[-1], *carol_chunks[:-1]])
        job = JobThread(spark, tmp_path, options)
        job.start()
        job.wait_for_version(kafka, 1)
        subscriber = GlobalModelSubscriber(kafka, model)
        assert subscriber.wait_for_version_after(0, 60) == 1
        newest = subscriber.newest()
        subscriber.close()

        time.sleep(max(0.0, lost_sent_at + DEADLINE_SECONDS + 1 - time.monotonic()))
        send("alice", lost_chunks[1:2])  # past the deadline: its arrival also moves Kafka time on
        reasons = locations.read(spark, REJECTED_UPDATES).where(F.col("update_id") == lost_id)
        incomplete = reasons.where(F.col("reason") == "incomplete")
        wait_until(lambda: incomplete.count() == 2, 60, "the expiry and the late chunk")
    finally:
        job.stop()
        publisher.close()

    accepted = locations.read(spark, UPDATES).where(F.col("model_name") == model).collect()
    assert sorted(row.update_id for row in accepted) == sorted([alice_id, bob_id, carol_id]), "each whole update once"
    versions = locations.read(spark, MODEL_VERSIONS).where(F.col("model_name") == model).collect()
    assert sorted(row.version for row in versions) == [0, 1]
    version = next(row for row in versions if row.version == 1)
    assert sorted(version.update_ids) == sorted([alice_id, bob_id, carol_id])
    assert verify_version(spark, locations, model, 1).ok, "the version recomputes from the stored updates"

    assert newest.header.version == 1 and newest.header.layout is not None, "clients took the chunked version"
    assert parameter_hash(newest.parameters) == version.parameter_hash

    rejected = locations.read(spark, REJECTED_UPDATES).where(F.col("job_model") == model).collect()
    by_update: dict[str, list[str]] = {}
    for row in rejected:
        by_update.setdefault(row.update_id, []).append(row.reason)
    assert by_update[alice_id] == ["duplicate_chunk"]
    assert by_update[forged_id] == ["bad_signature"] * len(forged_chunks)
    assert sorted(by_update[lost_id]) == ["incomplete", "incomplete"]
    expired = next(row for row in rejected if row.update_id == lost_id and row.raw_value is None)
    assert f"1 of {len(lost_chunks)} chunks arrived" in expired.detail

    kept = locations.read(spark, UPDATE_CHUNKS).where(F.col("model_name") == model).collect()
    assert {
        update_id: sorted(row.chunk_index for row in kept if row.update_id == update_id)
        for update_id in (alice_id, bob_id, carol_id, lost_id)
    } == {
        alice_id: list(range(len(alice_chunks))),
        bob_id: list(range(len(bob_chunks))),
        carol_id: list(range(len(carol_chunks))),
        lost_id: [0],
    }, "every kept chunk once, across the restart"
