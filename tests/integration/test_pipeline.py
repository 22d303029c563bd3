"""The whole loop on the real stack: clients → Kafka → job → Delta → versions → fl.models, with a restart."""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F  # noqa: N812

from devstack.topics import ensure_topics
from fedstream import cli
from producers.identity import ClientIdentity
from producers.transport import GlobalModelSubscriber, UpdatePublisher
from producers.updates import build_update
from schemas.cohorts import in_cohort
from schemas.tensors import encode_tensors
from streaming_jobs.audit import verify_version
from streaming_jobs.tables import TableLocations
from tests.conftest import RunningStack
from tests.integration.job_process import JobThread, test_job_thread, wait_until

pytestmark = pytest.mark.stack

BUFFER_SIZE = 4
AGGREGATION = {
    "mode": "fedbuff",
    "buffer_size": BUFFER_SIZE,
    "max_wait_seconds": None,
    "staleness_function": "polynomial",
    "max_staleness": 2,
    "server_optimizer": "adam",
    "server_learning_rate": 0.05,
}


def _initial_parameters() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "dense.weight": rng.normal(size=(32, 16)).astype(np.float32),
        "dense.bias": np.zeros(16, dtype=np.float32),
    }


def _delta(rng: np.random.Generator, parameters: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: (0.01 * rng.normal(size=array.shape)).astype(np.float32) for name, array in parameters.items()}


IDENTITIES = {
    name: ClientIdentity.generate(name) for name in ("client-0", "client-1", "client-2", "client-3", "client-bad")
}
FAST_CLIENT_FIRST = ["client-0", "client-0", "client-1", "client-2", "client-3", "client-1", "client-2", "client-3"]
"""Two buffers' worth of updates where client-0 sends its second update before the others their first."""


def _enrolled_keys(folder: Path) -> Path:
    for identity in IDENTITIES.values():
        (folder / f"{identity.client_id}.pub").write_text(identity.public_key.hex())
    return folder


def _new_job_thread(
    spark, local_stack: RunningStack, folder: Path, aggregation: dict[str, object]
) -> tuple[str, JobThread]:  # type: ignore[no-untyped-def]
    """A fresh model name and its job over ``folder`` in a thread on the tests' Spark session, clients enrolled."""
    model, initial = _new_model(local_stack, folder)
    return model, test_job_thread(spark, folder, model, initial, aggregation, _enrolled_keys(folder))


def _new_model(local_stack: RunningStack, folder: Path) -> tuple[str, Path]:
    ensure_topics(local_stack.kafka)
    model = f"test-{uuid.uuid4().hex[:8]}"
    initial = folder / "initial.safetensors"
    initial.write_bytes(encode_tensors(_initial_parameters()))
    return model, initial


def _mlflow_run(experiment: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    from streaming_jobs.tracking import configure_mlflow

    configure_mlflow()
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment}"
    (run,) = client.search_runs([found.experiment_id])
    return run


def _mlflow_params(experiment: str) -> dict[str, str]:
    return dict(_mlflow_run(experiment).data.params)


def _signed(client_id: str, **fields):  # type: ignore[no-untyped-def]
    return build_update(client_id=client_id, signer=IDENTITIES[client_id].sign, **fields)


def _publish_valid(
    publisher: UpdatePublisher,
    model: str,
    base: int,
    count: int,
    rng: np.random.Generator,
    clients: list[str] | None = None,
) -> list[str]:
    """``count`` valid updates from ``clients`` in turn (default: client-0, client-1, client-2, client-0, ...)."""
    ids = []
    for index in range(count):
        header, value = _signed(
            clients[index % len(clients)] if clients else f"client-{index % 3}",
            model_name=model,
            base_version=base,
            sample_count=int(rng.integers(10, 100)),
            delta=_delta(rng, _initial_parameters()),
        )
        publisher.publish(header.client_id, value)
        ids.append(header.update_id)
    return ids


