"""Kafka topic names and the one message-size limit every party agrees on.

fedstream raises Kafka's limits consistently (broker, topic, producer, consumer, Spark source) instead of
chunking: a model of a few million float32 parameters fits in one message, and one message per update keeps
exactly-once bookkeeping simple. Updates above the limit are refused by the client and, should one arrive
anyway, rejected by the job with the reason ``oversized``.
"""

from typing import Final

UPDATES_TOPIC: Final = "fl.updates"
MODELS_TOPIC: Final = "fl.models"

MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
"""Largest Kafka message (header + payload) anywhere in fedstream: 16 MiB."""
