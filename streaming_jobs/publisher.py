"""Announce new global versions: a signed message on ``fl.models``, then a step in MLflow (and the registry every N).

Each message carries the job's Ed25519 signature over its header (which names the payload's and the parent's
hashes); clients configured with the job's public key take no other (``producers.trusted_versions``). The
Kafka send (of every chunk, for a version too large for one message) is acknowledged before
:meth:`VersionPublisher.publish` returns; MLflow is told in the background
(:mod:`streaming_jobs.mlflow_recorder`), off the micro-batch's path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
from kafka import KafkaProducer

from aggregator import BudgetCheck
from schemas.chunks import encode_model_chunks, encode_model_chunks_streamed, model_chunk_key
from schemas.kafka_diagnosis import connect
from schemas.messages import ModelHeader
from schemas.rows import ModelVersionRow
from schemas.tensors import decode_tensors, sha256_hex
from schemas.topics import MODELS_TOPIC
from schemas.wire import Signer, encode_model
from streaming_jobs.mlflow_recorder import BackgroundRecorder, MlflowRecorder
from streaming_jobs.settings import JobSettings
from streaming_jobs.signing_key import job_signing_key

logger = logging.getLogger(__name__)

_UNSET_PAYLOAD_SHA256: Final = "0" * 64
"""A well-formed stand-in for a chunked version's payload hash, which the chunk encoder sets."""


def model_message(row: ModelVersionRow, signer: Signer, *, cohort_fraction: float | None = None) -> bytes:
    """The ``fl.models`` value announcing ``row``, signed by ``signer`` (the job's key).

    ``cohort_fraction``: the synchronous round this version opens draws its clients with it (``schemas.cohorts``).
    """
    payload = bytes(row.parameters)
    return encode_model(_header(row, sha256_hex(payload), cohort_fraction), payload, signer)


def model_records(
    row: ModelVersionRow, signer: Signer, max_message_bytes: int, *, cohort_fraction: float | None = None
) -> list[tuple[bytes, bytes]]:
    """The ``(key, value)`` records announcing ``row`` on ``fl.models``, each value at most ``max_message_bytes``.

    One record keyed by the model name (:func:`model_message`) when it fits; else the version's chunks
    (``schemas.chunks.encode_model_chunks``), chunk ``i`` keyed ``model_chunk_key(model_name, i)`` so that
    compaction keeps every chunk of the newest chunked version. ``ValueError`` when even chunks cannot fit.
    """
    # Parameters alone over the limit cannot fit whole: skip framing a large model only to find that out.
    if len(row.parameters) < max_message_bytes:
        whole = model_message(row, signer, cohort_fraction=cohort_fraction)
        if len(whole) <= max_message_bytes:
            return [(row.model_name.encode(), whole)]
    # Chunks carry the values, not safetensors: the chunk encoder sets the layout and payload hash it names.
    # Tensors in name order (safetensors decodes in no fixed order): a version published again on a restart
    # is then the same chunks, byte for byte, so a reader holding some of them completes it with the rest.
    parameters = dict(sorted(decode_tensors(bytes(row.parameters)).items()))
    header = _header(row, _UNSET_PAYLOAD_SHA256, cohort_fraction)
    chunks = encode_model_chunks(header, parameters, max_message_bytes=max_message_bytes, signer=signer)
    return [(model_chunk_key(row.model_name, index), chunk) for index, chunk in enumerate(chunks)]


def sharded_model_records(
    row: ModelVersionRow,
    shapes: Mapping[str, Sequence[int]],
    values: Callable[[], Iterable[npt.NDArray[np.float32]]],
    signer: Signer,
    max_message_bytes: int,
    *,
    cohort_fraction: float | None = None,
) -> Iterator[tuple[bytes, bytes]]:
    """:func:`model_records` of a version kept as shards (``row.parameters`` empty), one chunk at a time.

    ``values()`` yields the version's values in order (``streaming_jobs.executor_aggregation.version_values``);
    the records are byte for byte those :func:`model_records` makes of the same version held whole.
    """
    header = _header(row, _UNSET_PAYLOAD_SHA256, cohort_fraction)
    chunks = encode_model_chunks_streamed(header, shapes, values, max_message_bytes=max_message_bytes, signer=signer)
    for index, chunk in enumerate(chunks):
        yield model_chunk_key(row.model_name, index), chunk


def _header(row: ModelVersionRow, payload_sha256: str, cohort_fraction: float | None) -> ModelHeader:
    return ModelHeader(
        model_name=row.model_name,
        version=row.version,
        parent_version=row.parent_version,
        parent_parameter_hash=row.parent_parameter_hash,
        parameter_hash=row.parameter_hash,
        payload_sha256=payload_sha256,
        created_at=row.created_at,
        update_count=len(row.update_ids),
        cohort_fraction=cohort_fraction,
    )


ShardSource = Callable[
    [ModelVersionRow], tuple[Mapping[str, Sequence[int]], Callable[[], Iterable[npt.NDArray[np.float32]]]]
]
"""A version kept as shards: its tensors' shapes and its values in order (``executor_aggregation.version_values``)."""


class VersionPublisher:
    """Publishes versions to Kafka (acknowledged, signed with the job's key), then hands them to MLflow's worker."""

    def __init__(self, settings: JobSettings, shard_source: ShardSource | None = None) -> None:
        self.settings = settings
        self.shard_source = shard_source
        self._signing_key = job_signing_key(settings)
        logger.info(
            "signing global versions with the key from %s (public key %s)",
            self._signing_key.source,
            self._signing_key.public_key.hex(),
        )
        self._producer = connect(settings.kafka, lambda: KafkaProducer(**settings.kafka.producer_options()))
        self.mlflow = BackgroundRecorder(lambda: MlflowRecorder(settings), register_every=settings.register_every)

    def publish(self, rows: Sequence[ModelVersionRow]) -> None:
        """Send every row in version order, wait for the broker's acknowledgement, then queue them for MLflow."""
        self.send(rows)
        self.mlflow.submit(rows)

    def send(self, rows: Sequence[ModelVersionRow]) -> None:
        """Send every row in version order to ``fl.models`` and wait for the acknowledgement (no MLflow).

        A version larger than ``settings.kafka.max_message_bytes`` goes out as chunks (:func:`model_records`).
        """
        limit = self.settings.kafka.max_message_bytes
        for row in sorted(rows, key=lambda row: row.version):  # each opens a round of the job's own config
            for key, value in self._records(row, limit):
                self._producer.send(MODELS_TOPIC, key=key, value=value)
        self._producer.flush(timeout=60)

    def _records(self, row: ModelVersionRow, limit: int) -> Iterable[tuple[bytes, bytes]]:
        cohort = self.settings.aggregation.cohort_fraction
        if row.shards_key is None:
            return model_records(row, self._signing_key.sign, limit, cohort_fraction=cohort)
        if self.shard_source is None:
            raise RuntimeError(f"version {row.version} is kept as shards and this publisher has no shard source")
        shapes, values = self.shard_source(row)
        return sharded_model_records(row, shapes, values, self._signing_key.sign, limit, cohort_fraction=cohort)

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