def test_updates_become_consecutive_reproducible_versions_across_a_restart(
    spark, local_stack: RunningStack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Bad input of every kind, replays before and after a restart, and the audit CLI over the result.

    The restart is a clean stop and a fresh start on the tests' Spark session: the job rebuilds its state from
    Delta. SIGKILLs at every crash point are ``test_faults``' (the fault campaign's) to prove.
    """
    model, job = _new_job_thread(spark, local_stack, tmp_path, AGGREGATION)
    publisher = UpdatePublisher(local_stack.kafka)
    rng = np.random.default_rng(1)
    expected_rejections: dict[str, str] = {}  # update id (or raw marker) -> reason
    try:
        job.start()
        job.wait_for_version(local_stack.kafka, 0)

        accepted = _publish_valid(publisher, model, 0, 3 * BUFFER_SIZE, rng)
        # bad input of every kind, interleaved; the job must record each and keep going
        publisher.publish("client-bad", b"\x00\x01 not an update")
        wrong_shape = _delta(rng, _initial_parameters())
        wrong_shape["dense.bias"] = np.zeros(17, dtype=np.float32)
        with_nan = _delta(rng, _initial_parameters())
        with_nan["dense.weight"][3, 4] = np.nan
        for reason, delta, model_name in [
            ("shape_mismatch", wrong_shape, model),
            ("non_finite", with_nan, model),
            ("unknown_model", _delta(rng, _initial_parameters()), "someone-elses-model"),
        ]:
            header, value = _signed("client-bad", model_name=model_name, base_version=0, sample_count=5, delta=delta)
            publisher.publish("client-bad", value)
            expected_rejections[header.update_id] = reason
        job.wait_for_version(local_stack.kafka, 3)

        # at version 3 with max_staleness 2: base 0 is too stale, base 9 is in the future
        for reason, base in [("too_stale", 0), ("future_base_version", 9)]:
            header, value = _signed(
                "client-1", model_name=model, base_version=base, sample_count=5,
                delta=_delta(rng, _initial_parameters()),
            )  # fmt: skip
            publisher.publish("client-1", value)
            expected_rejections[header.update_id] = reason
        # a replay: the same valid update sent twice; the first is accepted, the second rejected
        header, value = _signed(
            "client-2", model_name=model, base_version=3, sample_count=7,
            delta=_delta(rng, _initial_parameters()),
        )  # fmt: skip
        publisher.publish("client-2", value)
        publisher.publish("client-2", value)
        accepted.append(header.update_id)
        accepted += _publish_valid(publisher, model, 3, BUFFER_SIZE - 1, rng)
        job.wait_for_version(local_stack.kafka, 4)

        job.stop()
        publisher.publish("client-2", value)  # the replay again, now against the state rebuilt from Delta
        accepted += _publish_valid(publisher, model, 4, 2 * BUFFER_SIZE, rng)  # arrive while the job is down
        job = JobThread(spark, tmp_path, job.options)
        job.start()
        job.wait_for_version(local_stack.kafka, 6)
        time.sleep(3)  # let a further (wrong) version show up if the restart were to duplicate work
    finally:
        job.stop()
        publisher.close()

    locations = TableLocations(str(job.tables))
    updates = locations.read(spark, _table("updates")).where(F.col("model_name") == model).collect()
    assert sorted(row.update_id for row in updates) == sorted(accepted), "every valid update exactly once"

    versions = sorted(
        locations.read(spark, _table("model_versions")).where(F.col("model_name") == model).collect(),
        key=lambda row: row.version,
    )
    assert [row.version for row in versions] == list(range(7)), "consecutive versions, no gaps or duplicates"
    aggregated = [update_id for row in versions for update_id in row.update_ids]
    assert sorted(aggregated) == sorted(accepted), "every accepted update in exactly one version"
    for row in versions[1:]:
        assert len(row.update_ids) == BUFFER_SIZE
        assert row.parent_version == row.version - 1
        check = verify_version(spark, locations, model, row.version)
        assert check.ok, f"version {row.version}: stored {check.stored_hash}, recomputed {check.recomputed_hash}"

    rejected = locations.read(spark, _table("rejected_updates")).collect()
    by_id = {row.update_id: row.reason for row in rejected if row.update_id in expected_rejections}
    assert by_id == expected_rejections
    assert any(row.reason == "malformed_envelope" and row.raw_value == b"\x00\x01 not an update" for row in rejected)
    duplicates = [row for row in rejected if row.reason == "duplicate_update"]
    assert [row.update_id for row in duplicates] == [header.update_id] * 2, "refused before and after the restart"

    subscriber = GlobalModelSubscriber(local_stack.kafka, model)
    newest = subscriber.newest()
    subscriber.close()
    assert newest.header.version == 6
    assert newest.header.parameter_hash == versions[-1].parameter_hash
    assert json.loads(versions[-1].config_json)["server_optimizer"] == "adam"

    # what an auditor runs: the CLI recomputes the whole chain and names each client's contributions
    progress = io.StringIO()
    with contextlib.redirect_stderr(progress):
        chain = _audit(job, model, "verify", "6")
    assert [step["version"] for step in chain] == [1, 2, 3, 4, 5, 6] and all(step["ok"] for step in chain)
    assert [line for line in progress.getvalue().splitlines() if line.startswith("audit verify:")] == [
        f"audit verify: version {version} of 6 ok" for version in range(1, 7)
    ], "a long audit shows its progress, off the JSON on stdout"
    activity = _audit(job, model, "client", "client-bad")
    assert sorted(row["reason"] for row in activity["rejected"]) == ["non_finite", "shape_mismatch", "unknown_model"]
    assert activity["accepted"] == []
    assert all(row["rejected_at"].endswith("+00:00") for row in activity["rejected"]), "audit times name UTC"


def _audit(job: JobThread, model: str, *question: str):  # type: ignore[no-untyped-def]
    """What ``fedstream audit QUESTION --json`` prints, run by the CLI's entry point on the tests' Spark session."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["audit", *question, "--model-name", model, "--tables-root", str(job.tables), "--json"])
    assert code == 0, printed.getvalue()[-3000:]
    return json.loads(printed.getvalue())


