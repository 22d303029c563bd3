"""Who trains in a synchronous round: a rule the job and every client compute alike, with no list sent.

In a synchronous round (``mode: fedavg`` with ``cohort_fraction``), version ``v`` opens round ``v + 1``. Each
client draws a number in ``[0, 1)`` from a hash of the model name, ``v`` and its own client id, and belongs to
the round's cohort when the draw is below the fraction the version's signed header names. A client learns
only whether it is in; the job recomputes the same draw for every update and refuses those of clients outside
the cohort (``not_in_cohort``). Each client is drawn independently, so a cohort's size varies around
``fraction x clients``; the round closes at ``buffer_size`` updates or its wait limit, whichever comes first.
"""

from __future__ import annotations

import hashlib
import math
from typing import Final

__all__ = ["COHORT_DRAW_BITS", "cohort_draw", "in_cohort"]

COHORT_DRAW_BITS: Final = 64
"""Bits of the SHA-256 digest that make one draw."""
_DOMAIN: Final = b"fedstream-cohort-v1"


def cohort_draw(model_name: str, version: int, client_id: str) -> float:
    """The client's draw in ``[0, 1)`` for the round that trains on ``version`` of ``model_name``."""
    message = b"\x00".join((_DOMAIN, model_name.encode(), str(version).encode(), client_id.encode()))
    value = int.from_bytes(hashlib.sha256(message).digest()[: COHORT_DRAW_BITS // 8], "big")
    return value / float(1 << COHORT_DRAW_BITS)


def in_cohort(model_name: str, version: int, client_id: str, fraction: float | None) -> bool:
    """Whether ``client_id`` trains on ``version``: always without a fraction, else when its draw is below it."""
    if fraction is None:
        return True
    if not (isinstance(fraction, float | int) and math.isfinite(fraction) and 0 < fraction <= 1):
        raise ValueError(f"cohort fraction must be in (0, 1], got {fraction!r}")
    return cohort_draw(model_name, version, client_id) < fraction
