"""Checks of a decoded update against the current global model; every problem is reported, not the first."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from schemas.rejections import Rejection, RejectionReason
from schemas.wire import DecodedUpdate


def validate_update(
    update: DecodedUpdate,
    *,
    model_name: str,
    reference: Mapping[str, npt.NDArray[np.float32]],
    current_version: int,
    max_staleness: int | None,
) -> list[Rejection]:
    """Return every reason ``update`` cannot be aggregated into ``model_name`` at ``current_version``.

    ``reference`` is the current global parameters: the update must carry exactly the same names, shapes and
    dtypes, with finite values, based on a version that exists and is no more than ``max_staleness`` behind.
    """
    header = update.header
    problems: list[Rejection] = []
    if header.model_name != model_name:
        problems.append(
            Rejection(RejectionReason.UNKNOWN_MODEL, f"model {header.model_name!r}; job serves {model_name!r}")
        )
        return problems
    missing = sorted(set(reference) - set(update.delta))
    unexpected = sorted(set(update.delta) - set(reference))
    if missing or unexpected:
        problems.append(
            Rejection(RejectionReason.SHAPE_MISMATCH, f"missing tensors {missing[:5]}, unexpected {unexpected[:5]}")
        )
    for name in sorted(set(reference) & set(update.delta)):
        tensor, expected = update.delta[name], reference[name]
        if tensor.dtype != expected.dtype:
            problems.append(
                Rejection(RejectionReason.DTYPE_MISMATCH, f"{name}: {tensor.dtype}, expected {expected.dtype}")
            )
        elif tensor.shape != expected.shape:
            problems.append(
                Rejection(RejectionReason.SHAPE_MISMATCH, f"{name}: shape {tensor.shape}, expected {expected.shape}")
            )
        elif not np.isfinite(tensor).all():
            bad = int(np.size(tensor) - np.count_nonzero(np.isfinite(tensor)))
            problems.append(Rejection(RejectionReason.NON_FINITE, f"{name}: {bad} NaN/Inf values"))
    if header.base_version > current_version:
        problems.append(
            Rejection(
                RejectionReason.FUTURE_BASE_VERSION,
                f"base_version {header.base_version} is newer than the current version {current_version}",
            )
        )
    elif max_staleness is not None and current_version - header.base_version > max_staleness:
        problems.append(
            Rejection(
                RejectionReason.TOO_STALE,
                f"staleness {current_version - header.base_version} (base {header.base_version}, "
                f"current {current_version}) exceeds {max_staleness}",
            )
        )
    return problems
