"""A client sends an update whole when it fits one Kafka message in float32, and as chunks otherwise."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import torch
from torch import nn

from producers.client import FederatedClient, LocalData, PreparedUpdate
from producers.identity import ClientIdentity
from producers.models import model_weights
from producers.training import LocalTrainingConfig
from producers.updates import build_chunked_update, build_update_messages
from schemas.chunks import assemble_update, decode_update_chunk, is_update_chunk
from schemas.messages import ClientMetrics, Encoding, ModelHeader, UpdateHeader
from schemas.rejections import Rejection
from schemas.tensors import Tensors
from schemas.wire import DecodedModel, DecodedUpdate, decode_update

IDENTITY = ClientIdentity.pseudonymous()
CLIENT = IDENTITY.client_id
MODEL = "heart-rate"


def delta(size: int = 3000, seed: int = 0) -> Tensors:
    values = np.random.default_rng(seed).normal(scale=0.1, size=size).astype(np.float32)
    return {"body.weight": values[: size - 10].reshape(-1, 10), "body.bias": values[size - 10 :]}


def messages(
    tensors: Tensors, max_message_bytes: int, encoding: Encoding = Encoding.FLOAT32
) -> tuple[UpdateHeader, list[bytes]]:
    return build_update_messages(
        client_id=CLIENT,
        model_name=MODEL,
        base_version=4,
        sample_count=12,
        delta=tensors,
        max_message_bytes=max_message_bytes,
        encoding=encoding,
        metrics=ClientMetrics(training_steps=3),
        signer=IDENTITY.sign,
    )


def assembled(values: list[bytes], max_message_bytes: int) -> DecodedUpdate:
    decoded = [decode_update_chunk(value, CLIENT.encode(), max_message_bytes) for value in values]
    assert not any(isinstance(chunk, Rejection) for chunk in decoded), decoded
    update = assemble_update(decoded[::-1])  # type: ignore[arg-type]
    assert isinstance(update, DecodedUpdate), update
    return update


# ── the builder ────────────────────────────────────────────────────────────────────────────────────────────────────


def test_an_update_that_fits_goes_whole() -> None:
    tensors = delta()
    header, values = messages(tensors, 1 << 20)
    (value,) = values
    decoded = decode_update(value, CLIENT.encode())
    assert isinstance(decoded, DecodedUpdate) and decoded.header == header and header.layout is None
    for name, expected in tensors.items():
        np.testing.assert_array_equal(decoded.delta[name], expected)


def test_an_update_too_large_goes_as_chunks_that_each_fit_and_assemble_exactly() -> None:
    tensors, limit = delta(), 4096
    header, values = messages(tensors, limit)
    assert len(values) > 2 and all(len(value) <= limit and is_update_chunk(value) for value in values)
    update = assembled(values, limit)
    assert update.header == header and update.header.layout is not None
    assert update.header.base_version == 4 and update.header.sample_count == 12
    assert update.header.metrics.training_steps == 3
    assert update.signature == IDENTITY.sign(update.signed_bytes)
    for name, expected in tensors.items():
        assert update.delta[name].dtype == np.float32
        np.testing.assert_array_equal(update.delta[name], expected)


@pytest.mark.parametrize(("encoding", "tolerance"), [(Encoding.FLOAT16, 1e-3), (Encoding.INT8, 1e-2)])
def test_an_update_in_another_encoding_goes_as_chunks_even_when_it_would_fit(
    encoding: Encoding, tolerance: float
) -> None:
    tensors, limit = delta(), 1 << 20
    header, values = messages(tensors, limit, encoding)
    assert all(is_update_chunk(value) for value in values)
    assert header.layout is not None and header.layout.encoding is encoding
    update = assembled(values, limit)
    for name, expected in tensors.items():
        np.testing.assert_allclose(update.delta[name], expected, rtol=tolerance, atol=tolerance * 0.5)


def test_float16_chunks_are_about_half_the_bytes() -> None:
    tensors, limit = delta(), 4096
    _, exact = messages(tensors, limit)
    _, half = messages(tensors, limit, Encoding.FLOAT16)
    assert all(len(value) <= limit for value in half)
    assert sum(map(len, half)) < 0.6 * sum(map(len, exact))


def test_the_update_id_given_is_the_one_sent_either_way() -> None:
    common = {"client_id": CLIENT, "model_name": MODEL, "base_version": 0, "sample_count": 1, "delta": delta()}
    for limit in (1 << 20, 4096):
        header, _ = build_update_messages(**common, max_message_bytes=limit, update_id="ab" * 16)  # type: ignore[arg-type]
        assert header.update_id == "ab" * 16
    chunked, _ = build_chunked_update(**common, max_message_bytes=1 << 20, update_id="cd" * 16)  # type: ignore[arg-type]
    assert chunked.update_id == "cd" * 16 and chunked.layout is not None


def test_a_limit_no_chunk_can_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="fit"):
        messages(delta(), 300)


def test_float16_refuses_values_it_cannot_carry() -> None:
    with pytest.raises(ValueError, match="float16"):
        messages({"w": np.array([1e6], dtype=np.float32)}, 1 << 20, Encoding.FLOAT16)


# ── the client ─────────────────────────────────────────────────────────────────────────────────────────────────────


def _client(**options: object) -> FederatedClient:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 256), nn.ReLU(), nn.Linear(256, 1))  # 1537 values: ~6 KiB whole
    features = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    targets = features.sum(axis=1, keepdims=True).astype(np.float32)
    data = LocalData(features[:48], targets[:48], features[48:], targets[48:])
    training = LocalTrainingConfig(epochs=1, batch_size=16, loss=nn.functional.mse_loss)
    return FederatedClient(CLIENT, MODEL, model, data, training, IDENTITY, **options)  # type: ignore[arg-type]


def _global(client: FederatedClient) -> DecodedModel:
    header = ModelHeader(
        model_name=MODEL,
        version=7,
        parent_version=6,
        parent_parameter_hash="ab" * 32,
        parameter_hash="cd" * 32,
        payload_sha256="ef" * 32,
        created_at=datetime.now(UTC),
    )
    return DecodedModel(header=header, parameters=model_weights(client.model))


class _Subscriber:
    def __init__(self, version: DecodedModel) -> None:
        self.version = version

    def newest(self) -> DecodedModel:
        return self.version


class _WholePublisher:
    """A caller's own publisher from before chunking: ``publish`` only, no limit of its own."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, str]] = []

    def publish(self, client_id: str, value: bytes, *, model_name: str) -> None:
        self.sent.append((client_id, value, model_name))


