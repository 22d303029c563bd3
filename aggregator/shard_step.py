"""One version computed shard by shard: what the driver decides from statistics, what each shard computes.

The driver of a shard-wise version never holds a tensor. It decides the applied weights from
:class:`ShardStatistics` (each delta's per-shard squared sums, and on demand per-shard distances), advances
the optimizer's scalar state (step count, DP clip norm and ledger) with :func:`next_scalar_state`, and each
shard's new values and optimizer slots come from :func:`compute_shard` wherever that shard lives. Both run
the configured strategy's own ``apply``, so the result is bit-identical to :meth:`aggregator.Strategy.aggregate`
on the whole model (``tests/unit/test_aggregator_shards.py``).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from aggregator.config import AggregationConfig
from aggregator.errors import InvalidConfigError, InvalidStateError
from aggregator.server_optimizers import ServerOptimizer
from aggregator.shards import (
    DeltaStatistics,
    Float64Array,
    Shard,
    WholeModelFacts,
    distances_from_partials,
    norm_from_partials,
)
from aggregator.strategies import make_strategy

__all__ = ["ShardStatistics", "compute_shard", "next_scalar_state", "shard_state", "split_state"]

State = Mapping[str, npt.NDArray[Any]]
StateDict = dict[str, npt.NDArray[Any]]


class ShardStatistics(DeltaStatistics):
    """:class:`DeltaStatistics` from per-shard partials computed where the shards are.

    ``squared_sums[i]``: delta ``i``'s :func:`aggregator.shards.squared_sum` of every shard. ``distance_partials``:
    given each delta's scale factor, every shard's :func:`aggregator.shards.pairwise_partials` (called only for Krum).
    """

    def __init__(
        self,
        squared_sums: Sequence[Sequence[float]],
        distance_partials: Callable[[Sequence[float]], Sequence[Float64Array]] | None = None,
    ) -> None:
        self._norms = tuple(norm_from_partials(partials) for partials in squared_sums)
        self._distance_partials = distance_partials

    def norms(self) -> tuple[float, ...]:
        """Each delta's L2 norm."""
        return self._norms

    def squared_distances(self, factors: Sequence[float]) -> Float64Array:
        """Pairwise squared distances of the scaled deltas, summed exactly over the shards' partials."""
        if self._distance_partials is None:
            raise InvalidConfigError("these statistics carry no distances; Krum needs distance_partials")
        return distances_from_partials(self._distance_partials(factors))


def split_state(
    state: State, optimizer: ServerOptimizer
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, dict[str, npt.NDArray[Any]]]]:
    """``(scalars, slots)`` of an optimizer state: ``slots[slot][parameter]`` are per-parameter arrays."""
    scalars: StateDict = {}
    slots: dict[str, StateDict] = {}
    for key, value in state.items():
        slot, separator, parameter = key.partition("/")
        if separator and slot in optimizer.slot_names:
            slots.setdefault(slot, {})[parameter] = value
        else:
            scalars[key] = value
    return scalars, slots


def shard_state(
    scalars: State, slot_values: Mapping[str, npt.NDArray[Any]], shard: Shard
) -> dict[str, npt.NDArray[Any]]:
    """The optimizer state one shard's computation loads: the scalars, and each slot's values of the shard."""
    state = dict(scalars)
    for slot, values in slot_values.items():
        flat = np.asarray(values).reshape(-1)
        if flat.size != shard.size:
            raise InvalidStateError(
                f"slot {slot!r} of shard {shard.ordinal} holds {flat.size} values, expected {shard.size}"
            )
        state[f"{slot}/{shard.tensor}"] = flat
    return state


def compute_shard(
    config: AggregationConfig,
    shard: Shard,
    parameters: npt.NDArray[np.floating],
    deltas: Sequence[npt.NDArray[np.floating]],
    weights: Sequence[float],
    state: State,
    *,
    version: int,
    delta_norms: Sequence[float],
) -> tuple[npt.NDArray[np.float32], dict[str, npt.NDArray[np.float32]]]:
    """One shard of version ``version``: its new values and its optimizer slots (by slot name).

    ``parameters`` and ``deltas``: the parent's and each update's values of the shard; ``weights``: the
    applied weights; ``state``: :func:`shard_state` of the parent; ``delta_norms``: the whole deltas' norms.
    """
    strategy = make_strategy(config)
    optimizer = config.make_optimizer()
    if state:
        optimizer.load_state_dict(state)
    name = shard.tensor
    new = strategy.apply(
        {name: np.asarray(parameters, dtype=np.float32)},
        [{name: np.asarray(delta, dtype=np.float32)} for delta in deltas],
        weights,
        optimizer,
        version=version,
        facts=WholeModelFacts(tuple(delta_norms), shard),
    )
    _, slots = split_state(optimizer.state_dict(), optimizer)
    return new[name], {slot: values[name] for slot, values in slots.items()}


def next_scalar_state(
    config: AggregationConfig,
    scalars: State,
    weights: Sequence[float],
    *,
    version: int,
    delta_norms: Sequence[float],
) -> StateDict:
    """The optimizer's scalar state after version ``version`` (step count, DP clip norm and ledger).

    The strategy's own ``apply`` over a model with no tensors: every scalar moves as in a whole step.
    """
    optimizer = config.make_optimizer()
    if scalars:
        optimizer.load_state_dict(scalars)
    facts = WholeModelFacts(tuple(delta_norms))
    make_strategy(config).apply({}, [{} for _ in weights], weights, optimizer, version=version, facts=facts)
    scalars_after, _ = split_state(optimizer.state_dict(), optimizer)
    return scalars_after
