"""Announce new global versions: a signed message on ``fl.models`` and a step in MLflow (plus the registry every N).

Each message carries the job's Ed25519 signature over its header (which names the payload's and the parent's
hashes); clients configured with the job's public key take no other (``producers.trusted_versions``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from kafka import KafkaProducer

from aggregator import BudgetCheck
from schemas.messages import ModelHeader
from schemas.rows import ModelVersionRow
from schemas.tensors import sha256_hex
from schemas.topics import MODELS_TOPIC
from schemas.wire import Signer, encode_model
from streaming_jobs.settings import JobSettings
from streaming_jobs.signing_key import job_signing_key

logger = logging.getLogger(__name__)


def model_message(row: ModelVersionRow, signer: Signer) -> bytes:
    """The ``fl.models`` value announcing ``row``, signed by ``signer`` (the job's key)."""
    payload = bytes(row.parameters)
    header = ModelHeader(
        model_name=row.model_name,
        version=row.version,
        parent_version=row.parent_version,
        parent_parameter_hash=row.parent_parameter_hash,
        parameter_hash=row.parameter_hash,
        payload_sha256=sha256_hex(payload),
        created_at=row.created_at,
        update_count=len(row.update_ids),
    )
    return encode_model(header, payload, signer)


class VersionPublisher:
    """Publishes versions to Kafka (acknowledged, signed with the job's key) and records them in MLflow."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings
        self._signing_key = job_signing_key(settings)
        logger.info(
            "signing global versions with the key from %s (public key %s)",
            self._signing_key.source,
            self._signing_key.public_key.hex(),
        )
        self._producer = KafkaProducer(**settings.kafka.producer_options())
        self._mlflow = _MlflowRecorder(settings)
        self._last_refusal: BudgetCheck | None = None

    def publish(self, rows: Sequence[ModelVersionRow]) -> None:
        """Send every row in version order and wait for the broker's acknowledgement."""
        for row in sorted(rows, key=lambda row: row.version):
            value = model_message(row, self._signing_key.sign)
            self._producer.send(MODELS_TOPIC, key=row.model_name.encode(), value=value)
        self._producer.flush(timeout=60)
        self._mlflow.record(rows)

    def record_budget_refusal(self, check: BudgetCheck) -> None:
        """Tag the MLflow run (once per refusal) with why no further version is made: the privacy budget."""
        if check == self._last_refusal:
            return
        self._last_refusal = check
        self._mlflow.tag_budget_refusal(check)

    def close(self) -> None:
        """Flush and close the producer, end the MLflow run."""
        self._producer.close(timeout=30)
        self._mlflow.close()


class _MlflowRecorder:
    def __init__(self, settings: JobSettings) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        from streaming_jobs.tracking import configure_mlflow, ensure_experiment

        configure_mlflow()
        self.settings = settings
        experiment_id = ensure_experiment(settings.mlflow_experiment)
        self.client = MlflowClient()
        self.run_id = self.client.create_run(experiment_id, run_name=f"{settings.model_name}-job").info.run_id
        # The DP noise seed stays in model_versions.config_json (for audits); MLflow readers do not get it.
        config = {**settings.aggregation.to_dict()}
        if "dp_seed" in config:
            config["dp_seed"] = "secret: see model_versions.config_json"
        self.client.log_dict(self.run_id, config, "aggregation_config.json")
        for key, value in config.items():
            self.client.log_param(self.run_id, key, value)
        self._mlflow = mlflow

    def record(self, rows: Sequence[ModelVersionRow]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = []
        for row in rows:
            values = {
                "global_version": float(row.version),
                "updates_in_version": float(len(row.update_ids)),
                "staleness_mean": row.staleness_mean,
                "staleness_max": None if row.staleness_max is None else float(row.staleness_max),
                "federated_validation_accuracy": row.federated_validation_accuracy,
                "federated_validation_loss": row.federated_validation_loss,
                "epsilon": row.epsilon,
                "privacy_budget_exhausted": _as_float(row.privacy_budget_exhausted),
            }
            metrics += [Metric(k, v, stamp, row.version) for k, v in values.items() if v is not None]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
        self._tag_privacy(rows)
        every = self.settings.register_every
        for row in rows:
            if every and row.version % every == 0:
                self._register(row)

    def _tag_privacy(self, rows: Sequence[ModelVersionRow]) -> None:
        newest = max(rows, key=lambda row: row.version, default=None)
        if newest is None or newest.epsilon is None:
            return
        self.client.set_tag(self.run_id, "epsilon_assumption", newest.epsilon_assumption or "")
        if newest.privacy_budget_exhausted:
            budget = self.settings.aggregation.dp_epsilon_budget
            self.client.set_tag(
                self.run_id,
                "privacy_budget_exhausted",
                f"privacy budget exhausted after version {newest.version} (epsilon {newest.epsilon:.4g}): the next "
                f"version would pass dp_epsilon_budget {budget}, so no further version is made",
            )

    def tag_budget_refusal(self, check: BudgetCheck) -> None:
        self.client.set_tag(self.run_id, "privacy_budget_exhausted", check.describe())

    def _register(self, row: ModelVersionRow) -> None:
        name = self.settings.registered_model_name
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{row.model_name}-v{row.version}.safetensors"
            path.write_bytes(bytes(row.parameters))
            self.client.log_artifact(self.run_id, str(path), artifact_path=f"versions/v{row.version}")
        run = self.client.get_run(self.run_id)
        try:
            self.client.get_registered_model(name)
        except Exception:  # MLflow raises a generic MlflowException when it is missing
            self.client.create_registered_model(name)
        self.client.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/versions/v{row.version}",
            run_id=self.run_id,
            tags={"global_version": str(row.version), "parameter_hash": row.parameter_hash},
        )

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _as_float(flag: bool | None) -> float | None:
    return None if flag is None else float(flag)
