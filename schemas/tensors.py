"""Model parameters on the wire and in tables: safetensors bytes, and a canonical hash of them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load as _load_safetensors
from safetensors.numpy import save as _save_safetensors

Tensors = dict[str, npt.NDArray[np.float32]]
"""Named float32 arrays: a model's parameters, or an update's delta."""


def encode_tensors(tensors: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """Serialise named arrays as safetensors (never pickle)."""
    return _save_safetensors({name: _contiguous(array) for name, array in tensors.items()})


def decode_tensors(payload: bytes) -> Tensors:
    """Parse safetensors bytes; raises ``ValueError`` (from safetensors) on malformed input."""
    try:
        return dict(_load_safetensors(payload))
    except Exception as error:  # safetensors raises its own SafetensorError, not a ValueError subclass
        raise ValueError(f"not a safetensors payload: {error}") from error


def parameter_hash(tensors: Mapping[str, npt.NDArray[np.generic]]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes in name order: the identity of a set of parameters.

    Every field is length-prefixed, so no choice of names can make two different sets hash alike.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = _contiguous(tensors[name])
        for field in (name.encode(), array.dtype.str.encode(), repr(array.shape).encode(), array.tobytes()):
            digest.update(len(field).to_bytes(8, "big"))
            digest.update(field)
    return digest.hexdigest()


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of raw bytes (payload hashes)."""
    return hashlib.sha256(data).hexdigest()


def _contiguous(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    # np.ascontiguousarray turns a 0-d array into shape (1,); scalars (an optimizer's step) must stay 0-d.
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)
