"""Aggregation strategies: staleness-weighted FedBuff, FedAsync (one update at a time) and synchronous FedAvg.

Each is a plain function from the global parameters and pending updates to an ``AggregationResult`` that
records exactly which updates made the new version and with which weights.
"""

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from aggregator._checks import check_aware, check_fraction, check_int
from aggregator.config import AggregationConfig
from aggregator.errors import (
    EmptyBufferError,
    InvalidConfigError,
    InvalidStalenessError,
    InvalidUpdateError,
    ShapeMismatchError,
    StaleUpdateError,
    ZeroWeightError,
)
from aggregator.privacy import PrivateServerOptimizer
from aggregator.robust import RobustPolicy, clip_factor
from aggregator.server_optimizers import ServerOptimizer
from aggregator.staleness import StalenessPolicy
from aggregator.weights import ModelWeights, add, check_same_structure, l2_norm, weighted_sum

__all__ = [
    "AggregationConfig",
    "AggregationResult",
    "PendingUpdate",
    "aggregation_weights",
    "fedasync_step",
    "fedavg_step",
    "fedbuff_step",
    "partition_by_staleness",
    "private_server_step",
]


@dataclass(frozen=True, eq=False)
class PendingUpdate:
    """One accepted client update waiting in the buffer: ``delta = theta_local - theta_{base_version}``.

    ``client_id``: who sent it (``None``: unknown, allowed only without differential privacy, which bounds
    each client to one update per version).
    """

    update_id: str
    delta: ModelWeights
    base_version: int
    sample_count: int
    received_at: datetime
    client_id: str | None = None

    def __post_init__(self) -> None:
        """Reject impossible fields: empty id or client, negative version or count, naive receive time."""
        if not isinstance(self.update_id, str) or not self.update_id:
            raise InvalidUpdateError(f"update_id must be a non-empty string, got {self.update_id!r}")
        if self.client_id is not None and (not isinstance(self.client_id, str) or not self.client_id):
            raise InvalidUpdateError(
                f"client_id of update {self.update_id!r} must be a non-empty string or None, got {self.client_id!r}"
            )
        _check_update_int(self.update_id, "base_version", self.base_version)
        _check_update_int(self.update_id, "sample_count", self.sample_count)
        check_aware(f"received_at of update {self.update_id!r}", self.received_at)


@dataclass(frozen=True, eq=False)
class AggregationResult:
    """A new global version and its provenance: the updates used, their weights and stalenesses."""

    new_params: ModelWeights
    update_ids: tuple[str, ...]
    weights: tuple[float, ...]
    stalenesses: tuple[int, ...]
    mean_staleness: float
    max_staleness: int


def partition_by_staleness(
    updates: Sequence[PendingUpdate], current_version: int, staleness: StalenessPolicy
) -> tuple[list[PendingUpdate], list[PendingUpdate]]:
    """Split updates into ``(usable, too_stale)`` so the caller can reject the stale ones with a reason."""
    usable: list[PendingUpdate] = []
    too_stale: list[PendingUpdate] = []
    for update in updates:
        target = too_stale if staleness.is_too_stale(_staleness_of(update, current_version)) else usable
        target.append(update)
    return usable, too_stale


