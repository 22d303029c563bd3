"""The streaming job keeps a large model as shards and makes its versions on Spark's executors, end to end.

With ``--executor-aggregation-min-parameters`` below the model's size, signed chunked updates go through the
real broker and job: the job accepts them without assembling them, makes each version on the executors, and
publishes it in chunks. Every version clients receive is bit for bit the one the driver's own server computes
from the same updates (Adam, so the optimizer's slots live in the shards too; differential privacy with adaptive
clipping, so noise is drawn shard by shard on the executors and the clip norm moves on the driver), across a
restart of the job, which reloads the model from ``model_shards``. ``audit verify`` recomputes both versions on the
executors from what the tables record, writing nothing, and finds them exact; a record with one weight changed
does not verify.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import Row
from pyspark.sql import functions as F  # noqa: N812

from aggregator import SHARD_VALUES, AggregationConfig, AsyncServer, PendingUpdate
from devstack.topics import ensure_topics
from producers.identity import ClientIdentity
from producers.transport import GlobalModelSubscriber, UpdatePublisher
from schemas.chunks import encode_update_chunks
from schemas.kafka_settings import KafkaSettings
from schemas.messages import UpdateHeader
from schemas.tensors import Tensors, encode_tensors, parameter_hash
from streaming_jobs.audit import verify_chain, verify_rows
from streaming_jobs.tables import MODEL_SHARDS, MODEL_VERSIONS, UPDATES, TableLocations
from tests.conftest import RunningStack
from tests.integration.job_process import JobThread, quick_job_options

pytestmark = pytest.mark.stack

PARAMETERS = {
    "body.weight": np.full((2, SHARD_VALUES // 2 + 70_000), 0.01, dtype=np.float32),  # three shards
    "head.bias": np.zeros(10, dtype=np.float32),
}
AGGREGATION = {
    "buffer_size": 2, "max_wait_seconds": None, "server_optimizer": "adam", "server_learning_rate": 0.01,
    "weight_by_sample_count": False, "dp_noise_multiplier": 0.5, "dp_clip_norm": 5.0, "dp_adaptive_clipping": True,
    "dp_seed": 1234,  # fixed here so that the reference draws the same noise; a real job draws a secret one
}  # fmt: skip
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _update(identity: ClientIdentity, model: str, base_version: int, seed: int) -> tuple[list[bytes], PendingUpdate]:
    rng = np.random.default_rng(seed)
    delta: Tensors = {name: rng.normal(0, 0.01, array.shape).astype(np.float32) for name, array in PARAMETERS.items()}
    header = UpdateHeader(
        update_id=uuid.uuid4().hex, client_id=identity.client_id, model_name=model, base_version=base_version,
        sample_count=10 + seed, created_at=datetime.now(UTC), payload_sha256="0" * 64,
    )  # fmt: skip
    values = encode_update_chunks(header, delta, max_message_bytes=1_000_000, signer=identity.sign)
    pending = PendingUpdate(
        update_id=header.update_id, delta=delta, base_version=base_version, sample_count=header.sample_count,
        received_at=T0, client_id=identity.client_id,
    )  # fmt: skip
    return values, pending


def test_a_model_kept_as_shards_is_aggregated_on_executors_bit_for_bit(
    spark, local_stack: RunningStack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    kafka = KafkaSettings.from_env()
    ensure_topics(local_stack.kafka)
    model = f"test-{uuid.uuid4().hex[:8]}"
    initial = tmp_path / "initial.safetensors"
    initial.write_bytes(encode_tensors(PARAMETERS))
    keys = tmp_path / "enrolled"
    keys.mkdir()
    clients = [ClientIdentity.generate(name) for name in ("alice", "bob")]
    for identity in clients:
        (keys / f"{identity.client_id}.pub").write_text(identity.public_key.hex())
    options = quick_job_options(model, initial, AGGREGATION, keys, ("--executor-aggregation-min-parameters", "100000"))
    reference = AsyncServer(AggregationConfig.from_dict(AGGREGATION), PARAMETERS)  # the driver's path
    publisher = UpdatePublisher(kafka)
    subscriber = GlobalModelSubscriber(kafka, model)
    received = {}
    made = []
    job = JobThread(spark, tmp_path, options)
    try:
        for version in (1, 2):
            job.start()
            job.wait_for_version(kafka, version - 1)
            for index, identity in enumerate(clients):
                values, pending = _update(identity, model, version - 1, seed=10 * version + index)
                assert len(values) >= 2, "the updates travel in chunks"
                for value in values:
                    publisher.publish(identity.client_id, value, model_name=model)
                reference.receive(pending)
            made += reference.ready_versions(T0, deadline=False)
            job.wait_for_version(kafka, version)
            assert subscriber.wait_for_version_after(version - 1, 60) == version
            received[version] = subscriber.newest()
            job.stop()  # the second version is made by a job that loaded the model from model_shards
            job = JobThread(spark, tmp_path, options)
    finally:
        job.stop()
        publisher.close()
        subscriber.close()

    assert [version.version for version in made] == [1, 2]
    for expected in made:
        got = received[expected.version].parameters
        assert sorted(got) == sorted(expected.parameters)
        assert all(got[name].tobytes() == expected.parameters[name].tobytes() for name in got), expected.version

    locations = TableLocations(str(job.tables))
    rows = {
        row.version: row for row in locations.read(spark, MODEL_VERSIONS).where(F.col("model_name") == model).collect()
    }
    for expected in made:
        row = rows[expected.version]
        assert row.shards_key is not None and not row.parameters, "kept as shards, not in the row"
        assert row.parameter_hash == parameter_hash(expected.parameters)
        assert list(row.update_weights) == list(expected.weights)
    payloads = locations.read(spark, UPDATES).where(F.col("model_name") == model).select("payload").collect()
    assert len(payloads) == 4 and not any(row.payload for row in payloads), "the values stay in update_chunks"

    shards_before = locations.read(spark, MODEL_SHARDS).count()
    checks = verify_chain(spark, locations, model, 2)  # version 1 from version 0 held whole; 2 from 1's shards
    assert [(check["version"], check["ok"]) for check in checks] == [(1, True), (2, True)], checks
    assert all(check["recomputed_hash"] == rows[check["version"]].parameter_hash for check in checks)
    weights = list(rows[2].update_weights)
    tampered = Row(**{**rows[2].asDict(), "update_weights": [weights[0] * 1.5, *weights[1:]]})
    forged = verify_rows(spark, locations, tampered, rows[1])
    assert not forged.ok and forged.parent_hash_matches, "a changed weight recomputes to another version"
    assert forged.recomputed_hash != rows[2].parameter_hash
    assert locations.read(spark, MODEL_SHARDS).count() == shards_before, "an audit writes nothing"
