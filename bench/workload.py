"""The benchmark's messages: synthetic updates of a real model, version messages, backlogs and bursts.

Every update is based on version 0 and carries a small random delta of the model's exact tensors, so the
job accepts all of them when ``max_staleness`` is null. A handful of distinct deltas are encoded once and
reused; only the header (a fresh ``update_id``) changes per message, so generating thousands is cheap.
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from kafka import KafkaProducer

from schemas.kafka_settings import KafkaSettings
from schemas.messages import ClientMetrics, ModelHeader, UpdateHeader
from schemas.tensors import Tensors, encode_tensors, parameter_hash, sha256_hex
from schemas.topics import MODELS_TOPIC, UPDATES_TOPIC
from schemas.wire import encode_model, encode_update, tensors_payload

CLIENTS = 24
"""Distinct client ids the synthetic updates rotate through (as many as the demo's devices)."""


def signing_supported() -> bool:
    """True when this checkout signs updates (``producers.identity``) and the job can enrol client keys."""
    try:
        import producers.identity  # noqa: F401
        from streaming_jobs.settings import JobSettings
    except ImportError:
        return False
    return (
        "signer" in inspect.signature(encode_update).parameters and "enrol_public_keys_dir" in JobSettings.model_fields
    )


def initial_parameters(model_name: str, seed: int = 0) -> Tensors:
    """Version 0 of ``model_name``: the registry's deterministic initial weights (needs torch)."""
    from producers.models import build_model, model_weights

    return model_weights(build_model(model_name, seed))


def model_value(
    model_name: str,
    version: int,
    parameters: Mapping[str, npt.NDArray[np.float32]],
    update_count: int = 0,
    parent_parameter_hash: str | None = None,
) -> bytes:
    """An ``fl.models`` value for ``parameters`` as ``version``, framed and signed as the job does its versions.

    It is signed with the local stack's job key, which the clients read by default; a version after 0 names
    its parent's ``parameter_hash``.
    """
    from streaming_jobs.signing_key import local_job_key

    payload = encode_tensors(parameters)
    header = ModelHeader(
        model_name=model_name,
        version=version,
        parent_version=version - 1 if version > 0 else None,
        parent_parameter_hash=parent_parameter_hash,
        parameter_hash=parameter_hash(parameters),
        payload_sha256=sha256_hex(payload),
        created_at=datetime.now(UTC),
        update_count=update_count,
    )
    return encode_model(header, payload, local_job_key().sign)


class UpdateFactory:
    """Makes valid ``fl.updates`` messages for one model, all based on ``base_version``.

    With ``keys_dir`` every client gets an Ed25519 key pair, signs its updates, and its public key is written
    to ``keys_dir/<client_id>.pub`` for the job to enrol (``--enrol-public-keys``).
    """

    def __init__(
        self,
        model_name: str,
        reference: Mapping[str, npt.NDArray[np.float32]],
        *,
        seed: int = 0,
        keys_dir: Path | None = None,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.model_name = model_name
        self._signers = client_signers(keys_dir) if keys_dir is not None else {}
        self._payloads: list[tuple[bytes, str]] = []
        for _ in range(8):
            delta = {
                name: (1e-3 * rng.standard_normal(array.shape)).astype(np.float32) for name, array in reference.items()
            }
            self._payloads.append(tensors_payload(delta))
        self._sample_counts = [int(count) for count in rng.integers(50, 400, size=CLIENTS)]
        self.made = 0

    @property
    def message_bytes(self) -> int:
        """Size of one message value (header lengths differ by a few bytes at most)."""
        return len(self.make(0)[1])

    def make(self, base_version: int = 0) -> tuple[str, bytes]:
        """Return ``(client_id, value)`` of a new update with a fresh ``update_id``."""
        index = self.made
        self.made += 1
        payload, digest = self._payloads[index % len(self._payloads)]
        header = UpdateHeader(
            update_id=uuid.uuid4().hex,
            client_id=client_id(index),
            model_name=self.model_name,
            base_version=base_version,
            sample_count=self._sample_counts[index % CLIENTS],
            created_at=datetime.now(UTC),
            payload_sha256=digest,
            metrics=ClientMetrics(),
        )
        signer = self._signers.get(header.client_id)
        if signer is None:
            return header.client_id, encode_update(header, payload)
        return header.client_id, encode_update(header, payload, signer)  # type: ignore[call-arg,unused-ignore]


def client_signers(keys_dir: Path) -> dict[str, Callable[[bytes], bytes]]:
    """A fresh Ed25519 key pair per benchmark client; public keys go to ``keys_dir`` for the job to enrol."""
    from producers.identity import ClientIdentity

    signers: dict[str, Callable[[bytes], bytes]] = {}
    for index in range(CLIENTS):
        identity = ClientIdentity.generate(client_id(index))
        identity.save(keys_dir)
        signers[identity.client_id] = identity.sign
    return signers


def client_id(index: int) -> str:
    """The id of the ``index``-th update's client (the ids rotate through ``CLIENTS``)."""
    return f"bench-client-{index % CLIENTS:02d}"


def publish_backlog(kafka: KafkaSettings, factory: UpdateFactory, count: int) -> float:
    """Send ``count`` updates to ``fl.updates`` and wait for every acknowledgement; return the seconds it took."""
    producer = KafkaProducer(**kafka.producer_options())
    started = time.perf_counter()
    try:
        for _ in range(count):
            client_id, value = factory.make()
            producer.send(UPDATES_TOPIC, key=client_id.encode(), value=value)
        producer.flush(timeout=300)
    finally:
        producer.close(timeout=30)
    return time.perf_counter() - started


def publish_model(kafka: KafkaSettings, model_name: str, parameters: Tensors) -> None:
    """Put version 0 on ``fl.models`` (what a running job would have published), acknowledged."""
    producer = KafkaProducer(**kafka.producer_options())
    try:
        producer.send(MODELS_TOPIC, key=model_name.encode(), value=model_value(model_name, 0, parameters))
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=30)
