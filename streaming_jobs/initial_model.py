"""Version 0: the model file an operator gives the job once, checked before anything is written.

The file is safetensors (never pickle): one tensor per parameter, named as the clients' model names them
(``producers.models.model_weights`` of the torch module: its ``state_dict`` names), every tensor float32
and finite. Clients train from it and send float32 deltas of exactly these names and shapes, so a file
that breaks any of this would make every update fail (a float64 file: every update ``dtype_mismatch``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.chunks import chunk_elements_for
from schemas.messages import TENSOR_NAME_PATTERN, Encoding
from schemas.tensors import Tensors, decode_tensors
from streaming_jobs.intake_limits import largest_update_bytes

UPDATE_HEADER_ROOM = 2048
"""Bytes of an update's JSON header without its layout: its fields are bounded (ids, numbers, a timestamp)."""


class InvalidInitialModelError(ValueError):
    """The initial model file cannot be version 0; the message names the file and what is wrong."""


def read_initial_model(path: Path, *, max_message_bytes: int) -> Tensors:
    """The parameters of version 0 in ``path``, or ``InvalidInitialModelError`` naming the first problem.

    ``max_message_bytes``: Kafka's message limit. An update larger than one message travels in chunks
    (``schemas.chunks``): the model must fit ``MAX_CHUNKS`` of them, and its tensor names a chunk layout.
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
    if largest_update_bytes(parameters) > max_message_bytes:
        _check_chunkable(path, parameters, max_message_bytes)
    return parameters


def _check_chunkable(path: Path, parameters: Tensors, max_message_bytes: int) -> None:
    """Raise unless updates of ``parameters`` can travel as chunks of ``max_message_bytes``."""
    bad_names = sorted(name for name in parameters if not re.fullmatch(TENSOR_NAME_PATTERN, name))
    if bad_names:
        raise InvalidInitialModelError(
            f"initial model {path}: its updates travel in chunks, whose layout names tensors with letters, digits "
            f"and '_.:/-' only; rename {bad_names[:5]}"
        )
    try:
        chunk_elements_for(parameters, Encoding.FLOAT32, max_message_bytes, header_bytes=UPDATE_HEADER_ROOM)
    except ValueError as error:
        raise InvalidInitialModelError(
            f"initial model {path}: an update of this model does not fit Kafka's max_message_bytes "
            f"({max_message_bytes}) even in chunks: {error}"
        ) from None


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