def aggregation_weights(
    updates: Sequence[PendingUpdate],
    current_version: int,
    staleness: StalenessPolicy,
    weight_by_sample_count: bool,
) -> list[float]:
    """Return one weight per update: its data share times its staleness factor, ``f(s) * n / sum(n)``.

    The data shares (sample counts if enabled, else equal) sum to one; the staleness factor then scales
    each update, as in FedBuff, so a buffer of stale updates moves the model less than a fresh one. With
    staleness 0 everywhere the weights sum to one and FedBuff reduces to FedAvg.

    Raises ``EmptyBufferError`` for no updates, ``InvalidStalenessError`` for a base version after
    ``current_version``, ``StaleUpdateError`` beyond ``max_staleness``, ``ZeroWeightError`` if all
    weights are 0.
    """
    if not updates:
        raise EmptyBufferError(f"no updates to aggregate at version {current_version}")
    _check_unique_ids(updates)
    stalenesses = [_staleness_of(update, current_version) for update in updates]
    too_stale = [
        f"{update.update_id!r} (staleness {s})"
        for update, s in zip(updates, stalenesses, strict=True)
        if staleness.is_too_stale(s)
    ]
    if too_stale:
        raise StaleUpdateError(
            f"updates beyond max_staleness {staleness.max_staleness} at version {current_version}: "
            f"{', '.join(too_stale)}; reject them first (see partition_by_staleness)"
        )
    data = [float(update.sample_count) if weight_by_sample_count else 1.0 for update in updates]
    total = math.fsum(data)
    if total == 0:
        raise ZeroWeightError(
            f"all {len(updates)} updates have weight 0 (sample counts "
            f"{[update.sample_count for update in updates]}); nothing to average"
        )
    weights = [staleness.weight(s) * share / total for s, share in zip(stalenesses, data, strict=True)]
    if math.fsum(weights) == 0:
        raise ZeroWeightError(f"every staleness factor is 0 at version {current_version} (stalenesses {stalenesses})")
    return weights


def fedbuff_step(
    global_params: ModelWeights,
    current_version: int,
    updates: Sequence[PendingUpdate],
    staleness: StalenessPolicy,
    weight_by_sample_count: bool,
    optimizer: ServerOptimizer,
    *,
    robust: RobustPolicy | None = None,
) -> AggregationResult:
    """FedBuff: average the buffered deltas with staleness weights, then take one server-optimizer step.

    ``robust`` (default: plain weighted average) applies a norm bound, trimmed mean, median or (multi-)Krum
    to the deltas (see :mod:`aggregator.robust`). A :class:`PrivateServerOptimizer` makes the step
    differentially private: deltas clipped to its clip norm (folded into the recorded weights), Gaussian
    noise seeded by ``current_version + 1``; it refuses a buffer with an update of unknown client or two of
    one client (``InvalidUpdateError``; pick the buffer with :meth:`aggregator.BufferPolicy.next_version`).
    The recorded weights are those :func:`aggregator.robust.combine_deltas` and :func:`private_server_step`
    need to reproduce the step exactly.
    """
    if isinstance(optimizer, PrivateServerOptimizer):
        _check_one_per_client(updates)
    weights = aggregation_weights(updates, current_version, staleness, weight_by_sample_count)
    _check_deltas(global_params, updates)
    policy = robust or RobustPolicy()
    deltas = [update.delta for update in updates]
    stalenesses = [_staleness_of(update, current_version) for update in updates]
    if isinstance(optimizer, PrivateServerOptimizer):
        clip_norm = optimizer.clip_norm
        bound = clip_norm if policy.max_update_norm is None else min(clip_norm, policy.max_update_norm)
        norms = [l2_norm(delta) for delta in deltas]
        applied = [weight * clip_factor(norm, bound) for weight, norm in zip(weights, norms, strict=True)]
        new_params = private_server_step(global_params, deltas, applied, optimizer, version=current_version + 1)
        return _result(new_params, updates, applied, stalenesses)
    applied = weights if policy.is_default else policy.applied_weights(deltas, weights)
    aggregated_delta = policy.combine(deltas, applied)
    new_params = optimizer.step(global_params, aggregated_delta)
    return _result(new_params, updates, applied, stalenesses)


def private_server_step(
    global_params: ModelWeights,
    deltas: Sequence[ModelWeights],
    applied_weights: Sequence[float],
    optimizer: PrivateServerOptimizer,
    *,
    version: int,
) -> ModelWeights:
    """The DP server step from the recorded (clip-folded) weights: sum, seeded noise, step, adapt the clip.

    Shared by :func:`fedbuff_step` and audits, so a recomputation draws the same noise and the same sum.
    """
    clip_norm = optimizer.clip_norm
    unclipped = sum(1 for delta in deltas if l2_norm(delta) <= clip_norm)
    clipped_sum = weighted_sum(list(deltas), list(applied_weights))
    return optimizer.private_step(
        global_params, clipped_sum, update_count=len(deltas), version=version, unclipped_count=unclipped
    )


