"""One ``fl.updates`` record as the job's micro-batch brings it into Python."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class KafkaMessage:
    """One ``fl.updates`` record as the batch read it (``value`` is None for an oversized one)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp: datetime
    size: int
    sha256: str | None
    """SHA-256 of an oversized message's value (computed in Spark); None for every other message."""
    other_model: bool = False
    """Its ``fedstream-model`` header names another model: read past, not judged (``value`` is None)."""
