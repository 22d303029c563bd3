"""MLflow is told in the background: it never holds a micro-batch, and no step is lost to a failure or a crash.

These run against a real MLflow store (SQLite in a temporary folder), not a fake client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from schemas.rows import ModelVersionRow
from streaming_jobs.mlflow_recorder import BackgroundRecorder, MlflowRecorder, registered_version
from streaming_jobs.settings import JobSettings
from tests.rows import version_row

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One SQLite store for the module (each test has its own experiment and registered model)."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_REGISTRY_URI", uri)
        patch.setenv("FEDSTREAM_HOME", str(folder))
        yield uri


def _row(version: int) -> ModelVersionRow:
    return version_row(
        version,
        model_name="heart",  # the recorder names runs and registered models by its settings' model
        created_at=NOW,
        parameters=bytes([version]) * 1000,
        parameter_hash=f"{version:064x}",
        update_ids=[f"{version:032x}"],
        update_weights=[1.0],
        update_staleness=[0],
        staleness_mean=0.0,
        staleness_max=0,
        federated_validation_accuracy=0.5,
    )


def _settings(experiment: str) -> JobSettings:
    return JobSettings(model_name=f"heart-{experiment}", mlflow_experiment=experiment, register_every=2)


def _steps(experiment: str) -> list[int]:
    """Every ``global_version`` step logged by any run of ``experiment``, in order."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    steps = [
        metric.step
        for run in client.search_runs([found.experiment_id])
        for metric in client.get_metric_history(run.info.run_id, "global_version")
    ]
    return sorted(steps)


def _registered(settings: JobSettings) -> list[int]:
    from mlflow.tracking import MlflowClient

    found = MlflowClient().search_model_versions(f"name = '{settings.registered_model_name}'")
    return sorted(int(version.tags["global_version"]) for version in found)


def test_every_nth_version_is_registered_and_never_version_numbers_when_disabled() -> None:
    assert [v for v in range(7) if registered_version(v, 3)] == [0, 3, 6]
    assert not any(registered_version(v, 0) for v in range(7))


def test_submitting_never_waits_for_mlflow(mlflow_store: str) -> None:
    settings = _settings("slow")
    released = threading.Event()

    def slow_recorder() -> MlflowRecorder:
        released.wait(30)  # an MLflow server that does not answer
        return MlflowRecorder(settings)

    recorder = BackgroundRecorder(slow_recorder, register_every=settings.register_every)
    started = time.perf_counter()
    for version in range(1, 6):
        recorder.submit([_row(version)])
    assert time.perf_counter() - started < 0.5, "submit returned only after MLflow answered"
    assert recorder.backlog == 5 + 2  # five batches of metrics, versions 2 and 4 to register
    released.set()
    assert recorder.wait_until_idle(60)
    recorder.close()
    assert _steps("slow") == [1, 2, 3, 4, 5]
    assert _registered(settings) == [2, 4]


def test_a_failing_mlflow_is_retried_until_every_step_is_recorded(mlflow_store: str) -> None:
    settings = _settings("flaky")
    failures = iter([RuntimeError("tracking server unreachable")] * 3)

    def flaky_recorder() -> MlflowRecorder:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return MlflowRecorder(settings)

    recorder = BackgroundRecorder(flaky_recorder, register_every=settings.register_every, retry_seconds=0.01)
    recorder.submit([_row(1), _row(2)])
    recorder.submit([_row(3)])
    recorder.close(timeout_seconds=60)
    assert _steps("flaky") == [1, 2, 3]
    assert _registered(settings) == [2]


def test_a_restart_backfills_what_a_crash_left_unrecorded(mlflow_store: str) -> None:
    settings = _settings("crashed")
    first = BackgroundRecorder(lambda: MlflowRecorder(settings), register_every=settings.register_every)
    first.submit([_row(0), _row(1), _row(2), _row(3)])
    assert first.wait_until_idle(60)
    # the job dies here: versions 4..7 reached Delta and Kafka, never MLflow; the run is never ended
    in_delta = [_row(version) for version in range(8)]
    asked: list[tuple[int | None, int | None]] = []

    def newer_than(logged: int | None, registered: int | None) -> list[ModelVersionRow]:
        asked.append((logged, registered))
        oldest = min(-1 if logged is None else logged, -1 if registered is None else registered)
        return [row for row in in_delta if row.version > oldest]

    second = BackgroundRecorder(lambda: MlflowRecorder(settings), register_every=settings.register_every)
    second.backfill(newer_than)
    second.submit([_row(8)])
    second.close(timeout_seconds=60)
    assert asked == [(3, 2)]
    assert _steps("crashed") == list(range(9)), "each step logged exactly once across the two runs"
    assert _registered(settings) == [0, 2, 4, 6, 8]
