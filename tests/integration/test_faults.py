"""Exactly once under faults, on the real stack: the job is SIGKILLed at chosen and random points and restarted,
and the broker is restarted, while clients keep publishing. Nothing accepted is lost or duplicated."""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from kafka.errors import KafkaError
from pyspark.sql import functions as F  # noqa: N812

from producers.identity import ClientIdentity
from producers.transport import GlobalModelSubscriber, UpdatePublisher
from producers.updates import build_update
from schemas.kafka_settings import KafkaSettings
from schemas.tensors import encode_tensors
from streaming_jobs.audit import verify_version
from streaming_jobs.faults import FAULT_VARIABLE
from streaming_jobs.stack.kafka_broker import LocalKafkaBroker
from streaming_jobs.stack.topics import ensure_topics
from streaming_jobs.tables import MODEL_VERSIONS, UPDATES, TableLocations
from tests.conftest import RunningStack
from tests.integration.job_process import JobProcess

pytestmark = pytest.mark.stack

PARAMETERS = {"w": np.zeros((16, 8), dtype=np.float32), "b": np.zeros(8, dtype=np.float32)}
AGGREGATION = {"buffer_size": 4, "max_wait_seconds": 2.0, "max_staleness": None}
CLIENTS = [ClientIdentity.generate(f"device-{index}") for index in range(3)]
UPDATES_TO_SEND = 100
SECONDS_BETWEEN_UPDATES = 1.2  # the fleet outlasts four job restarts


class Fleet(threading.Thread):
    """Publishes signed updates from the newest version it sees, retrying each until the broker acknowledges it."""

    def __init__(self, kafka: KafkaSettings, model: str) -> None:
        super().__init__(daemon=True)
        self.kafka, self.model = kafka, model
        self.acknowledged: list[str] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            publisher = UpdatePublisher(self.kafka)
            subscriber = GlobalModelSubscriber(self.kafka, self.model)
            rng = np.random.default_rng(5)
            for index in range(UPDATES_TO_SEND):
                identity = CLIENTS[index % len(CLIENTS)]
                base = subscriber.poll(0.1) or 0
                delta = {name: (0.01 * rng.normal(size=a.shape)).astype(np.float32) for name, a in PARAMETERS.items()}
                header, value = build_update(
                    client_id=identity.client_id, model_name=self.model, base_version=base,
                    sample_count=10, delta=delta, signer=identity.sign,
                )  # fmt: skip
                self._publish_until_acknowledged(publisher, identity.client_id, value)
                self.acknowledged.append(header.update_id)
                time.sleep(SECONDS_BETWEEN_UPDATES)
            publisher.close()
            subscriber.close()
        except BaseException as error:  # reported to the test thread
            self.failure = error

    @staticmethod
    def _publish_until_acknowledged(publisher: UpdatePublisher, client_id: str, value: bytes) -> None:
        deadline = time.monotonic() + 180
        while True:
            try:
                publisher.publish(client_id, value)
                return
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)  # the broker is restarting; the same update (same id) is sent again


def test_sigkills_at_every_crash_point_and_a_broker_restart_lose_and_duplicate_nothing(
    spark, local_stack: RunningStack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ensure_topics(local_stack.kafka)
    model = f"test-{uuid.uuid4().hex[:8]}"
    initial = tmp_path / "initial.safetensors"
    initial.write_bytes(encode_tensors(PARAMETERS))
    keys = tmp_path / "keys"
    keys.mkdir()
    for identity in CLIENTS:
        (keys / f"{identity.client_id}.pub").write_text(identity.public_key.hex())
    job = JobProcess(tmp_path, model, initial, AGGREGATION, keys)
    fleet = Fleet(local_stack.kafka, model)
    crashes = 0
    try:
        job.start({FAULT_VARIABLE: "after_updates_write@2"})
        job.wait_for_version(local_stack.kafka, 0)
        fleet.start()
        for crash_point in ("after_updates_write@2", "after_versions_write@1", "during_aggregation@1"):
            if crashes:
                job.start({FAULT_VARIABLE: crash_point})
            code = job.wait_for_exit(240)
            assert code == -signal.SIGKILL, f"crash point {crash_point} did not fire (exit {code}):\n{job.log()}"
            crashes += 1

        job.start()  # no crash point: killed at a random moment instead
        job.wait_for_version(local_stack.kafka, 1)
        time.sleep(random.Random(11).uniform(2.0, 6.0))
        job.kill()
        crashes += 1

        job.start()
        broker = LocalKafkaBroker()
        broker.down()  # clients and the job lose the broker for a while
        time.sleep(5)
        broker.up()
        if job.wait_for_exit(5) is not None:  # the job may give up on a lost broker; a restart is the remedy
            job.start()

        fleet.join(600)
        assert not fleet.is_alive() and fleet.failure is None, f"fleet failed: {fleet.failure!r}"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and _aggregated(spark, job, model) < len(fleet.acknowledged):
            if job.wait_for_exit(2) is not None:  # should not happen any more; a restart is the remedy
                job.start()
        time.sleep(2)
    finally:
        job.stop()

    locations = TableLocations(str(job.tables))
    accepted = [row.update_id for row in locations.read(spark, UPDATES).where(F.col("model_name") == model).collect()]
    assert sorted(accepted) == sorted(fleet.acknowledged), "every acknowledged update exactly once in `updates`"
    versions = sorted(
        locations.read(spark, MODEL_VERSIONS).where(F.col("model_name") == model).collect(), key=lambda r: r.version
    )
    assert [row.version for row in versions] == list(range(len(versions))), "consecutive versions, no duplicates"
    placed = [update_id for row in versions for update_id in row.update_ids]
    assert sorted(placed) == sorted(fleet.acknowledged), "every accepted update in exactly one version"
    for row in versions[1:]:
        assert verify_version(spark, locations, model, row.version).ok, f"version {row.version} does not recompute"
    subscriber = GlobalModelSubscriber(local_stack.kafka, model)
    newest = subscriber.newest()
    subscriber.close()
    assert newest.header.version == versions[-1].version, "clients converge on the newest version"
    assert newest.header.parameter_hash == versions[-1].parameter_hash
    assert crashes == 4


def _aggregated(spark, job: JobProcess, model: str) -> int:  # type: ignore[no-untyped-def]
    rows = (
        TableLocations(str(job.tables))
        .read(spark, MODEL_VERSIONS)
        .where(F.col("model_name") == model)
        .select(F.size("update_ids").alias("count"))
        .collect()
    )
    return sum(row["count"] for row in rows)
