"""Arithmetic over model weights: dicts of float32 arrays keyed by parameter name.

Every helper computes in float64 and returns fresh float32 arrays, so results do not depend on the
dtype of the inputs and never alias them. Key order follows the first argument.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from aggregator.errors import EmptyBufferError, InvalidConfigError, ShapeMismatchError
from aggregator.shards import norm_from_partials, squared_norm_partials
from schemas.tensors import Tensors

WeightsLike = Mapping[str, npt.NDArray[np.floating]]
"""Read-only input accepted by the helpers: any floating dtype, any mapping."""


def check_same_structure(a: WeightsLike, b: WeightsLike) -> None:
    """Raise ``ShapeMismatchError`` unless ``a`` and ``b`` have the same keys and per-key shapes."""
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    if only_a or only_b:
        raise ShapeMismatchError(f"parameter names differ: only in first {only_a}, only in second {only_b}")
    for key, array in a.items():
        if array.shape != b[key].shape:
            raise ShapeMismatchError(f"parameter {key!r} has shape {array.shape} in first and {b[key].shape} in second")


def add(a: WeightsLike, b: WeightsLike) -> Tensors:
    """Return ``a + b`` elementwise."""
    check_same_structure(a, b)
    return {key: (_as_float64(a[key]) + _as_float64(b[key])).astype(np.float32) for key in a}


def subtract(a: WeightsLike, b: WeightsLike) -> Tensors:
    """Return ``a - b`` elementwise (e.g. a client's delta: local minus global)."""
    check_same_structure(a, b)
    return {key: (_as_float64(a[key]) - _as_float64(b[key])).astype(np.float32) for key in a}


def scale(weights: WeightsLike, factor: float) -> Tensors:
    """Return ``factor * weights``."""
    if not math.isfinite(factor):
        raise InvalidConfigError(f"scale factor must be finite, got {factor!r}")
    return {key: (_as_float64(array) * factor).astype(np.float32) for key, array in weights.items()}


def weighted_sum(weights_list: Sequence[WeightsLike], coefficients: Sequence[float]) -> Tensors:
    """Return ``sum_i coefficients[i] * weights_list[i]``, accumulated in float64 in the given order."""
    if not weights_list:
        raise EmptyBufferError("weighted_sum needs at least one set of weights, got an empty list")
    if len(weights_list) != len(coefficients):
        raise InvalidConfigError(
            f"weighted_sum got {len(weights_list)} sets of weights but {len(coefficients)} coefficients"
        )
    for index, coefficient in enumerate(coefficients):
        if not math.isfinite(coefficient):
            raise InvalidConfigError(f"coefficient {index} must be finite, got {coefficient!r}")
    first = weights_list[0]
    for other in weights_list[1:]:
        check_same_structure(first, other)
    result: Tensors = {}
    for key, array in first.items():
        total = np.zeros(array.shape, dtype=np.float64)
        for weights, coefficient in zip(weights_list, coefficients, strict=True):
            total += _as_float64(weights[key]) * coefficient
        result[key] = total.astype(np.float32)
    return result


def l2_norm(weights: WeightsLike) -> float:
    """Return the L2 norm of all parameters taken together as one flat vector (summed shard by shard).

    Exactly what a shard-wise computation gets (see :mod:`aggregator.shards`).
    """
    return norm_from_partials(squared_norm_partials(weights))


def parameter_count(weights: WeightsLike) -> int:
    """Return the total number of scalar parameters."""
    return sum(int(array.size) for array in weights.values())


def zeros_like(weights: WeightsLike) -> Tensors:
    """Return float32 zeros with the same keys and shapes as ``weights``."""
    return {key: np.zeros(array.shape, dtype=np.float32) for key, array in weights.items()}


def _as_float64(array: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    return np.asarray(array, dtype=np.float64)
