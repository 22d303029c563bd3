"""MLflow is told in the background: it never holds a micro-batch, and no step is lost to a failure or a crash.

These run against a real MLflow store (SQLite in a temporary folder), not a fake client.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
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


def _servable_row(version: int, seed: int, **overrides: object) -> ModelVersionRow:
    """Version ``version`` holding real har-cnn parameters (those ``build_model`` makes from ``seed``)."""
    from producers.models import build_model, model_weights
    from schemas.tensors import encode_tensors, parameter_hash

    weights = model_weights(build_model("har-cnn", seed=seed))
    fields: dict[str, object] = {"parameters": encode_tensors(weights), "parameter_hash": parameter_hash(weights)}
    return _row(version).model_copy(update={**fields, **overrides})


def _logits(seed: int, windows: np.ndarray) -> np.ndarray:
    import torch

    from producers.models import build_model

    with torch.no_grad():
        result: np.ndarray = build_model("har-cnn", seed=seed).eval()(torch.from_numpy(windows)).numpy()
    return result


def test_with_an_architecture_a_registered_version_is_a_model_pyfunc_serves(mlflow_store: str) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    settings = JobSettings(
        model_name="servable", mlflow_experiment="servable", register_every=2, model_architecture="har-cnn"
    )
    recorder = MlflowRecorder(settings)
    row = _servable_row(4, seed=21, epsilon=1.25, epsilon_assumption="no_amplification")
    recorder.record([row])  # metrics, then the registration (4 is due)
    recorder.close()

    uri = f"models:/{settings.registered_model_name}/1"
    windows = np.random.default_rng(3).standard_normal((7, 6, 128)).astype(np.float32)  # not the example's batch
    predicted = mlflow.pyfunc.load_model(uri).predict(windows)
    # 1e-5 absolute plus 1e-4 relative on float32 logits: torch.export may reorder a convolution's sums
    np.testing.assert_allclose(predicted, _logits(21, windows), atol=1e-5, rtol=1e-4)
    assert not np.allclose(predicted, _logits(0, windows)), "the model holds the version's parameters"

    version = MlflowClient().get_model_version(settings.registered_model_name, "1")
    assert version.tags == {
        "global_version": "4",
        "parameter_hash": row.parameter_hash,
        "fedstream_version": importlib.metadata.version("fedstream"),
        "epsilon": "1.25",
        "epsilon_assumption": "no_amplification",
        "architecture": "har-cnn",
    }
    assert version.run_id == recorder.run_id
    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None
    assert [spec.shape for spec in info.signature.inputs.inputs] == [(-1, 6, 128)]
    assert [spec.shape for spec in info.signature.outputs.inputs] == [(-1, 6)]
    assert info.saved_input_example_info is not None


def test_without_an_architecture_the_parameters_are_registered_as_before(
    mlflow_store: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow.tracking import MlflowClient

    settings = _settings("bare")
    with caplog.at_level(logging.WARNING, logger="streaming_jobs.mlflow_recorder"):
        recorder = MlflowRecorder(settings)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "--model-architecture" in warnings[0]
    row = _row(2)
    recorder.register(row)
    recorder.close()

    client = MlflowClient()
    version = client.get_model_version(settings.registered_model_name, "1")
    assert version.source.endswith("/versions/v2")
    assert version.tags["global_version"] == "2"
    assert version.tags["parameter_hash"] == row.parameter_hash
    assert "epsilon" not in version.tags  # the version is not private
    folder = Path(client.download_artifacts(recorder.run_id, "versions/v2", str(tmp_path)))
    assert [path.name for path in folder.iterdir()] == [f"{row.model_name}-v2.safetensors"]
    assert (folder / f"{row.model_name}-v2.safetensors").read_bytes() == row.parameters


def test_parameters_that_do_not_fit_the_architecture_are_registered_instead_of_retried(mlflow_store: str) -> None:
    settings = JobSettings(
        model_name="misfit", mlflow_experiment="misfit", register_every=2, model_architecture="har-cnn"
    )
    recorder = BackgroundRecorder(lambda: MlflowRecorder(settings), register_every=2, retry_seconds=0.01)
    recorder.submit([_row(2)])  # not har-cnn parameters: bytes no architecture can load
    recorder.submit([_servable_row(4, seed=1)])
    recorder.close(timeout_seconds=120)
    assert _registered(settings) == [2, 4], "the misfit neither blocks the queue nor is lost"
    from mlflow.tracking import MlflowClient

    found = MlflowClient().search_model_versions(f"name = '{settings.registered_model_name}'")
    servable = {int(version.tags["global_version"]): "architecture" in version.tags for version in found}
    assert servable == {2: False, 4: True}
