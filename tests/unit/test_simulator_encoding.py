"""The simulator's update encodings: the server aggregates what the job decodes from a client's bytes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

import producers.data.heart  # noqa: F401  (registers heart-mlp, a fast model for these tests)
from aggregator import AggregationConfig
from aggregator.intake import Intake, IntakeMessage
from producers.client import LocalData
from producers.fleet import DeviceSpeeds
from producers.training import LocalTrainingConfig
from producers.updates import build_chunked_update, build_update
from schemas.chunks import assemble_update, decode_update_chunk
from schemas.messages import ClientMetrics, Encoding
from schemas.rejections import Rejection
from schemas.topics import MAX_MESSAGE_BYTES
from schemas.wire import DecodedUpdate, decode_update
from simulation import NetworkSpeeds, Simulator, StrategyConfig
from simulation.encoding import decoded_by_job, update_header
from simulation.results import Weights

MODEL = "heart-mlp"
TRAINING = LocalTrainingConfig(epochs=1, batch_size=8, learning_rate=0.05)
UPDATES = 8
INTAKE_STEP = Intake.step
"""The job's intake step, unwrapped: each run spies on it afresh."""


def _clients(count: int = 4, samples: int = 24) -> dict[str, LocalData]:
    rng = np.random.default_rng(7)
    clients = {}
    for index in range(count):
        features = rng.standard_normal((samples, 22)).astype(np.float32)
        labels = (features[:, 0] + 0.3 * index > 0).astype(np.int64)
        clients[f"c{index}"] = LocalData(features[:16], labels[:16], features[16:], labels[16:])
    return clients


def _strategy(encoding: Encoding | None) -> StrategyConfig:
    aggregation = AggregationConfig.from_dict({"mode": "fedbuff", "buffer_size": 2, "max_wait_seconds": None})
    extra: dict[str, Any] = {} if encoding is None else {"update_encoding": encoding}
    return StrategyConfig("fedbuff", aggregation, TRAINING, concurrency=2, **extra)


def _run(
    encoding: Encoding | None, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[tuple[str, Weights]], list[DecodedUpdate], Weights]:
    """(client id, delta before encoding) per trained update, what the server's intake got, the final weights."""
    sent: list[tuple[str, Weights]] = []
    received: list[DecodedUpdate] = []

    def spy(self: Intake[Any, Any], messages: Iterable[IntakeMessage[Any]], *args: Any, **kwargs: Any) -> Any:
        messages = list(messages)
        received.extend(message.decoded for message in messages if isinstance(message.decoded, DecodedUpdate))
        return INTAKE_STEP(self, messages, *args, **kwargs)

    def record(client_id: str, delta: Weights) -> Weights:
        sent.append((client_id, delta))
        return delta

    monkeypatch.setattr(Intake, "step", spy)
    simulator = Simulator(
        MODEL,
        _clients(),
        _strategy(encoding),
        speeds=DeviceSpeeds(seed=3),
        network=NetworkSpeeds(median_bytes_per_second=None),
        update_transform=record,
    )
    result = simulator.run(UPDATES, eval_every_updates=UPDATES)
    return sent, received, result.final_weights


def _job_decodes(client_id: str, delta: Weights, encoding: Encoding) -> Weights:
    """What the job decodes from a real client's messages: the client's encoder, the job's chunk checks and assembly."""
    _, values = build_chunked_update(
        client_id=client_id,
        model_name=MODEL,
        base_version=0,
        sample_count=16,
        delta=delta,
        max_message_bytes=MAX_MESSAGE_BYTES,
        encoding=encoding,
        metrics=ClientMetrics(training_loss=0.5, training_steps=2),
    )
    chunks = [decode_update_chunk(value, client_id.encode(), MAX_MESSAGE_BYTES) for value in values]
    assert not any(isinstance(chunk, Rejection) for chunk in chunks)
    update = assemble_update(chunks)  # type: ignore[arg-type]
    assert not isinstance(update, Rejection)
    return update.delta


def _same(first: Weights, second: Weights) -> bool:
    return list(first) == list(second) and all(
        first[name].dtype == second[name].dtype and np.array_equal(first[name], second[name]) for name in first
    )


@pytest.mark.parametrize("encoding", [Encoding.FLOAT16, Encoding.INT8])
def test_server_gets_what_the_job_decodes(encoding: Encoding, monkeypatch: pytest.MonkeyPatch) -> None:
    sent, received, _ = _run(encoding, monkeypatch)
    assert len(received) == len(sent) == UPDATES
    expected = [_job_decodes(client_id, delta, encoding) for client_id, delta in sent]
    for update in received:  # arrivals come in another order than trainings: match each to exactly one
        matches = [index for index, decoded in enumerate(expected) if _same(update.delta, decoded)]
        assert len(matches) == 1
        client_id, delta = sent[matches[0]]
        assert update.header.client_id == client_id
        assert not _same(update.delta, delta)  # the values did go through the encoding


def test_float32_is_the_exact_delta_and_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    sent, received, final = _run(Encoding.FLOAT32, monkeypatch)
    _, _, default_final = _run(None, monkeypatch)
    assert len(received) == len(sent) == UPDATES
    sent_ids = {id(delta) for _, delta in sent}
    assert all(id(update.delta) in sent_ids for update in received)  # the very delta: never encoded
    for client_id, delta in sent:  # and the job's float32 message would carry it bit for bit
        _, value = build_update(client_id=client_id, model_name=MODEL, base_version=0, sample_count=1, delta=delta)
        decoded = decode_update(value)
        assert not isinstance(decoded, Rejection)
        assert all(np.array_equal(decoded.delta[name], delta[name]) for name in delta)
    assert _same(final, default_final)


def test_round_trip_chunks_as_the_client_does() -> None:
    rng = np.random.default_rng(0)
    delta = {"b": rng.standard_normal(3000).astype(np.float32), "a": rng.standard_normal((40, 50)).astype(np.float32)}
    delta["a"][0, 0] = 40.0  # one large value: its chunk's int8 scale must not coarsen the other chunks
    limit = 2_500  # a few chunks, so the per-chunk scales and boundaries matter
    header = update_header(
        "c0", MODEL, sequence=5, base_version=3, sample_count=16, metrics=ClientMetrics(training_steps=2)
    )
    ours = decoded_by_job(delta, header, Encoding.INT8, max_message_bytes=limit)
    _, values = build_chunked_update(
        client_id="c0",
        model_name=MODEL,
        base_version=3,
        sample_count=16,
        delta=delta,
        max_message_bytes=limit,
        encoding=Encoding.INT8,
        metrics=ClientMetrics(training_steps=2),
    )
    assert len(values) >= 3
    chunks = [decode_update_chunk(value, b"c0", limit) for value in values]
    theirs = assemble_update(chunks)  # type: ignore[arg-type]
    assert not isinstance(theirs, Rejection)
    assert _same(ours, theirs.delta)
    assert np.abs(ours["b"] - delta["b"]).max() < np.abs(ours["a"] - delta["a"]).max()


def test_an_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="update_encoding"):
        StrategyConfig("x", AggregationConfig.from_dict({"mode": "fedbuff"}), TRAINING, update_encoding="int4")  # type: ignore[arg-type]
