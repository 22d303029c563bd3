"""Kafka topic names, their topic-level settings, and the one message-size limit every party agrees on.

fedstream works with a Kafka cluster's stock message limits: every message it sends fits Apache Kafka's
defaults (broker ``message.max.bytes``, producer ``max.request.size``) and those of the managed services
(Amazon MSK, Azure Event Hubs, Confluent Cloud). An update or global version larger than one message travels
as several chunk messages (:mod:`schemas.chunks`), each within the limit. An operator whose cluster allows
larger messages may raise the limit (``FEDSTREAM_KAFKA_MAX_MESSAGE_BYTES``, the same for every party); the
topics then get a matching ``max.message.bytes``.
"""

from typing import Final

UPDATES_TOPIC: Final = "fl.updates"
MODELS_TOPIC: Final = "fl.models"

MODEL_HEADER: Final = "fedstream-model"
"""Kafka record header of an ``fl.updates`` message naming its model (UTF-8), so that several models share the
topic: a job reads past the messages whose header names another model without recording them. A message
without the header is judged as any other (and rejected as ``unknown_model`` if it is another model's): the
header only routes, the signed update header inside the value is what the job trusts."""

KAFKA_DEFAULT_MESSAGE_MAX_BYTES: Final = 1_048_588
"""Apache Kafka's default broker ``message.max.bytes`` (1 MiB + 12), which a topic inherits unless set."""

RECORD_OVERHEAD_BYTES: Final = 4096
"""Room a message's value leaves for the rest of its record: the key (at most 256 bytes), the
``fedstream-model`` header, and the record batch framing."""

MAX_MESSAGE_BYTES: Final = 1_000_000
"""Largest Kafka message value (fedstream header + payload) sent by default: 1,000,000 bytes.

With :data:`RECORD_OVERHEAD_BYTES` around it, a message fits Apache Kafka's default broker
``message.max.bytes`` (1,048,588) and producer ``max.request.size`` (1,048,576), Amazon MSK's defaults (Kafka's),
and Azure Event Hubs' largest request (1,046,528). Larger updates and versions travel in chunks of at most
this size."""


def topic_message_bytes(max_message_bytes: int) -> int:
    """The ``max.message.bytes`` a topic needs so that a value of ``max_message_bytes`` fits with its record."""
    return max_message_bytes + RECORD_OVERHEAD_BYTES


def topic_configs(max_message_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, dict[str, str]]:
    """Topic name → topic-level configuration: what the dev stack, Docker Compose and a managed cluster create.

    ``max_message_bytes`` is the parties' ``KafkaSettings.max_message_bytes``. Up to Kafka's default the
    topics keep the cluster's own ``max.message.bytes``; a larger limit sets it on both topics (the cluster
    must allow it).
    """
    size: dict[str, str] = {}
    if topic_message_bytes(max_message_bytes) > KAFKA_DEFAULT_MESSAGE_MAX_BYTES:
        size["max.message.bytes"] = str(topic_message_bytes(max_message_bytes))
    return {
        # The broker stamps each update's arrival (LogAppendTime), so the job's replay window compares the
        # signed created_at with a time no client can set.
        UPDATES_TOPIC: {
            **size,
            "retention.ms": str(7 * 24 * 3600 * 1000),
            "message.timestamp.type": "LogAppendTime",
        },
        # Compacted, keyed by model name: the newest global version of each model is always readable.
        MODELS_TOPIC: {
            **size,
            "cleanup.policy": "compact",
            "min.compaction.lag.ms": "0",
            "segment.ms": str(3600 * 1000),
        },
    }