def fedasync_step(
    global_params: ModelWeights,
    current_version: int,
    update: PendingUpdate,
    mixing: float,
    staleness: StalenessPolicy,
) -> AggregationResult:
    """FedAsync (K = 1): ``theta_new = theta + mixing * f(s) * delta``; reported weight ``mixing * f(s)``."""
    check_fraction("mixing", mixing)
    s = _staleness_of(update, current_version)
    if staleness.is_too_stale(s):
        raise StaleUpdateError(
            f"update {update.update_id!r} has staleness {s} > max_staleness {staleness.max_staleness}"
        )
    _check_deltas(global_params, [update])
    weight = mixing * staleness.weight(s)
    new_params = weighted_sum([global_params, update.delta], [1.0, weight])
    return _result(new_params, [update], [weight], [s])


def fedavg_step(
    global_params: ModelWeights, updates: Sequence[PendingUpdate], weight_by_sample_count: bool
) -> AggregationResult:
    """Average deltas that share one base version and add them: synchronous FedAvg, the baseline."""
    if not updates:
        raise EmptyBufferError("no updates to average in this FedAvg round")
    _check_unique_ids(updates)
    base_versions = sorted({update.base_version for update in updates})
    if len(base_versions) != 1:
        raise InvalidStalenessError(
            f"synchronous FedAvg needs one shared base_version, got base versions {base_versions}"
        )
    raw = [float(update.sample_count) if weight_by_sample_count else 1.0 for update in updates]
    total = math.fsum(raw)
    if total == 0:
        raise ZeroWeightError(f"all {len(updates)} updates report sample_count 0; nothing to average")
    weights = [weight / total for weight in raw]
    _check_deltas(global_params, updates)
    new_params = add(global_params, weighted_sum([update.delta for update in updates], weights))
    return _result(new_params, updates, weights, [0] * len(updates))


def _staleness_of(update: PendingUpdate, current_version: int) -> int:
    check_int("current_version", current_version, minimum=0)
    if update.base_version > current_version:
        raise InvalidStalenessError(
            f"update {update.update_id!r} has base_version {update.base_version} "
            f"after the current version {current_version}"
        )
    return current_version - update.base_version


def _check_unique_ids(updates: Sequence[PendingUpdate]) -> None:
    counts = Counter(update.update_id for update in updates)
    duplicates = sorted(update_id for update_id, count in counts.items() if count > 1)
    if duplicates:
        raise InvalidUpdateError(f"update ids appear more than once in the buffer: {duplicates}")


def _check_one_per_client(updates: Sequence[PendingUpdate]) -> None:
    unknown = [update.update_id for update in updates if update.client_id is None]
    if unknown:
        raise InvalidUpdateError(
            f"differential privacy bounds each client to one update per version, but updates {unknown} name no client"
        )
    counts = Counter(update.client_id for update in updates)
    repeated = sorted(str(client_id) for client_id, count in counts.items() if count > 1)
    if repeated:
        raise InvalidUpdateError(
            f"differential privacy allows one update per client per version; clients {repeated} have more "
            "(keep the later ones pending: aggregator.BufferPolicy.next_version)"
        )


def _check_deltas(global_params: ModelWeights, updates: Sequence[PendingUpdate]) -> None:
    for update in updates:
        try:
            check_same_structure(global_params, update.delta)
        except ShapeMismatchError as error:
            raise ShapeMismatchError(
                f"delta of update {update.update_id!r} does not fit the global model: {error}"
            ) from None


def _check_update_int(update_id: str, name: str, value: int) -> None:
    try:
        check_int(name, value, minimum=0)
    except InvalidConfigError as error:
        raise InvalidUpdateError(f"update {update_id!r}: {error}") from None


def _result(
    new_params: ModelWeights,
    updates: Sequence[PendingUpdate],
    weights: Sequence[float],
    stalenesses: Sequence[int],
) -> AggregationResult:
    return AggregationResult(
        new_params=new_params,
        update_ids=tuple(update.update_id for update in updates),
        weights=tuple(weights),
        stalenesses=tuple(stalenesses),
        mean_staleness=math.fsum(stalenesses) / len(stalenesses),
        max_staleness=max(stalenesses),
    )