def _table(name: str):  # type: ignore[no-untyped-def]
    from streaming_jobs.tables import ALL_TABLES

    return next(table for table in ALL_TABLES if table.name == name)


def test_a_partial_buffer_becomes_a_version_at_its_deadline_while_kafka_is_quiet(
    spark, local_stack: RunningStack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    quick_deadline = {**AGGREGATION, "buffer_size": 10, "max_wait_seconds": 3.0}
    model, job = _new_job_thread(spark, local_stack, tmp_path, quick_deadline)
    publisher = UpdatePublisher(local_stack.kafka)
    try:
        job.start()
        job.wait_for_version(local_stack.kafka, 0)
        published = _publish_valid(publisher, model, 0, 2, np.random.default_rng(3))
        job.wait_for_version(local_stack.kafka, 1, timeout_seconds=60)
    finally:
        job.stop()
        publisher.close()
    locations = TableLocations(str(job.tables))
    versions = locations.read(spark, _table("model_versions")).where(F.col("model_name") == model).collect()
    made = [row for row in versions if row.version == 1]
    assert len(made) == 1 and sorted(made[0].update_ids) == sorted(published)
    assert made[0].batch_id == -1, "made by the deadline, not by a micro-batch"
    assert verify_version(spark, locations, model, 1).ok


@pytest.mark.parametrize(
    "defence",
    [
        {"dp_noise_multiplier": 0.8, "dp_clip_norm": 0.05, "dp_adaptive_clipping": True, "dp_population": 12,
         "weight_by_sample_count": False, "server_optimizer": "sgd", "server_learning_rate": 1.0},
        {"robust_aggregation": "trimmed_mean", "trim_fraction": 0.25, "max_update_norm": 0.1},
    ],
    ids=["differential-privacy", "trimmed-mean"],
)  # fmt: skip
def test_private_and_robust_versions_recompute_exactly_from_the_tables(
    spark, local_stack: RunningStack, tmp_path: Path, defence: dict[str, object]
) -> None:  # type: ignore[no-untyped-def]
    model, job = _new_job_thread(spark, local_stack, tmp_path, {**AGGREGATION, **defence})
    publisher = UpdatePublisher(local_stack.kafka)
    try:
        job.start()
        job.wait_for_version(local_stack.kafka, 0)
        published = _publish_valid(
            publisher, model, 0, 2 * BUFFER_SIZE, np.random.default_rng(9), clients=FAST_CLIENT_FIRST
        )
        job.wait_for_version(local_stack.kafka, 2)
    finally:
        job.stop()
        publisher.close()
    locations = TableLocations(str(job.tables))
    versions = locations.read(spark, _table("model_versions")).where(F.col("model_name") == model).collect()
    assert sorted(row.version for row in versions) == [0, 1, 2]
    for version in (1, 2):
        assert verify_version(spark, locations, model, version).ok, f"version {version} does not recompute"
    epsilons = {row.version: row.epsilon for row in versions}
    client_of = dict(zip(published, FAST_CLIENT_FIRST, strict=True))
    made_by = {row.version: [client_of[update_id] for update_id in row.update_ids] for row in versions}
    if "dp_noise_multiplier" in defence:
        assert epsilons[0] is None and 0 < epsilons[1] < epsilons[2], "privacy spent grows with each version"
        assert sorted(made_by[1]) == sorted(made_by[2]) == ["client-0", "client-1", "client-2", "client-3"]
        assert published[1] in next(row.update_ids for row in versions if row.version == 2), "held for version 2"
        assumptions = {row.version: row.epsilon_assumption for row in versions}
        assert assumptions == {0: None, 1: "no_amplification", 2: "no_amplification"}
        assert {row.privacy_budget_exhausted for row in versions} == {None}, "no budget configured"
        seeds = {json.loads(row.config_json)["dp_seed"] for row in versions}
        assert len(seeds) == 1 and isinstance(seed := seeds.pop(), int) and seed > 0, "a drawn secret, recorded"
        params = _mlflow_params(f"test-{model}")
        assert params["dp_seed"].startswith("secret"), "MLflow readers do not get the noise seed"
        assert params["dp_noise_multiplier"] == "0.8"
    else:
        assert set(epsilons.values()) == {None}
        assert made_by[1] == FAST_CLIENT_FIRST[:BUFFER_SIZE], "without DP a buffer may hold one client twice"


def test_the_privacy_budget_stops_training_and_says_why(spark, local_stack: RunningStack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from aggregator import epsilon_after

    budget = (epsilon_after(0.8, 1.0, 1, 1e-5) + epsilon_after(0.8, 1.0, 2, 1e-5)) / 2  # room for one version
    private = {
        "dp_noise_multiplier": 0.8, "dp_clip_norm": 0.05, "dp_epsilon_budget": budget,
        "weight_by_sample_count": False, "server_optimizer": "sgd", "server_learning_rate": 1.0,
    }  # fmt: skip
    model, job = _new_job_thread(spark, local_stack, tmp_path, {**AGGREGATION, **private})
    publisher = UpdatePublisher(local_stack.kafka)
    try:
        job.start()
        job.wait_for_version(local_stack.kafka, 0)
        published = _publish_valid(
            publisher, model, 0, 2 * BUFFER_SIZE, np.random.default_rng(5), clients=FAST_CLIENT_FIRST
        )
        job.wait_for_version(local_stack.kafka, 1)
        wait_until(
            lambda: (job.status().get("privacy") or {}).get("refusal") is not None,
            120,
            "the job to report that the budget refused version 2",
        )
        status = job.status()
    finally:
        job.stop()
        publisher.close()
    assert status["pending"] == BUFFER_SIZE and status["current_version"] == 1, "the buffer is held, not dropped"
    assert status["privacy"]["budget_exhausted"] is True
    assert "privacy budget exhausted" in status["privacy"]["refusal"]
    locations = TableLocations(str(job.tables))
    versions = locations.read(spark, _table("model_versions")).where(F.col("model_name") == model).collect()
    assert sorted(row.version for row in versions) == [0, 1]
    (last,) = [row for row in versions if row.version == 1]
    assert last.privacy_budget_exhausted is True and last.epsilon <= budget < epsilon_after(0.8, 1.0, 2, 1e-5)
    assert last.epsilon_assumption == "no_amplification"
    stored = locations.read(spark, _table("updates")).where(F.col("model_name") == model).collect()
    assert sorted(row.update_id for row in stored) == sorted(published), "held updates are stored all the same"
    tags = _mlflow_run(f"test-{model}").data.tags
    assert "privacy budget exhausted" in tags["privacy_budget_exhausted"]
    assert tags["epsilon_assumption"] == "no_amplification"


ROUNDS = {"mode": "fedavg", "buffer_size": 2, "max_wait_seconds": None, "cohort_fraction": 0.5}
"""Synchronous FedAvg rounds of two updates, each from a cohort of about half the clients."""


def _model_whose_first_cohort_is_three_of_four() -> tuple[str, list[str], str]:
    """A fresh model name for which the round on version 0 draws three of client-0..3: the cohort, the other."""
    clients = ["client-0", "client-1", "client-2", "client-3"]
    while True:
        model = f"test-{uuid.uuid4().hex[:8]}"
        drawn = [client for client in clients if in_cohort(model, 0, client, ROUNDS["cohort_fraction"])]
        if len(drawn) == 3:
            return model, drawn, next(client for client in clients if client not in drawn)


def test_a_synchronous_round_takes_its_cohort_only_and_refuses_a_late_update(
    spark, local_stack: RunningStack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ensure_topics(local_stack.kafka)
    model, drawn, left_out = _model_whose_first_cohort_is_three_of_four()
    initial = tmp_path / "initial.safetensors"
    initial.write_bytes(encode_tensors(_initial_parameters()))
    job = test_job_thread(spark, tmp_path, model, initial, ROUNDS, _enrolled_keys(tmp_path))
    publisher = UpdatePublisher(local_stack.kafka)
    subscriber = GlobalModelSubscriber(local_stack.kafka, model)
    rng = np.random.default_rng(5)
    try:
        job.start()
        job.wait_for_version(local_stack.kafka, 0)
        assert subscriber.newest().header.cohort_fraction == 0.5, "version 0 opens the first round"
        outsider = _publish_valid(publisher, model, 0, 1, rng, clients=[left_out])
        round_one = _publish_valid(publisher, model, 0, 2, rng, clients=drawn[:2])
        job.wait_for_version(local_stack.kafka, 1)
        late = _publish_valid(publisher, model, 0, 1, rng, clients=drawn[2:])  # its round closed at version 1
        wait_until(lambda: late[0] in _rejected_reasons(spark, job), 60, "the late update's rejection")
        newest = subscriber.newest()
    finally:
        job.stop()
        publisher.close()
        subscriber.close()
    assert newest.header.version == 1 and newest.header.cohort_fraction == 0.5
    locations = TableLocations(str(job.tables))
    versions = locations.read(spark, _table("model_versions")).where(F.col("model_name") == model).collect()
    (made,) = [row for row in versions if row.version == 1]
    assert sorted(made.update_ids) == sorted(round_one), "the round is its cohort's first K updates"
    assert json.loads(made.config_json)["cohort_fraction"] == 0.5, "the auditor sees how the cohort was drawn"
    assert verify_version(spark, locations, model, 1).ok
    reasons = _rejected_reasons(spark, job)  # the topic holds other tests' messages too: only ours are compared
    mine = {update_id: reasons[update_id] for update_id in [*outsider, *round_one, *late] if update_id in reasons}
    assert mine == {outsider[0]: "not_in_cohort", late[0]: "too_stale"}


def _rejected_reasons(spark, job: JobThread) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Update id -> reason of every rejection the job recorded so far."""
    rows = TableLocations(str(job.tables)).read(spark, _table("rejected_updates")).collect()
    return {row.update_id: row.reason for row in rows if row.update_id is not None}
