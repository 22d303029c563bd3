"""Deliberately bad messages, as a faulty or hostile device would send them: the demo shows each rejected."""

from __future__ import annotations

import numpy as np

from producers.updates import build_update
from schemas.tensors import Tensors


def bad_update_messages(model_name: str, parameters: Tensors, base_version: int) -> list[tuple[str, str, bytes]]:
    """``(label, client_id, value)`` for a malformed message, a NaN update, a wrongly shaped one and a replay."""
    client_id = "faulty-device"
    zeros = {name: np.zeros_like(array) for name, array in parameters.items()}
    with_nan = dict(zeros)
    first = sorted(with_nan)[0]
    with_nan[first] = np.full_like(zeros[first], np.nan)
    wrong_shape = dict(zeros)
    wrong_shape[first] = np.zeros((*zeros[first].shape, 2), dtype=np.float32)
    _, nan_value = build_update(
        client_id=client_id, model_name=model_name, base_version=base_version, sample_count=1, delta=with_nan
    )
    _, shape_value = build_update(
        client_id=client_id, model_name=model_name, base_version=base_version, sample_count=1, delta=wrong_shape
    )
    _, replayed = build_update(
        client_id=client_id, model_name=model_name, base_version=base_version, sample_count=1, delta=zeros
    )
    return [
        ("malformed bytes", client_id, b"\x00not a fedstream update"),
        ("NaN values", client_id, nan_value),
        ("wrong shape", client_id, shape_value),
        ("valid zero update", client_id, replayed),
        ("replay of that update", client_id, replayed),
    ]
