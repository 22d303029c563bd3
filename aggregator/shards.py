"""Shards: the fixed pieces a model is cut into, so that a version can be computed one piece at a time.

A shard is at most :data:`SHARD_VALUES` consecutive values of one tensor (flattened in C order); a model's
shards are ordered by tensor name, then position. Every step of a version is elementwise except the
reductions over a whole delta (its L2 norm, its distance to another delta), and those are defined here as a
correctly rounded sum (``math.fsum``) of per-shard partial sums, while seeded noise is drawn per shard
(:func:`aggregator.privacy.gaussian_noise`). So a version computed shard by shard, on Spark executors
(:mod:`streaming_jobs.executor_aggregation`), is bit-identical to the same version computed whole on the
driver: the decisions that need whole-model figures are made from :class:`DeltaStatistics`, which either
path can produce, and :class:`WholeModelFacts` carries them into a shard's computation.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from aggregator._checks import check_int
from aggregator.errors import EmptyBufferError, InvalidConfigError, ShapeMismatchError
from schemas.tensors import Tensors

__all__ = [
    "SHARD_VALUES",
    "DeltaStatistics",
    "DeltasInMemory",
    "Shard",
    "ShardPlan",
    "WholeModelFacts",
    "distances_from_partials",
    "flat_shards",
    "norm_from_partials",
    "pairwise_partials",
    "scaled_float32",
    "shard_bounds",
    "squared_distance",
    "squared_norm_partials",
    "squared_sum",
]

SHARD_VALUES: Final = 1 << 18
"""Values per shard (1 MiB of float32): fixed, because a norm's last bits depend on where the cuts fall."""

Float64Array = npt.NDArray[np.float64]
_Arrays = Mapping[str, npt.NDArray[np.floating]]


@dataclass(frozen=True)
class Shard:
    """Values ``[start, stop)`` of tensor ``tensor`` (flattened), its ``index``-th shard.

    ``ordinal``: position among all the model's shards; ``tensor_position``: the tensor's position among the
    model's tensor names, sorted (with ``index`` it seeds the shard's noise).
    """

    ordinal: int
    tensor: str
    tensor_position: int
    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        """Values in the shard."""
        return self.stop - self.start


def shard_bounds(size: int, shard_values: int = SHARD_VALUES) -> list[tuple[int, int]]:
    """``[start, stop)`` of each shard of a tensor of ``size`` values (one empty shard for an empty tensor)."""
    check_int("size", size, minimum=0)
    check_int("shard_values", shard_values, minimum=1)
    if size == 0:
        return [(0, 0)]
    return [(start, min(start + shard_values, size)) for start in range(0, size, shard_values)]


@dataclass(frozen=True)
class ShardPlan:
    """How a model of the given tensor shapes is cut: ``shards`` in order (see the module docstring)."""

    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    """``(name, shape)`` of every tensor, sorted by name."""
    shard_values: int = SHARD_VALUES
    shards: tuple[Shard, ...] = field(init=False)

    def __post_init__(self) -> None:
        """Check the shapes and cut them into shards."""
        names = [name for name, _ in self.shapes]
        if names != sorted(set(names)):
            raise InvalidConfigError(f"tensor names must be unique and sorted, got {names}")
        shards: list[Shard] = []
        for position, (name, shape) in enumerate(self.shapes):
            for index, (start, stop) in enumerate(shard_bounds(math.prod(shape), self.shard_values)):
                shards.append(Shard(len(shards), name, position, index, start, stop))
        object.__setattr__(self, "shards", tuple(shards))

    @classmethod
    def of(cls, tensors: _Arrays, shard_values: int = SHARD_VALUES) -> "ShardPlan":
        """The plan of a model shaped like ``tensors``."""
        return cls(tuple((name, tuple(tensors[name].shape)) for name in sorted(tensors)), shard_values)

    @property
    def total_values(self) -> int:
        """Values in the whole model."""
        return sum(math.prod(shape) for _, shape in self.shapes)

    def cut(self, tensors: _Arrays, shard: Shard) -> Tensors:
        """``{shard.tensor: its values}``: the one-tensor model a shard's computation works on (float32 copy)."""
        flat = np.asarray(tensors[shard.tensor], dtype=np.float32).reshape(-1)
        return {shard.tensor: flat[shard.start : shard.stop].copy()}

    def assemble(self, values: Mapping[int, npt.NDArray[np.floating]]) -> Tensors:
        """The whole model from every shard's values (keyed by ordinal), as float32 tensors of the plan's shapes."""
        missing = [shard.ordinal for shard in self.shards if shard.ordinal not in values]
        if missing:
            raise ShapeMismatchError(f"shards {missing[:10]} are missing ({len(missing)} of {len(self.shards)})")
        result: Tensors = {}
        by_tensor: dict[str, list[npt.NDArray[np.floating]]] = {}
        for shard in self.shards:
            piece = np.asarray(values[shard.ordinal]).reshape(-1)
            if piece.size != shard.size:
                raise ShapeMismatchError(
                    f"shard {shard.ordinal} of {shard.tensor!r} holds {piece.size} values, expected {shard.size}"
                )
            by_tensor.setdefault(shard.tensor, []).append(piece)
        for name, shape in self.shapes:
            result[name] = np.concatenate(by_tensor[name]).astype(np.float32).reshape(shape)
        return result


