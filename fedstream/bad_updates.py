"""Deliberately bad messages, as a faulty or hostile device would send them: the demo shows each rejected."""

from __future__ import annotations

from functools import partial

import numpy as np

from producers.identity import ClientIdentity
from producers.updates import build_update
from schemas.tensors import Tensors


def bad_update_messages(
    model_name: str, parameters: Tensors, base_version: int, device: ClientIdentity, impostor: ClientIdentity
) -> list[tuple[str, str, bytes]]:
    """``(label, client_id, value)`` of bad messages from an enrolled ``device`` and an unenrolled ``impostor``.

    Malformed bytes, a NaN update, a wrongly shaped one, a replay, an unsigned one, and one the impostor
    signs in the device's name.
    """
    client_id = device.client_id
    zeros = {name: np.zeros_like(array) for name, array in parameters.items()}
    with_nan = dict(zeros)
    first = sorted(with_nan)[0]
    with_nan[first] = np.full_like(zeros[first], np.nan)
    wrong_shape = dict(zeros)
    wrong_shape[first] = np.zeros((*zeros[first].shape, 2), dtype=np.float32)
    update = partial(
        build_update, client_id=client_id, model_name=model_name, base_version=base_version, sample_count=1
    )
    _, nan_value = update(delta=with_nan, signer=device.sign)
    _, shape_value = update(delta=wrong_shape, signer=device.sign)
    _, replayed = update(delta=zeros, signer=device.sign)
    _, unsigned = update(delta=zeros)
    _, forged = update(delta=zeros, signer=impostor.sign)
    return [
        ("malformed bytes", client_id, b"\x00not a fedstream update"),
        ("NaN values", client_id, nan_value),
        ("wrong shape", client_id, shape_value),
        ("valid zero update", client_id, replayed),
        ("replay of that update", client_id, replayed),
        ("unsigned update", client_id, unsigned),
        ("update forged in its name", client_id, forged),
    ]
