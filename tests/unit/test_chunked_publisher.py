"""The job announces a version too large for one Kafka message as chunks, which a client assembles exactly."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from aggregator import AggregationConfig
from producers.trusted_versions import VersionChain
from schemas.chunks import is_model_chunk, is_models_key_of, model_chunk_key
from schemas.kafka_settings import KafkaSettings
from schemas.rows import ModelVersionRow
from schemas.tensors import Tensors, encode_tensors, parameter_hash
from schemas.topics import MODELS_TOPIC
from schemas.wire import DecodedModel
from streaming_jobs.publisher import VersionPublisher, model_message, model_records
from streaming_jobs.signing_key import JobSigningKey
from tests.rows import version_row

KEY = JobSigningKey.generate()
MODEL = "har-cnn"
LIMIT = 4096


def parameters(version: int, size: int = 3000) -> Tensors:
    values = np.random.default_rng(version).standard_normal(size).astype(np.float32)
    return {"a.weight": values[: size - 7].reshape(-1, 1), "a.bias": values[size - 7 :]}


def row(version: int, size: int = 3000) -> ModelVersionRow:
    params = parameters(version, size)
    return version_row(
        version,
        model_name=MODEL,
        parameters=encode_tensors(params),
        parameter_hash=parameter_hash(params),
        parent_parameter_hash=None if version == 0 else parameter_hash(parameters(version - 1, size)),
    )


def test_a_version_that_fits_is_one_message_under_the_models_key() -> None:
    small = row(1, size=100)
    assert model_records(small, KEY.sign, LIMIT) == [(MODEL.encode(), model_message(small, KEY.sign))]


def test_a_version_too_large_is_chunks_under_their_own_keys_each_within_the_limit() -> None:
    records = model_records(row(2), KEY.sign, LIMIT)
    assert len(records) > 2
    assert [key for key, _ in records] == [model_chunk_key(MODEL, index) for index in range(len(records))]
    assert all(is_models_key_of(key, MODEL) and not is_models_key_of(key, "har") for key, _ in records)
    assert all(is_model_chunk(value) and len(value) <= LIMIT for _, value in records)


def test_a_client_assembles_the_chunks_into_exactly_the_version() -> None:
    versions = VersionChain(KEY.public_key, MODEL, max_message_bytes=LIMIT)
    values = [value for _, value in model_records(row(2), KEY.sign, LIMIT)]
    random.Random(1).shuffle(values)
    outcomes = [versions.offer(value) for value in values]
    assert outcomes[:-1] == [None] * (len(values) - 1)
    taken = outcomes[-1]
    assert isinstance(taken, DecodedModel) and taken.header.version == 2 and taken.header.parent_version == 1
    for name, expected in parameters(2).items():
        np.testing.assert_array_equal(taken.parameters[name], expected)


def test_a_version_no_chunking_can_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="fit"):
        model_records(row(2), KEY.sign, 300)


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.flushed = 0

    def send(self, topic: str, *, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def flush(self, timeout: float) -> None:
        self.flushed = len(self.sent)


def test_the_publisher_sends_every_record_in_version_order_and_flushes() -> None:
    publisher = object.__new__(VersionPublisher)  # no Kafka, no MLflow: only ``send`` is exercised
    producer = _Producer()
    rounds = AggregationConfig(strategy="fedavg", cohort_fraction=0.25)
    publisher.settings = SimpleNamespace(kafka=KafkaSettings(max_message_bytes=LIMIT), aggregation=rounds)  # type: ignore[assignment]
    publisher._signing_key = KEY
    publisher._producer = producer
    rows: list[Any] = [row(3), row(1, size=100)]
    publisher.send(rows)
    expected = [
        *model_records(rows[1], KEY.sign, LIMIT, cohort_fraction=0.25),
        *model_records(rows[0], KEY.sign, LIMIT, cohort_fraction=0.25),
    ]
    assert expected != [*model_records(rows[1], KEY.sign, LIMIT), *model_records(rows[0], KEY.sign, LIMIT)]
    assert [(key, value) for _, key, value in producer.sent] == expected
    assert {topic for topic, _, _ in producer.sent} == {MODELS_TOPIC}
    assert producer.flushed == len(expected)


def test_a_version_published_again_is_the_same_chunks() -> None:
    # The job publishes its newest version again on every start: the same bytes keep one assembly per version.
    again = row(3)
    assert model_records(again, KEY.sign, LIMIT) == model_records(row(3), KEY.sign, LIMIT)