def squared_sum(values: npt.NDArray[np.floating]) -> float:
    """``sum(x^2)`` of one shard's values, in float64: a partial of a squared L2 norm."""
    array = np.asarray(values, dtype=np.float64)
    return float(np.sum(np.square(array)))


def squared_distance(first: npt.NDArray[np.floating], second: npt.NDArray[np.floating]) -> float:
    """``sum((a - b)^2)`` of one shard's values of two deltas, in float64: a partial of a squared distance."""
    return float(np.sum(np.square(np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64))))


def norm_from_partials(partials: Sequence[float]) -> float:
    """The L2 norm from every shard's :func:`squared_sum` (any order: ``fsum`` is exactly rounded)."""
    return math.sqrt(math.fsum(partials))


def flat_shards(tensors: _Arrays, shard_values: int = SHARD_VALUES) -> Iterator[npt.NDArray[np.floating]]:
    """Each shard's values (flat views, in plan order) of a model, without building a :class:`ShardPlan`."""
    for name in sorted(tensors):
        flat = np.asarray(tensors[name]).reshape(-1)
        for start, stop in shard_bounds(flat.size, shard_values):
            yield flat[start:stop]


def squared_norm_partials(tensors: _Arrays, shard_values: int = SHARD_VALUES) -> list[float]:
    """:func:`squared_sum` of every shard of a model, in plan order."""
    return [squared_sum(values) for values in flat_shards(tensors, shard_values)]


@dataclass(frozen=True)
class WholeModelFacts:
    """What a shard's computation must know about the whole version: the deltas' L2 norms, and which shard.

    ``shard`` is ``None`` when the parameters given are the whole model.
    """

    delta_norms: tuple[float, ...]
    shard: Shard | None = None


class DeltaStatistics(ABC):
    """Whole-delta figures a strategy decides from (clip factors, Krum's choice), however they were computed."""

    @abstractmethod
    def norms(self) -> tuple[float, ...]:
        """Each delta's L2 norm (:func:`norm_from_partials` of its shards)."""

    @abstractmethod
    def squared_distances(self, factors: Sequence[float]) -> Float64Array:
        """Squared L2 distances between the deltas, each first scaled by its factor and cast to float32."""


class DeltasInMemory(DeltaStatistics):
    """:class:`DeltaStatistics` of deltas held whole in memory (the driver's path), computed shard by shard."""

    def __init__(self, deltas: Sequence[_Arrays], shard_values: int = SHARD_VALUES) -> None:
        if not deltas:
            raise EmptyBufferError("delta statistics need at least one delta, got none")
        self.deltas = deltas
        self.shard_values = shard_values
        self._norms: tuple[float, ...] | None = None

    def norms(self) -> tuple[float, ...]:
        """Each delta's L2 norm (computed once)."""
        if self._norms is None:
            self._norms = tuple(
                norm_from_partials(squared_norm_partials(delta, self.shard_values)) for delta in self.deltas
            )
        return self._norms

    def squared_distances(self, factors: Sequence[float]) -> Float64Array:
        """Pairwise squared distances of the scaled deltas: ``fsum`` over shards of :func:`squared_distance`."""
        if len(factors) != len(self.deltas):
            raise InvalidConfigError(f"got {len(self.deltas)} deltas but {len(factors)} factors")
        shards = [
            [scaled_float32(values, factor) for values in flat_shards(delta, self.shard_values)]
            for delta, factor in zip(self.deltas, factors, strict=True)
        ]
        return distances_from_partials(
            [pairwise_partials([update[position] for update in shards]) for position in range(len(shards[0]))]
        )


def scaled_float32(values: npt.NDArray[np.floating], factor: float) -> npt.NDArray[np.float32]:
    """``values * factor`` in float64, cast to float32 (how a clipped delta is held); unchanged for factor 1."""
    if factor == 1.0:
        return np.asarray(values, dtype=np.float32)
    return (np.asarray(values, dtype=np.float64) * factor).astype(np.float32)


def pairwise_partials(values: Sequence[npt.NDArray[np.floating]]) -> Float64Array:
    """One shard's :func:`squared_distance` between every pair of deltas (a symmetric matrix, zero diagonal)."""
    count = len(values)
    partial = np.zeros((count, count), dtype=np.float64)
    for first in range(count):
        for second in range(first + 1, count):
            partial[first, second] = partial[second, first] = squared_distance(values[first], values[second])
    return partial


def distances_from_partials(partials: Sequence[Float64Array]) -> Float64Array:
    """Squared distances from every shard's :func:`pairwise_partials` (each entry exactly rounded with ``fsum``)."""
    if not partials:
        raise EmptyBufferError("no shards to sum distances over")
    stacked = np.stack([np.asarray(partial, dtype=np.float64) for partial in partials])
    count = stacked.shape[1]
    result = np.zeros((count, count), dtype=np.float64)
    for first in range(count):
        for second in range(first + 1, count):
            result[first, second] = result[second, first] = math.fsum(stacked[:, first, second].tolist())
    return result
