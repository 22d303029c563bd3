"""How every fedstream party (client, job, CLI) reaches Kafka."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.topics import MAX_MESSAGE_BYTES

DEFAULT_BOOTSTRAP_SERVERS = "localhost:9092"


class KafkaSettings(BaseModel):
    """Connection settings; ``from_env`` reads ``FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(default=DEFAULT_BOOTSTRAP_SERVERS, min_length=1)
    max_message_bytes: int = Field(default=MAX_MESSAGE_BYTES, gt=0)

    @classmethod
    def from_env(cls) -> KafkaSettings:
        """Settings from the environment, defaulting to the local broker."""
        return cls(bootstrap_servers=os.environ.get("FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP_SERVERS))

    def producer_options(self) -> dict[str, Any]:
        """Keyword arguments for ``kafka.KafkaProducer``: idempotent, acknowledged by all replicas."""
        return {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "acks": "all",
            "enable_idempotence": True,
            "max_request_size": self.max_message_bytes,
            "retries": 10,
        }

    def consumer_options(self) -> dict[str, Any]:
        """Keyword arguments for ``kafka.KafkaConsumer`` able to fetch the largest message."""
        return {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "max_partition_fetch_bytes": self.max_message_bytes,
            "fetch_max_bytes": self.max_message_bytes,
        }

    def admin_options(self) -> dict[str, Any]:
        """Keyword arguments for ``kafka.KafkaAdminClient``."""
        return {"bootstrap_servers": self.bootstrap_servers.split(",")}

    def spark_source_options(self) -> dict[str, str]:
        """Options for Spark's Kafka source (``kafka.``-prefixed consumer settings)."""
        return {
            "kafka.bootstrap.servers": self.bootstrap_servers,
            "kafka.max.partition.fetch.bytes": str(self.max_message_bytes),
            "kafka.fetch.max.bytes": str(self.max_message_bytes),
        }
