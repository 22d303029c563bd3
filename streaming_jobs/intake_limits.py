"""How much of ``fl.updates`` the driver takes in at once, in bytes, so no client can exhaust its memory.

A micro-batch is bounded by Kafka's ``maxOffsetsPerTrigger``, a message count. Messages differ in size by
orders of magnitude (a hostile one may be as large as the broker allows), so the count is derived from a byte
budget and the largest message that can be a valid update of the served model: its safetensors payload (a
delta has the model's names, shapes and dtypes) plus the largest header, the signature and the framing.
Anything larger is recognised in Spark, by ``length(value)``, and never reaches Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy.typing as npt

from schemas.tensors import encode_tensors
from schemas.wire import MAX_HEADER_BYTES, SIGNATURE_BYTES, UPDATE_MAGIC

_FRAMING_BYTES: Final = len(UPDATE_MAGIC) + 4
MAX_KEY_BYTES: Final = 256
DEFAULT_BATCH_BYTES_BUDGET: Final = 64 * 2**20
"""Default message bytes per micro-batch. The driver holds a batch several times over while it passes from the
Kafka source to Python and back to Delta (task results, Arrow batches, decoded arrays, the rows written): 500
messages of 420 KB (210 MB) ran the default 2 GB driver heap out of memory, 100 (42 MB) used under 3 GB in all."""
"""Kafka keys are client ids (at most 64 characters); longer keys are cut to this in Spark before Python."""


@dataclass(frozen=True)
class IntakeLimits:
    """Bounds on what one micro-batch brings into the driver's Python."""

    max_update_bytes: int
    """The largest message that can be a valid update; larger ones are rejected as ``oversized`` in Spark."""
    max_offsets_per_trigger: int
    """Messages per micro-batch: at most ``batch_bytes_budget // max_update_bytes``."""
    batch_bytes_budget: int
    rejected_bytes_kept: int
    """How many leading bytes of a rejected message ``rejected_updates.raw_value`` keeps."""


def largest_update_bytes(parameters: Mapping[str, npt.NDArray[Any]]) -> int:
    """Size of the largest well-formed update message for a model with ``parameters``."""
    return _FRAMING_BYTES + MAX_HEADER_BYTES + SIGNATURE_BYTES + len(encode_tensors(parameters))


def intake_limits(
    parameters: Mapping[str, npt.NDArray[Any]],
    *,
    kafka_max_message_bytes: int,
    batch_bytes_budget: int,
    max_offsets_per_trigger: int,
    rejected_bytes_kept: int,
) -> IntakeLimits:
    """Limits for a model with ``parameters``; raises ``ValueError`` when the budget cannot hold one update."""
    max_update_bytes = min(kafka_max_message_bytes, largest_update_bytes(parameters))
    per_message = max_update_bytes + MAX_KEY_BYTES
    if batch_bytes_budget < per_message:
        raise ValueError(
            f"batch_bytes_budget {batch_bytes_budget} cannot hold one update of this model ({per_message} bytes "
            "with its key); raise it"
        )
    return IntakeLimits(
        max_update_bytes=max_update_bytes,
        max_offsets_per_trigger=min(max_offsets_per_trigger, batch_bytes_budget // per_message),
        batch_bytes_budget=batch_bytes_budget,
        rejected_bytes_kept=rejected_bytes_kept,
    )
