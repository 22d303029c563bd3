"""Why an update was refused: one reason code per failure an operator can act on."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RejectionReason(StrEnum):
    """Reason codes recorded in the ``rejected_updates`` table."""

    OVERSIZED = "oversized"
    MALFORMED_ENVELOPE = "malformed_envelope"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    INVALID_HEADER = "invalid_header"
    KEY_MISMATCH = "key_mismatch"
    PAYLOAD_HASH_MISMATCH = "payload_hash_mismatch"
    MALFORMED_PAYLOAD = "malformed_payload"
    UNKNOWN_MODEL = "unknown_model"
    SHAPE_MISMATCH = "shape_mismatch"
    DTYPE_MISMATCH = "dtype_mismatch"
    NON_FINITE = "non_finite"
    FUTURE_BASE_VERSION = "future_base_version"
    TOO_STALE = "too_stale"
    """Trained on a version older than the job's staleness limit allows (in a synchronous round: a late update)."""
    NOT_IN_COHORT = "not_in_cohort"
    """From a client the round's cohort draw left out (``schemas.cohorts``)."""
    DUPLICATE_UPDATE = "duplicate_update"
    UNSIGNED = "unsigned"
    UNKNOWN_CLIENT = "unknown_client"
    REVOKED_CLIENT = "revoked_client"
    BAD_SIGNATURE = "bad_signature"
    OUTSIDE_REPLAY_WINDOW = "outside_replay_window"
    INCOMPLETE = "incomplete"
    """A chunked update whose chunks did not all arrive before its deadline (or a chunk of one that expired)."""
    DUPLICATE_CHUNK = "duplicate_chunk"
    """A chunk whose index of the same update the job already holds."""
    CHUNK_LIMIT = "chunk_limit"
    """A chunk the job cannot hold: its client, or all clients together, have too many incomplete updates open."""
    INTERNAL_ERROR = "internal_error"
    """Processing this one message raised; the exception is in the detail and the batch went on."""


@dataclass(frozen=True)
class Rejection:
    """One problem with one message: a reason code and a detail naming the offending value."""

    reason: RejectionReason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"
