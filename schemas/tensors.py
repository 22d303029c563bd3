"""Model parameters on the wire and in tables: safetensors bytes, and a canonical hash of them."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
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


def parameter_hash_streamed(shapes: Mapping[str, Sequence[int]], values: Iterable[npt.NDArray[np.float32]]) -> str:
    """:func:`parameter_hash` of float32 tensors never held whole: ``values`` yields them flattened in name order.

    The pieces may be of any size (a model's shards, say); the result is the hash of the assembled tensors.
    Raises ``ValueError`` when the values do not number what ``shapes`` holds.
    """
    digest = hashlib.sha256()
    pieces = iter(values)
    held = np.empty(0, dtype=np.float32)
    for name in sorted(shapes):
        shape = tuple(int(size) for size in shapes[name])
        remaining = math.prod(shape)
        for field in (name.encode(), np.dtype(np.float32).str.encode(), repr(shape).encode()):
            digest.update(len(field).to_bytes(8, "big"))
            digest.update(field)
        digest.update((4 * remaining).to_bytes(8, "big"))
        while remaining:
            if not held.size:
                piece = next(pieces, None)
                if piece is None:
                    raise ValueError(f"the values end inside tensor {name!r}")
                held = np.ascontiguousarray(piece, dtype=np.float32).reshape(-1)
                continue
            take = min(remaining, held.size)
            digest.update(held[:take].tobytes())
            held, remaining = held[take:], remaining - take
    leftover = held.size + sum(int(np.size(piece)) for piece in pieces)
    if leftover:
        raise ValueError(f"{leftover} values beyond what the shapes hold")
    return digest.hexdigest()


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of raw bytes (payload hashes)."""
    return hashlib.sha256(data).hexdigest()


def _contiguous(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    # np.ascontiguousarray turns a 0-d array into shape (1,); scalars (an optimizer's step) must stay 0-d.
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)
