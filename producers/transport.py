"""The client's two Kafka ends: read the newest global version from ``fl.models``, publish to ``fl.updates``."""

from __future__ import annotations

import time
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from schemas.kafka_settings import KafkaSettings
from schemas.messages import ModelHeader
from schemas.topics import MODELS_TOPIC, UPDATES_TOPIC
from schemas.wire import MODEL_MAGIC, DecodedModel, decode_model, split_frame


class GlobalModelSubscriber:
    """Follows ``fl.models`` and remembers the newest version of one model (the topic is compacted)."""

    def __init__(self, settings: KafkaSettings, model_name: str) -> None:
        self.model_name = model_name
        self._consumer = KafkaConsumer(**settings.consumer_options(), enable_auto_commit=False)
        partitions = self._partitions()
        self._consumer.assign(partitions)
        self._consumer.seek_to_beginning(*partitions)
        self._newest_header: ModelHeader | None = None
        self._newest_value: bytes | None = None
        self._decoded: DecodedModel | None = None

    def _partitions(self) -> list[TopicPartition]:
        deadline = time.monotonic() + 30
        while True:
            ids = self._consumer.partitions_for_topic(MODELS_TOPIC)
            if ids:
                return [TopicPartition(MODELS_TOPIC, partition) for partition in sorted(ids)]
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {MODELS_TOPIC} does not exist; is the stack up?")
            time.sleep(0.5)

    def poll(self, timeout_seconds: float = 0.0) -> int | None:
        """Read what arrived; return the newest version number known (None before version 0)."""
        batches = self._consumer.poll(timeout_ms=int(timeout_seconds * 1000), max_records=1000)
        for records in batches.values():
            for record in records:
                if record.key != self.model_name.encode() or record.value is None:
                    continue
                framed = split_frame(record.value, MODEL_MAGIC)
                if not isinstance(framed, tuple):
                    continue
                header = ModelHeader.model_validate_json(framed[0])
                if self._newest_header is None or header.version > self._newest_header.version:
                    self._newest_header, self._newest_value, self._decoded = header, record.value, None
        return None if self._newest_header is None else self._newest_header.version

    def newest(self, timeout_seconds: float = 30.0) -> DecodedModel:
        """The newest version, waiting up to ``timeout_seconds`` for version 0 to appear."""
        deadline = time.monotonic() + timeout_seconds
        reread_at = time.monotonic() + 10
        self.poll(0.2)
        while self._newest_value is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no version of {self.model_name!r} on {MODELS_TOPIC} after {timeout_seconds}s")
            if time.monotonic() > reread_at:  # a topic recreated under us: read it again from the start
                self._consumer.seek_to_beginning()
                reread_at = time.monotonic() + 10
            self.poll(0.5)
        if self._decoded is None:
            self._decoded = decode_model(self._newest_value)
        return self._decoded

    def wait_for_version_after(self, version: int, timeout_seconds: float) -> int | None:
        """Block until a version newer than ``version`` is known; return it, or None on timeout."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            newest = self.poll(0.2)
            if newest is not None and newest > version:
                return newest
            if time.monotonic() > deadline:
                return None

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


@dataclass(frozen=True)
class PublishedAt:
    """Where the broker stored an update: the ``kafka_partition`` and ``kafka_offset`` its audit row will carry."""

    partition: int
    offset: int


class UpdatePublisher:
    """Idempotent, acknowledged producer of update messages keyed by client id."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._producer = KafkaProducer(**settings.producer_options())

    def publish(self, client_id: str, value: bytes, *, wait: bool = True) -> PublishedAt | None:
        """Send one update; with ``wait`` block until the broker has acknowledged it and return where it is."""
        future = self._producer.send(UPDATES_TOPIC, key=client_id.encode(), value=value)
        if not wait:
            return None
        metadata = future.get(timeout=60)
        return PublishedAt(int(metadata.partition), int(metadata.offset))

    def flush(self) -> None:
        """Wait for every sent update to be acknowledged."""
        self._producer.flush(timeout=60)

    def close(self) -> None:
        """Flush and close."""
        self._producer.close(timeout=30)
