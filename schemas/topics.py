"""Kafka topic names, their topic-level settings, and the one message-size limit every party agrees on.

fedstream raises Kafka's limits consistently (broker, topic, producer, consumer, Spark source) instead of
chunking: a model of a few million float32 parameters fits in one message, and one message per update keeps
exactly-once bookkeeping simple. Updates above the limit are refused by the client and, should one arrive
anyway, rejected by the job with the reason ``oversized``.
"""

from typing import Final

UPDATES_TOPIC: Final = "fl.updates"
MODELS_TOPIC: Final = "fl.models"

MODEL_HEADER: Final = "fedstream-model"
"""Kafka record header of an ``fl.updates`` message naming its model (UTF-8), so that several models share the
topic: a job reads past the messages whose header names another model without recording them. A message
without the header is judged as any other (and rejected as ``unknown_model`` if it is another model's): the
header only routes, the signed update header inside the value is what the job trusts."""

MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
"""Largest Kafka message (header + payload) anywhere in fedstream: 16 MiB."""


def topic_configs(max_message_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, dict[str, str]]:
    """Topic name → topic-level configuration: what the dev stack, Docker Compose and a managed cluster create.

    ``max_message_bytes`` is the parties' ``KafkaSettings.max_message_bytes`` (lower it where a plan caps it).
    """
    limit = str(max_message_bytes)
    return {
        # The broker stamps each update's arrival (LogAppendTime), so the job's replay window compares the
        # signed created_at with a time no client can set.
        UPDATES_TOPIC: {
            "max.message.bytes": limit,
            "retention.ms": str(7 * 24 * 3600 * 1000),
            "message.timestamp.type": "LogAppendTime",
        },
        # Compacted, keyed by model name: the newest global version of each model is always readable.
        MODELS_TOPIC: {
            "max.message.bytes": limit,
            "cleanup.policy": "compact",
            "min.compaction.lag.ms": "0",
            "segment.ms": str(3600 * 1000),
        },
    }