class _ChunkingPublisher(_WholePublisher):
    def __init__(self, max_message_bytes: int) -> None:
        super().__init__()
        self.max_message_bytes = max_message_bytes
        self.chunked: list[tuple[str, list[bytes], str | None]] = []

    def publish_chunks(self, client_id: str, values: list[bytes], *, model_name: str | None = None) -> list[object]:
        self.chunked.append((client_id, list(values), model_name))
        return []


def test_a_client_sends_a_fitting_update_whole_through_a_publisher_without_publish_chunks() -> None:
    client = _client()
    publisher = _WholePublisher()
    prepared = client.run_once(_Subscriber(_global(client)), publisher)  # type: ignore[arg-type]
    assert not prepared.chunked and prepared.values == (prepared.value,)
    ((client_id, value, model_name),) = publisher.sent
    assert (client_id, value, model_name) == (CLIENT, prepared.value, MODEL)
    assert isinstance(decode_update(value), DecodedUpdate)


def test_a_client_chunks_an_update_larger_than_its_publishers_limit() -> None:
    client = _client()
    publisher = _ChunkingPublisher(4096)
    prepared = client.run_once(_Subscriber(_global(client)), publisher)  # type: ignore[arg-type]
    assert publisher.sent == [] and prepared.chunked
    ((client_id, values, model_name),) = publisher.chunked
    assert client_id == CLIENT and model_name == MODEL and tuple(values) == prepared.values
    assert len(values) > 1 and all(len(value) <= 4096 for value in values)
    update = assembled(values, 4096)
    assert update.header == prepared.header and update.header.base_version == 7
    with pytest.raises(ValueError, match="chunks"):
        _ = prepared.value
    assert prepared.size_bytes == sum(map(len, values))


def test_a_client_with_a_float16_encoding_always_chunks() -> None:
    client = _client(update_encoding=Encoding.FLOAT16)
    publisher = _ChunkingPublisher(1 << 20)
    prepared = client.run_once(_Subscriber(_global(client)), publisher)  # type: ignore[arg-type]
    assert prepared.header.layout is not None and prepared.header.layout.encoding is Encoding.FLOAT16
    assert len(publisher.chunked) == 1 and publisher.sent == []


def test_prepare_update_keeps_to_the_clients_own_limit() -> None:
    client = _client(max_message_bytes=4096)
    prepared = client.prepare_update(_global(client))
    assert prepared.chunked and all(len(value) <= 4096 for value in prepared.values)
    assert not client.prepare_update(_global(client), max_message_bytes=1 << 20).chunked


def test_a_prepared_update_is_built_from_values() -> None:
    client = _client()
    prepared = client.prepare_update(_global(client))
    again = PreparedUpdate(header=prepared.header, values=prepared.values, global_evaluation=None)
    assert again.value == prepared.value and again.size_bytes == len(prepared.value)


def test_a_client_refuses_a_limit_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="max_message_bytes"):
        _client(max_message_bytes=0)
