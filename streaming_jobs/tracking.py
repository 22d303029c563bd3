"""Where MLflow records runs: ``MLFLOW_TRACKING_URI`` if set, else a SQLite store in the local state folder."""

from __future__ import annotations

import os

from schemas.paths import state_dir


def tracking_uri() -> str:
    """The MLflow tracking URI fedstream uses; the environment wins over the local default."""
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    return f"sqlite:///{state_dir() / 'mlflow.db'}"


def configure_mlflow() -> str:
    """Point MLflow at fedstream's store (tracking and registry) and return the URI."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI", uri))
    return uri


def ensure_experiment(name: str) -> str:
    """Id of experiment ``name``, created with its artifacts in the local state folder when new."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    location = None
    if tracking_uri().startswith("sqlite:"):
        location = (state_dir() / "mlflow-artifacts" / name).as_uri()
    return str(client.create_experiment(name, artifact_location=location))
