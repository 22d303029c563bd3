"""A frozen copy of the aggregation code before the server core (commit ae0715d), kept as a reference.

The equivalence tests drive :class:`aggregator.AsyncServer` and this code over the same schedule and
require the same versions bit for bit, so ``model_versions`` rows written before the change still verify
and the job makes the versions it made before. Do not change it to follow the new code.
"""

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence

from aggregator import (
    AggregationConfig,
    DeltasInMemory,
    PendingUpdate,
    PrivateServerOptimizer,
    RobustPolicy,
    ServerOptimizer,
    StalenessPolicy,
)
from aggregator.errors import EmptyBufferError, InvalidStalenessError, InvalidUpdateError, ZeroWeightError
from aggregator.robust import clip_factor
from aggregator.weights import add, l2_norm, weighted_sum
from schemas.tensors import Tensors

Step = tuple[Tensors, tuple[float, ...], tuple[int, ...]]
"""New parameters, recorded weights, stalenesses."""


def aggregate(
    parameters: Tensors,
    version: int,
    updates: Sequence[PendingUpdate],
    config: AggregationConfig,
    optimizer: ServerOptimizer,
) -> Step:
    pending = list(updates)
    staleness = dataclasses.replace(config.staleness, max_staleness=None)
    if config.strategy == "fedasync":
        return fedasync_step(parameters, version, pending[0], config.mixing, staleness)
    if config.strategy == "fedavg":
        return fedavg_step(parameters, pending, config.weight_by_sample_count)
    return fedbuff_step(
        parameters, version, pending, staleness, config.weight_by_sample_count, optimizer, config.robust
    )


def recompute_parameters(
    parent: Tensors,
    deltas: Sequence[Tensors],
    weights: Sequence[float],
    config: AggregationConfig,
    optimizer: ServerOptimizer,
    version: int,
) -> Tensors:
    if config.strategy == "fedasync":
        return weighted_sum([parent, deltas[0]], [1.0, weights[0]])
    if config.strategy == "fedavg":
        return add(parent, weighted_sum(list(deltas), list(weights)))
    if isinstance(optimizer, PrivateServerOptimizer):
        return private_server_step(parent, deltas, weights, optimizer, version=version)
    return optimizer.step(parent, config.robust.combine(deltas, weights))


def aggregation_weights(
    updates: Sequence[PendingUpdate], current_version: int, staleness: StalenessPolicy, by_count: bool
) -> list[float]:
    if not updates:
        raise EmptyBufferError("no updates")
    stalenesses = [_staleness_of(update, current_version) for update in updates]
    data = [float(update.sample_count) if by_count else 1.0 for update in updates]
    total = math.fsum(data)
    if total == 0:
        raise ZeroWeightError("all weights 0")
    return [staleness.weight(s) * share / total for s, share in zip(stalenesses, data, strict=True)]


def fedbuff_step(
    global_params: Tensors,
    current_version: int,
    updates: Sequence[PendingUpdate],
    staleness: StalenessPolicy,
    by_count: bool,
    optimizer: ServerOptimizer,
    policy: RobustPolicy,
) -> Step:
    if isinstance(optimizer, PrivateServerOptimizer):
        _check_one_per_client(updates)
    weights = aggregation_weights(updates, current_version, staleness, by_count)
    deltas = [update.delta for update in updates]
    stalenesses = tuple(_staleness_of(update, current_version) for update in updates)
    if isinstance(optimizer, PrivateServerOptimizer):
        clip_norm = optimizer.clip_norm
        bound = clip_norm if policy.max_update_norm is None else min(clip_norm, policy.max_update_norm)
        norms = [l2_norm(delta) for delta in deltas]
        applied = [weight * clip_factor(norm, bound) for weight, norm in zip(weights, norms, strict=True)]
        new_params = private_server_step(global_params, deltas, applied, optimizer, version=current_version + 1)
        return new_params, tuple(applied), stalenesses
    applied = weights if policy.is_default else policy.applied_weights(DeltasInMemory(deltas), weights)
    new_params = optimizer.step(global_params, policy.combine(deltas, applied))
    return new_params, tuple(applied), stalenesses


def private_server_step(
    global_params: Tensors,
    deltas: Sequence[Tensors],
    applied_weights: Sequence[float],
    optimizer: PrivateServerOptimizer,
    *,
    version: int,
) -> Tensors:
    clip_norm = optimizer.clip_norm
    unclipped = sum(1 for delta in deltas if l2_norm(delta) <= clip_norm)
    clipped_sum = weighted_sum(list(deltas), list(applied_weights))
    return optimizer.private_step(
        global_params, clipped_sum, update_count=len(deltas), version=version, unclipped_count=unclipped
    )


def fedasync_step(
    global_params: Tensors, current_version: int, update: PendingUpdate, mixing: float, staleness: StalenessPolicy
) -> Step:
    s = _staleness_of(update, current_version)
    weight = mixing * staleness.weight(s)
    return weighted_sum([global_params, update.delta], [1.0, weight]), (weight,), (s,)


def fedavg_step(global_params: Tensors, updates: Sequence[PendingUpdate], by_count: bool) -> Step:
    if len({update.base_version for update in updates}) != 1:
        raise InvalidStalenessError("one shared base_version needed")
    raw = [float(update.sample_count) if by_count else 1.0 for update in updates]
    total = math.fsum(raw)
    weights = [weight / total for weight in raw]
    new_params = add(global_params, weighted_sum([update.delta for update in updates], weights))
    return new_params, tuple(weights), (0,) * len(updates)


def _staleness_of(update: PendingUpdate, current_version: int) -> int:
    if update.base_version > current_version:
        raise InvalidStalenessError("future base version")
    return current_version - update.base_version


def _check_one_per_client(updates: Sequence[PendingUpdate]) -> None:
    counts = Counter(update.client_id for update in updates)
    if None in counts or any(count > 1 for count in counts.values()):
        raise InvalidUpdateError("one update per named client")
