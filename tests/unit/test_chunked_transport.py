"""The client's Kafka ends with chunks, on fake Kafka clients: reading chunk keys, sending all chunks of an update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import producers.transport
from producers.transport import GlobalModelSubscriber, PublishedAt, UpdatePublisher
from producers.trusted_versions import IgnoreReason
from schemas.kafka_settings import KafkaSettings
from schemas.topics import MODEL_HEADER, MODELS_TOPIC, UPDATES_TOPIC
from streaming_jobs.publisher import model_records
from streaming_jobs.signing_key import JobSigningKey
from tests.unit.test_chunked_publisher import LIMIT, MODEL, parameters, row

KEY = JobSigningKey.generate()
OTHER_KEY = JobSigningKey.generate()


@dataclass(frozen=True)
class _Record:
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int


class _Consumer:
    """Two partitions of ``fl.models``; ``poll`` returns what a test queued, once."""

    queued: dict[int, list[_Record]]

    def __init__(self, **options: Any) -> None:
        self.queued = {0: [], 1: []}

    def partitions_for_topic(self, topic: str) -> set[int]:
        assert topic == MODELS_TOPIC
        return {0, 1}

    def assign(self, partitions: list[Any]) -> None:
        pass

    def seek_to_beginning(self, *partitions: Any) -> None:
        pass

    def poll(self, timeout_ms: int, max_records: int) -> dict[int, list[_Record]]:
        batches, self.queued = self.queued, {0: [], 1: []}
        return batches

    def close(self) -> None:
        pass


@pytest.fixture
def subscriber(monkeypatch: pytest.MonkeyPatch) -> GlobalModelSubscriber:
    monkeypatch.setattr(producers.transport, "KafkaConsumer", _Consumer)
    return GlobalModelSubscriber(KafkaSettings(max_message_bytes=4 * LIMIT), MODEL, KEY.public_key)


def _queue(subscriber: GlobalModelSubscriber, records: list[tuple[bytes, bytes]]) -> None:
    consumer: _Consumer = subscriber._consumer
    for offset, (key, value) in enumerate(records):
        partition = offset % 2  # chunk keys hash to several partitions
        consumer.queued[partition].append(_Record(key, value, partition, offset))


def test_the_subscriber_reads_chunk_keys_and_takes_the_version_once_complete(
    subscriber: GlobalModelSubscriber,
) -> None:
    records = model_records(row(2), KEY.sign, LIMIT)
    other_models = [(b"har-cnn-2/0", value) for _, value in records[:1]] + [(b"har", records[1][1])]
    _queue(subscriber, [*records[:-1], *other_models])
    assert subscriber.poll() is None and subscriber.ignored_count == 0  # other models' keys are not even looked at
    _queue(subscriber, records[-1:])
    assert subscriber.poll() == 2
    for name, expected in parameters(2).items():
        np.testing.assert_array_equal(subscriber.newest().parameters[name], expected)


def test_the_subscriber_ignores_a_forged_chunk_under_its_keys(subscriber: GlobalModelSubscriber) -> None:
    forged = model_records(row(9), OTHER_KEY.sign, LIMIT)
    _queue(subscriber, forged[:1])
    assert subscriber.poll() is None
    (ignored,) = subscriber.ignored
    assert ignored.reason is IgnoreReason.BAD_SIGNATURE and ignored.version == 9 and ignored.offset == 0


@dataclass(frozen=True)
class _Metadata:
    partition: int
    offset: int


class _Future:
    def __init__(self, metadata: _Metadata) -> None:
        self.metadata = metadata

    def get(self, timeout: float) -> _Metadata:
        return self.metadata


class _Producer:
    def __init__(self, **options: Any) -> None:
        self.options = options
        self.sent: list[dict[str, Any]] = []

    def send(self, topic: str, **message: Any) -> _Future:
        self.sent.append({"topic": topic, **message})
        return _Future(_Metadata(3, 100 + len(self.sent)))


def test_publish_chunks_sends_every_chunk_under_the_clients_key_and_says_where_each_landed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(producers.transport, "KafkaProducer", _Producer)
    publisher = UpdatePublisher(KafkaSettings(max_message_bytes=LIMIT))
    assert publisher.max_message_bytes == LIMIT
    landed = publisher.publish_chunks("client-1", [b"c0", b"c1", b"c2"], model_name=MODEL)
    assert landed == [PublishedAt(3, 101), PublishedAt(3, 102), PublishedAt(3, 103)]
    sent = publisher._producer.sent
    assert [message["value"] for message in sent] == [b"c0", b"c1", b"c2"]
    assert {message["topic"] for message in sent} == {UPDATES_TOPIC}
    assert {message["key"] for message in sent} == {b"client-1"}
    assert all(message["headers"] == [(MODEL_HEADER, MODEL.encode())] for message in sent)
    assert publisher.publish_chunks("client-1", [b"c3"], wait=False) == []
    assert sent[-1]["headers"] == []
