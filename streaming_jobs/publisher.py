"""Announce new global versions: a signed message on ``fl.models``, then a step in MLflow (and the registry every N).

Each message carries the job's Ed25519 signature over its header (which names the payload's and the parent's
hashes); clients configured with the job's public key take no other (``producers.trusted_versions``). The
Kafka send is acknowledged before :meth:`VersionPublisher.publish` returns; MLflow is told in the background
(:mod:`streaming_jobs.mlflow_recorder`), off the micro-batch's path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from kafka import KafkaProducer

from aggregator import BudgetCheck
from schemas.messages import ModelHeader
from schemas.rows import ModelVersionRow
from schemas.tensors import sha256_hex
from schemas.topics import MODELS_TOPIC
from schemas.wire import Signer, encode_model
from streaming_jobs.mlflow_recorder import BackgroundRecorder, MlflowRecorder
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
    """Publishes versions to Kafka (acknowledged, signed with the job's key), then hands them to MLflow's worker."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings
        self._signing_key = job_signing_key(settings)
        logger.info(
            "signing global versions with the key from %s (public key %s)",
            self._signing_key.source,
            self._signing_key.public_key.hex(),
        )
        self._producer = KafkaProducer(**settings.kafka.producer_options())
        self.mlflow = BackgroundRecorder(lambda: MlflowRecorder(settings), register_every=settings.register_every)

    def publish(self, rows: Sequence[ModelVersionRow]) -> None:
        """Send every row in version order, wait for the broker's acknowledgement, then queue them for MLflow."""
        self.send(rows)
        self.mlflow.submit(rows)

    def send(self, rows: Sequence[ModelVersionRow]) -> None:
        """Send every row in version order to ``fl.models`` and wait for the acknowledgement (no MLflow)."""
        for row in sorted(rows, key=lambda row: row.version):
            value = model_message(row, self._signing_key.sign)
            self._producer.send(MODELS_TOPIC, key=row.model_name.encode(), value=value)
        self._producer.flush(timeout=60)

    def backfill_mlflow(self, newer_than: Callable[[int | None, int | None], Iterable[ModelVersionRow]]) -> None:
        """Queue the versions an unclean stop left out of MLflow (see ``BackgroundRecorder.backfill``)."""
        self.mlflow.backfill(newer_than)

    def record_budget_refusal(self, check: BudgetCheck) -> None:
        """Tag the MLflow run (once per refusal) with why no further version is made: the privacy budget."""
        self.mlflow.record_budget_refusal(check)

    def close(self) -> None:
        """Flush and close the producer; drain MLflow's queue and end its run."""
        self._producer.close(timeout=30)
        self.mlflow.close()
