"""MLflow logs runs and registers models in fedstream's local SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import RunningStack

pytestmark = pytest.mark.stack


def test_log_a_run_and_register_a_model_version(local_stack: RunningStack, tmp_path: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from streaming_jobs.tracking import configure_mlflow

    uri = configure_mlflow()
    assert uri == f"sqlite:///{local_stack.home / 'mlflow.db'}"
    mlflow.set_experiment("fedstream-test")
    artifact = tmp_path / "global.safetensors"
    artifact.write_bytes(b"\x00" * 64)
    with mlflow.start_run() as run:
        mlflow.log_metric("held_out_accuracy", 0.5, step=1)
        mlflow.log_metric("held_out_accuracy", 0.75, step=2)
        mlflow.log_artifact(str(artifact), artifact_path="model")
    client = MlflowClient()
    history = client.get_metric_history(run.info.run_id, "held_out_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75)]

    client.create_registered_model("fedstream-test-model")
    version = client.create_model_version(
        "fedstream-test-model", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    assert str(version.version) == "1"
    assert client.get_registered_model("fedstream-test-model").latest_versions[0].run_id == run.info.run_id
