"""The client's two Kafka ends: read the newest global version from ``fl.models``, publish to ``fl.updates``."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from producers.trusted_versions import IgnoredVersion, IgnoreReason, VersionChain, job_public_key_from_env
from schemas.chunks import is_models_key_of
from schemas.kafka_diagnosis import connect
from schemas.kafka_settings import KafkaSettings
from schemas.topics import MODEL_HEADER, MODELS_TOPIC, UPDATES_TOPIC
from schemas.wire import DecodedModel

logger = logging.getLogger(__name__)


class GlobalModelSubscriber:
    """Follows ``fl.models`` and remembers the newest trusted version of one model (the topic is compacted).

    A version counts only when the job's key signed it (see :mod:`producers.trusted_versions`); a version too
    large for one message arrives as chunks keyed ``model_name/<index>`` and counts once all of them have.
    Every other message under this model's keys is logged with its reason, kept in ``ignored`` (the most
    recent 100, with ``ignored_count`` of all) and skipped. Nothing a message holds makes ``poll`` or
    ``newest`` raise.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        model_name: str,
        job_public_key: bytes | None = None,
        *,
        bootstrap_timeout_seconds: float = 30.0,
    ) -> None:
        """``job_public_key`` is the job's raw 32-byte Ed25519 key; None reads it as ``job_public_key_from_env``.

        Raises ``KafkaUnreachableError``, naming the cause, when no connection is made in ``bootstrap_timeout_seconds``.
        """
        self.model_name = model_name
        self._chain = VersionChain(
            job_public_key if job_public_key is not None else job_public_key_from_env(),
            model_name,
            max_message_bytes=settings.max_message_bytes,
        )
        self.ignored: deque[IgnoredVersion] = deque(maxlen=100)
        self.ignored_count = 0
        self._consumer = connect(
            settings,
            lambda: KafkaConsumer(
                **settings.consumer_options(),
                enable_auto_commit=False,
                bootstrap_timeout_ms=int(bootstrap_timeout_seconds * 1000),
            ),
        )
        partitions = self._partitions()
        self._consumer.assign(partitions)
        self._consumer.seek_to_beginning(*partitions)

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
        """Read what arrived; return the newest trusted version number (None before the first)."""
        batches = self._consumer.poll(timeout_ms=int(timeout_seconds * 1000), max_records=1000)
        for records in batches.values():
            for record in records:
                if not is_models_key_of(record.key, self.model_name):
                    continue  # another model's versions share the topic
                self._offer(record)
        newest = self._chain.newest
        return None if newest is None else newest.header.version

    def _offer(self, record: Any) -> None:
        try:
            outcome = self._chain.offer(record.value)
        except Exception as error:  # a checker bug must not let one message stop the client
            logger.exception("checking the message at %s:%s raised", record.partition, record.offset)
            outcome = IgnoredVersion(IgnoreReason.MALFORMED, f"checking it raised {type(error).__name__}: {error}")
        if isinstance(outcome, IgnoredVersion):
            ignored = replace(outcome, partition=record.partition, offset=record.offset)
            self.ignored.append(ignored)
            self.ignored_count += 1
            logger.warning("ignored a message for %r on %s: %s", self.model_name, MODELS_TOPIC, ignored)

    def newest(self, timeout_seconds: float = 30.0) -> DecodedModel:
        """The newest trusted version, waiting up to ``timeout_seconds`` for a first one to appear."""
        deadline = time.monotonic() + timeout_seconds
        reread_at = time.monotonic() + 10
        self.poll(0.2)
        while self._chain.newest is None:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no version of {self.model_name!r} signed by the job's key on {MODELS_TOPIC} after "
                    f"{timeout_seconds}s ({self.ignored_count} messages ignored)"
                )
            if time.monotonic() > reread_at:  # a topic recreated under us: read it again from the start
                self._consumer.seek_to_beginning()
                reread_at = time.monotonic() + 10
            self.poll(0.5)
        return self._chain.newest

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


def _published_at(metadata: Any) -> PublishedAt:
    return PublishedAt(int(metadata.partition), int(metadata.offset))


class UpdatePublisher:
    """Idempotent, acknowledged producer of update messages keyed by client id.

    ``max_message_bytes`` is the settings' limit: a client cuts an update larger than it into chunks
    (``producers.updates.build_update_messages``) and sends them with :meth:`publish_chunks`.
    """

    def __init__(self, settings: KafkaSettings, *, bootstrap_timeout_seconds: float = 30.0) -> None:
        """Raises ``KafkaUnreachableError``, naming the cause, when no connection is made in time."""
        self.max_message_bytes = settings.max_message_bytes
        self._producer = connect(
            settings,
            lambda: KafkaProducer(
                **settings.producer_options(), bootstrap_timeout_ms=int(bootstrap_timeout_seconds * 1000)
            ),
        )

    def publish(
        self, client_id: str, value: bytes, *, model_name: str | None = None, wait: bool = True
    ) -> PublishedAt | None:
        """Send one update; with ``wait`` block until the broker has acknowledged it and return where it is.

        ``model_name`` goes into the message's ``fedstream-model`` header, so the jobs of other models on the
        topic read past it (:data:`schemas.topics.MODEL_HEADER`).
        """
        headers = [] if model_name is None else [(MODEL_HEADER, model_name.encode())]
        future = self._producer.send(UPDATES_TOPIC, key=client_id.encode(), value=value, headers=headers)
        if not wait:
            return None
        return _published_at(future.get(timeout=60))

    def publish_chunks(
        self, client_id: str, values: Sequence[bytes], *, model_name: str | None = None, wait: bool = True
    ) -> list[PublishedAt]:
        """Send the chunk values of one update in order; with ``wait`` block until all are acknowledged.

        Every chunk goes out as :meth:`publish` sends an update (key ``client_id``, the same ``fedstream-model``
        header), so all land in one partition in index order. Returns where each landed, in ``values``' order
        (empty without ``wait``). A whole update is a one-value list, so clients may send every update this way.
        """
        headers = [] if model_name is None else [(MODEL_HEADER, model_name.encode())]
        key = client_id.encode()
        futures = [self._producer.send(UPDATES_TOPIC, key=key, value=value, headers=headers) for value in values]
        if not wait:
            return []
        # Sent back to back, they are acknowledged together: waiting on each in turn costs one round trip.
        return [_published_at(future.get(timeout=60)) for future in futures]

    def flush(self) -> None:
        """Wait for every sent update to be acknowledged."""
        self._producer.flush(timeout=60)

    def close(self) -> None:
        """Flush and close."""
        self._producer.close(timeout=30)
