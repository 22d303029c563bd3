"""The job on the real stack keeps running whatever arrives, and a new checkpoint loses nothing.

- A message whose processing raises becomes an ``internal_error`` row; the rest of its batch is accepted.
- Headers that once stopped the job for good (``created_at`` at the edge of ``datetime``) are rejected.
- Messages as large as the broker allows are recognised in Spark and never brought into Python.
- Deleting the checkpoint under existing tables neither skips nor repeats a write.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F  # noqa: N812

from devstack.topics import ensure_topics
from fedstream.job_process import JobProcess
from producers.identity import ClientIdentity
from producers.transport import UpdatePublisher
from producers.updates import build_update
from schemas.tensors import encode_tensors, sha256_hex
from schemas.wire import UNSIGNED, UPDATE_MAGIC
from streaming_jobs.audit import verify_version
from streaming_jobs.checkpoint_identity import IDENTITY_FILE
from streaming_jobs.faults import FAILING_UPDATE_VARIABLE
from streaming_jobs.tables import MODEL_VERSIONS, REJECTED_UPDATES, UPDATES, TableLocations
from tests.conftest import RunningStack
from tests.integration.job_process import JobThread, test_job, wait_until

pytestmark = pytest.mark.stack

BUFFER_SIZE = 4
AGGREGATION = {"mode": "fedbuff", "buffer_size": BUFFER_SIZE, "max_wait_seconds": None, "max_staleness": 3}
CLIENTS = {name: ClientIdentity.generate(name) for name in ("clinic-a", "clinic-b", "clinic-c")}
PARAMETERS = {"dense.weight": np.ones((16, 8), dtype=np.float32), "dense.bias": np.zeros(8, dtype=np.float32)}


def _job(local_stack: RunningStack, folder: Path, *extra_arguments: str) -> tuple[str, JobProcess]:
    """A fresh model and its job's layout and options over ``folder`` (started as a process or, by
    :class:`JobThread`, in a thread)."""
    ensure_topics(local_stack.kafka)
    model = f"test-{uuid.uuid4().hex[:8]}"
    initial = folder / "initial.safetensors"
    initial.write_bytes(encode_tensors(PARAMETERS))
    keys = folder / "keys"
    keys.mkdir()
    for identity in CLIENTS.values():
        (keys / f"{identity.client_id}.pub").write_text(identity.public_key.hex())
    job = test_job(folder, model, initial, AGGREGATION, keys)
    options = dataclasses.replace(job.options, extra_arguments=extra_arguments)
    return model, JobProcess(folder, options)


def _signed_updates(model: str, base_version: int, count: int, seed: int) -> list[tuple[str, str, bytes]]:
    """``count`` signed updates as (update id, client id, message), round-robin over the clinics."""
    rng = np.random.default_rng(seed)
    updates = []
    for index in range(count):
        client = list(CLIENTS)[index % len(CLIENTS)]
        delta = {name: (0.01 * rng.normal(size=array.shape)).astype(np.float32) for name, array in PARAMETERS.items()}
        header, value = build_update(
            client_id=client,
            signer=CLIENTS[client].sign,
            model_name=model,
            base_version=base_version,
            sample_count=10,
            delta=delta,
        )
        updates.append((header.update_id, client, value))
    return updates


def _unsigned_with_created_at(model: str, created_at: str) -> bytes:
    """An unsigned message whose well-formed header carries ``created_at`` (no key needed to send it)."""
    payload = encode_tensors(PARAMETERS)
    header = {
        "schema_version": 1,
        "update_id": uuid.uuid4().hex,
        "client_id": "clinic-a",
        "model_name": model,
        "base_version": 0,
        "sample_count": 1,
        "created_at": created_at,
        "payload_sha256": sha256_hex(payload),
    }
    header_json = json.dumps(header).encode()
    return UPDATE_MAGIC + len(header_json).to_bytes(4, "big") + header_json + UNSIGNED + payload


def _rows(spark, job: JobProcess | JobThread, table, model: str | None = None):  # type: ignore[no-untyped-def]
    frame = TableLocations(str(job.tables)).read(spark, table)
    return frame.where(F.col("model_name") == model).collect() if model else frame.collect()


def test_a_raising_message_fails_alone_and_a_deleted_checkpoint_neither_skips_nor_repeats_a_write(
    spark, local_stack: RunningStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """One job, three starts: a batch with a raising message and edge headers, then an operator's checkpoint reset.

    The job runs in a thread of the tests (its starts are what is tested, not its process).
    """
    model, process = _job(local_stack, tmp_path)
    updates = _signed_updates(model, 0, BUFFER_SIZE + 1, seed=1)
    failing_id = updates[2][0]
    ids = [update_id for update_id, _, _ in updates]
    second = _signed_updates(model, 1, BUFFER_SIZE, seed=4)
    monkeypatch.setenv(FAILING_UPDATE_VARIABLE, failing_id)  # the job reads it as it judges each update
    publisher = UpdatePublisher(local_stack.kafka)
    job = JobThread(spark, tmp_path, process.options)
    try:
        # everything is on the topic before the job starts, so it all arrives in one micro-batch after the restart
        job.start()
        job.wait_for_version(local_stack.kafka, 0)
        job.stop()
        for edge in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
            publisher.publish("clinic-a", _unsigned_with_created_at(model, edge))
        for _, client, value in updates:
            publisher.publish(client, value)
        job = JobThread(spark, tmp_path, process.options)
        job.start()
        job.wait_for_version(local_stack.kafka, 1)
        wait_until(lambda: job.status().get("messages", 0) >= len(updates) + 2, 60, "every message handled")
        assert job.running(), "the job keeps running"
        job.stop()
        first_identity = json.loads((job.checkpoint / IDENTITY_FILE).read_text())
        shutil.rmtree(job.checkpoint)  # an operator's reset: batch ids start again at 0 in Spark
        job = JobThread(spark, tmp_path, process.options)
        job.start()  # were the raising message read again, it would be recorded twice
        job.wait_for_version(local_stack.kafka, 1)
        for _, client, value in second:
            publisher.publish(client, value)
        job.wait_for_version(local_stack.kafka, 2)
        wait_until(lambda: job.status().get("accepted", 0) >= BUFFER_SIZE, 60, "the second round accepted")
    finally:
        job.stop()
        publisher.close()

    accepted = {row.update_id: row.batch_id for row in _rows(spark, job, UPDATES, model)}
    first_ids = [update_id for update_id in ids if update_id != failing_id]
    second_ids = [update_id for update_id, _, _ in second]
    assert sorted(accepted) == sorted(first_ids + second_ids), "nothing skipped, nothing twice"
    rejected = _rows(spark, job, REJECTED_UPDATES)
    failing = [row for row in rejected if row.update_id == failing_id]
    assert len(failing) == 1 and failing[0].reason == "internal_error"
    assert "InjectedMessageError" in failing[0].detail and failing[0].raw_size > 0
    assert failing[0].batch_id == accepted[first_ids[0]], "rejected in the same batch as the others were accepted"
    edges = [
        row
        for row in rejected
        if row.reason == "invalid_header" and model in bytes(row.raw_value).decode(errors="replace")
    ]
    assert len(edges) == 2 and all("created_at" in row.detail for row in edges), [row.detail for row in edges]
    assert not [row for row in rejected if row.reason == "duplicate_update" and row.update_id in ids], (
        "the new checkpoint resumed after the tables"
    )

    second_identity = json.loads((job.checkpoint / IDENTITY_FILE).read_text())
    assert second_identity["writer_id"] != first_identity["writer_id"]
    assert min(accepted[update_id] for update_id in second_ids) > max(accepted[update_id] for update_id in first_ids)
    assert second_identity["first_batch_id"] > max(accepted[update_id] for update_id in first_ids)
    versions = sorted(_rows(spark, job, MODEL_VERSIONS, model), key=lambda row: row.version)
    assert [row.version for row in versions] == [0, 1, 2]
    assert sorted(versions[2].update_ids) == sorted(second_ids)
    locations = TableLocations(str(job.tables))
    assert verify_version(spark, locations, model, 1).ok and verify_version(spark, locations, model, 2).ok


def test_messages_at_the_broker_limit_never_reach_python_and_updates_between_them_are_accepted(
    spark, local_stack: RunningStack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    budget = 4 * 1024 * 1024
    model, job = _job(local_stack, tmp_path, "--batch-bytes-budget", str(budget))
    limit = local_stack.kafka.max_message_bytes  # the largest value the stock broker takes from fedstream
    flood = [bytes([index]) * limit for index in range(6 * BUFFER_SIZE)]  # ~24 MB: six times the budget
    updates = _signed_updates(model, 0, BUFFER_SIZE, seed=2)
    publisher = UpdatePublisher(local_stack.kafka)
    try:
        job.start()
        job.wait_for_version(local_stack.kafka, 0)
        # MLflow's worker imports and connects beside the stream's start: part of the baseline, not the flood's
        wait_until(lambda: _mlflow_logged_a_version(f"test-{model}"), 120, "MLflow to record version 0")
        driver_peak_before = _peak_rss_bytes(job)
        for index, (_, client, value) in enumerate(updates):
            for large in flood[index::BUFFER_SIZE]:
                publisher.publish("flooder", large)
            publisher.publish(client, value)
        job.wait_for_version(local_stack.kafka, 1)
        wait_until(lambda: job.status().get("rejected", 0) >= len(flood), 120, "the flood recorded")
        driver_peak_after = _peak_rss_bytes(job)
        largest_intake = job.status()["largest_batch_message_bytes"]
    finally:
        job.stop()
        publisher.close()

    assert sorted(row.update_id for row in _rows(spark, job, UPDATES, model)) == sorted(i for i, _, _ in updates)
    oversized = [row for row in _rows(spark, job, REJECTED_UPDATES) if row.key == b"flooder"]
    assert len(oversized) == len(flood)
    for row in oversized:
        assert row.reason == "oversized" and row.raw_value is None and row.raw_size == limit
    assert {row.detail.rsplit("sha256 ", 1)[1] for row in oversized} == {sha256_hex(value) for value in flood}
    assert largest_intake <= budget, f"one batch brought {largest_intake} bytes into Python (budget {budget})"
    growth = driver_peak_after - driver_peak_before
    print(
        f"driver peak RSS {driver_peak_before >> 20} -> {driver_peak_after >> 20} MiB, "
        f"flood {len(flood) * limit >> 20} MiB, budget {budget >> 20} MiB"
    )
    assert growth < 2 * budget, f"the driver's peak memory grew {growth >> 20} MiB under the flood"


def _mlflow_logged_a_version(experiment: str) -> bool:
    from mlflow.tracking import MlflowClient

    from streaming_jobs.tracking import configure_mlflow

    configure_mlflow()
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else client.search_runs([found.experiment_id])
    return any("global_version" in run.data.metrics for run in runs)


def _peak_rss_bytes(job: JobProcess) -> int:
    """Peak resident memory of the job's Python driver (``VmHWM``), where every collected message would land."""
    assert job.process is not None
    for line in Path(f"/proc/{job.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")
