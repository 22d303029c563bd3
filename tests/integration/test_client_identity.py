"""Only enrolled, unrevoked clients holding their key, sending fresh updates, get in: on the real stack."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer
from pyspark.sql import functions as F  # noqa: N812

from devstack.topics import ensure_topics
from fedstream import cli
from producers.identity import ClientIdentity
from producers.transport import UpdatePublisher
from producers.updates import build_update
from schemas.messages import UpdateHeader
from schemas.tensors import encode_tensors
from schemas.topics import UPDATES_TOPIC
from schemas.wire import encode_update, tensors_payload
from streaming_jobs.tables import REJECTED_UPDATES, UPDATES, TableLocations
from tests.conftest import RunningStack
from tests.integration.job_process import test_job_thread, wait_until

pytestmark = pytest.mark.stack

PARAMETERS = {"w": np.zeros((8, 4), dtype=np.float32)}
AGGREGATION = {"buffer_size": 100, "max_wait_seconds": None}


def _delta() -> dict[str, np.ndarray]:
    return {"w": np.full((8, 4), 0.01, dtype=np.float32)}


def test_unsigned_unknown_forged_revoked_and_replayed_updates_are_refused(
    spark, local_stack: RunningStack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ensure_topics(local_stack.kafka)
    model = f"test-{uuid.uuid4().hex[:8]}"
    initial = tmp_path / "initial.safetensors"
    initial.write_bytes(encode_tensors(PARAMETERS))
    keys = tmp_path / "enrolled"
    keys.mkdir()
    alice, bob = ClientIdentity.generate("alice"), ClientIdentity.generate("bob")
    for identity in (alice, bob):
        (keys / f"{identity.client_id}.pub").write_text(identity.public_key.hex())
    mallory = ClientIdentity.generate("mallory")  # never enrolled
    job = test_job_thread(spark, tmp_path, model, initial, AGGREGATION, keys)
    publisher = UpdatePublisher(local_stack.kafka)
    expected: dict[str, str] = {}
    common = {"model_name": model, "base_version": 0, "sample_count": 3, "delta": _delta()}
    try:
        job.start()
        job.wait_for_version(local_stack.kafka, 0)
        good, value = build_update(client_id="alice", signer=alice.sign, **common)
        publisher.publish("alice", value)
        header, value = build_update(client_id="alice", **common)
        publisher.publish("alice", value)
        expected[header.update_id] = "unsigned"
        header, value = build_update(client_id="mallory", signer=mallory.sign, **common)
        publisher.publish("mallory", value)
        expected[header.update_id] = "unknown_client"
        header, value = build_update(client_id="alice", signer=mallory.sign, **common)  # mallory forges alice
        publisher.publish("alice", value)
        expected[header.update_id] = "bad_signature"
        payload, payload_hash = tensors_payload(_delta())
        stale = UpdateHeader(
            update_id=uuid.uuid4().hex, client_id="alice", model_name=model, base_version=0, sample_count=3,
            created_at=datetime.now(UTC) - timedelta(hours=2), payload_sha256=payload_hash,
        )  # fmt: skip
        publisher.publish("alice", encode_update(stale, payload, alice.sign))
        expected[stale.update_id] = "outside_replay_window"
        # A replayer who controls the producer sets the record timestamp to the old created_at; the topic's
        # LogAppendTime replaces it with the broker's clock, so the update is still outside the window.
        backdated = stale.model_copy(update={"update_id": uuid.uuid4().hex})
        raw = KafkaProducer(**local_stack.kafka.producer_options())
        raw.send(
            UPDATES_TOPIC, key=b"alice", value=encode_update(backdated, payload, alice.sign),
            timestamp_ms=int(backdated.created_at.timestamp() * 1000),
        ).get(timeout=60)  # fmt: skip
        raw.close()
        expected[backdated.update_id] = "outside_replay_window"

        locations = TableLocations(str(job.tables))
        wait_until(lambda: job.status().get("messages", 0) >= 6, 120, "the first six messages")

        assert cli.main(["clients", "revoke", "bob", "--tables-root", str(job.tables)]) == 0  # the operator's command
        time.sleep(5)  # a revocation is in effect within twice the refresh period (2 s in this test)
        header, value = build_update(client_id="bob", signer=bob.sign, **common)
        publisher.publish("bob", value)
        expected[header.update_id] = "revoked_client"
        wait_until(lambda: job.status().get("messages", 0) >= 7, 120, "the revoked client's update")
    finally:
        job.stop()
        publisher.close()

    accepted = [row.update_id for row in locations.read(spark, UPDATES).where(F.col("model_name") == model).collect()]
    assert accepted == [good.update_id]
    rejected = {row.update_id: row.reason for row in locations.read(spark, REJECTED_UPDATES).collect()}
    assert {update_id: rejected.get(update_id) for update_id in expected} == expected
