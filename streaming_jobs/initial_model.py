"""Version 0: the model file an operator gives the job once, checked before anything is written.

The file is safetensors (never pickle): one tensor per parameter, named as the clients' model names them
(``producers.models.model_weights`` of the torch module: its ``state_dict`` names), every tensor float32
and finite. Clients train from it and send float32 deltas of exactly these names and shapes, so a file
that breaks any of this would make every update fail (a float64 file: every update ``dtype_mismatch``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.tensors import Tensors, decode_tensors
from streaming_jobs.intake_limits import largest_update_bytes


class InvalidInitialModelError(ValueError):
    """The initial model file cannot be version 0; the message names the file and what is wrong."""


def read_initial_model(path: Path, *, max_message_bytes: int) -> Tensors:
    """The parameters of version 0 in ``path``, or ``InvalidInitialModelError`` naming the first problem.

    ``max_message_bytes``: Kafka's message limit, which the largest update of this model must fit.
    """
    try:
        payload = path.read_bytes()
    except OSError as error:
        raise InvalidInitialModelError(f"initial model {path}: cannot be read ({error.strerror or error})") from None
    try:
        parameters = decode_tensors(payload)
    except ValueError as error:
        raise InvalidInitialModelError(f"initial model {path} is not a safetensors file: {error}") from None
    if not parameters:
        raise InvalidInitialModelError(f"initial model {path} holds no tensors")
    for name in sorted(parameters):
        _check_tensor(path, name, parameters[name])
    needed = largest_update_bytes(parameters)
    if needed > max_message_bytes:
        raise InvalidInitialModelError(
            f"initial model {path}: an update of this model takes {needed} bytes, more than Kafka's "
            f"max_message_bytes ({max_message_bytes}); raise the topic's and the clients' limits or use a smaller model"
        )
    return parameters


def _check_tensor(path: Path, name: str, tensor: npt.NDArray[Any]) -> None:
    if tensor.dtype != np.float32:
        raise InvalidInitialModelError(
            f"initial model {path}: tensor {name!r} is {tensor.dtype}, and every tensor must be float32 "
            "(clients send float32 deltas); save the model after model.float() or array.astype(numpy.float32)"
        )
    finite = np.isfinite(tensor)
    if not finite.all():
        bad = int(tensor.size - np.count_nonzero(finite))
        raise InvalidInitialModelError(f"initial model {path}: tensor {name!r} has {bad} NaN or infinite values")
