"""The strategy interface: how one global version is made from the buffered updates the server chose.

A strategy first *weighs* the updates from their metadata alone (staleness, sample counts, local steps),
then *applies* the weighted deltas to the global parameters (a server-optimizer step, a mix, a sum). The
weights it records on the version are exactly what ``apply`` needs again, so an audit recomputes a version
with the same ``apply`` (:meth:`Strategy.recompute`). Strategies are stateless: the server optimizer (and with
differential privacy its clip norm and ledger) is the server's state and is passed in.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from aggregator._checks import check_aware, check_int
from aggregator.errors import (
    EmptyBufferError,
    InvalidConfigError,
    InvalidStalenessError,
    InvalidUpdateError,
    ShapeMismatchError,
    StaleUpdateError,
    ZeroWeightError,
)
from aggregator.server_optimizers import ServerOptimizer
from aggregator.shards import DeltasInMemory, DeltaStatistics, WholeModelFacts
from aggregator.staleness import StalenessPolicy
from aggregator.weights import check_same_structure
from schemas.tensors import Tensors

if TYPE_CHECKING:
    from aggregator.config import AggregationConfig

__all__ = [
    "AggregationResult",
    "PendingUpdate",
    "Strategy",
    "aggregation_weights",
    "data_shares",
    "partition_by_staleness",
    "staleness_of",
]


@dataclass(frozen=True, eq=False)
class PendingUpdate:
    """One accepted client update waiting in the buffer: ``delta = theta_local - theta_{base_version}``.

    ``client_id``: who sent it (``None``: unknown, allowed only without differential privacy, which bounds
    each client to one update per version). ``training_steps``: the local optimizer steps behind the delta as
    the client reported them (0: not reported). ``validation_*``: the client's evaluation of its base version
    on its own validation split, averaged into each version's federated metrics.
    """

    update_id: str
    delta: Tensors
    base_version: int
    sample_count: int
    received_at: datetime
    client_id: str | None = None
    training_steps: int = 0
    validation_loss: float | None = None
    validation_accuracy: float | None = None
    validation_count: int = 0

    def __post_init__(self) -> None:
        """Reject impossible fields: empty id or client, negative version or counts, naive receive time."""
        if not isinstance(self.update_id, str) or not self.update_id:
            raise InvalidUpdateError(f"update_id must be a non-empty string, got {self.update_id!r}")
        if self.client_id is not None and (not isinstance(self.client_id, str) or not self.client_id):
            raise InvalidUpdateError(
                f"client_id of update {self.update_id!r} must be a non-empty string or None, got {self.client_id!r}"
            )
        _check_update_int(self.update_id, "base_version", self.base_version)
        _check_update_int(self.update_id, "sample_count", self.sample_count)
        _check_update_int(self.update_id, "training_steps", self.training_steps)
        _check_update_int(self.update_id, "validation_count", self.validation_count)
        check_aware(f"received_at of update {self.update_id!r}", self.received_at)


@dataclass(frozen=True, eq=False)
class AggregationResult:
    """A new global version and its provenance: the updates used, their weights and stalenesses."""

    new_params: Tensors
    update_ids: tuple[str, ...]
    weights: tuple[float, ...]
    stalenesses: tuple[int, ...]
    mean_staleness: float
    max_staleness: int
    parameter_hash: str | None = None
    """Set when ``new_params`` is empty because the version is kept elsewhere (in shards): its identity."""


class Strategy(ABC):
    """How one version is made: :meth:`weights` from metadata, then :meth:`apply` to the parameters.

    Class attributes say what a strategy can be combined with, so the configuration is checked against the
    strategy rather than against a list of mode names: ``synchronous`` (intake takes only updates of the
    current version), ``accepts_robust_aggregation`` (a :class:`aggregator.robust.RobustPolicy` combiner),
    ``accepts_privacy`` (the :class:`aggregator.strategies.private.DifferentiallyPrivate` wrapper, which
    needs every weight at most ``1 / n``). ``name`` is set by :func:`aggregator.strategies.registry.register_strategy`.
    """

    name: ClassVar[str] = ""
    synchronous: ClassVar[bool] = False
    accepts_robust_aggregation: ClassVar[bool] = False
    accepts_privacy: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def from_config(cls, config: AggregationConfig) -> Strategy:
        """Build the strategy from a validated configuration (staleness weights without the intake limit)."""

    @classmethod
    def check_config(cls, config: AggregationConfig) -> None:
        """Raise ``InvalidConfigError`` for settings this strategy cannot run with (default: none)."""
        return

    def check_updates(self, updates: Sequence[PendingUpdate], current_version: int) -> None:
        """Raise for a set of updates this strategy cannot aggregate together (default: anything goes)."""
        return

    @abstractmethod
    def weights(self, updates: Sequence[PendingUpdate], current_version: int) -> list[float]:
        """One weight per update, from metadata only (never the deltas' values)."""

    def applied_weights(
        self, statistics: DeltaStatistics, weights: Sequence[float], optimizer: ServerOptimizer
    ) -> list[float]:
        """The weights to record: ``weights`` with anything decided from the deltas folded in (clipping, Krum).

        Decided from whole-delta figures only (``statistics``: norms, distances), never from the values.
        """
        return list(weights)

    @abstractmethod
    def apply(
        self,
        parameters: Tensors,
        deltas: Sequence[Tensors],
        weights: Sequence[float],
        optimizer: ServerOptimizer,
        *,
        version: int,
        facts: WholeModelFacts | None = None,
    ) -> Tensors:
        """The new parameters from the deltas and their recorded weights; ``version`` is the one being made.

        Elementwise but for what ``facts`` carries, so it runs on the whole model or on one shard of it:
        ``facts.shard`` names the shard ``parameters`` and ``deltas`` hold (``None``: the whole model), and
        ``facts.delta_norms`` the whole deltas' norms (``facts=None``: computed from ``deltas``, then whole).
        """

    def aggregate(
        self,
        parameters: Tensors,
        current_version: int,
        updates: Sequence[PendingUpdate],
        optimizer: ServerOptimizer,
    ) -> AggregationResult:
        """Make version ``current_version + 1`` from ``updates``: check, weigh, fold, apply; with provenance."""
        self.check_updates(updates, current_version)
        weights = self.weights(updates, current_version)
        check_deltas(parameters, updates)
        deltas = [update.delta for update in updates]
        statistics = DeltasInMemory(deltas)
        applied = self.applied_weights(statistics, weights, optimizer)
        facts = WholeModelFacts(statistics.norms())
        new_params = self.apply(parameters, deltas, applied, optimizer, version=current_version + 1, facts=facts)
        stalenesses = [staleness_of(update, current_version) for update in updates]
        return AggregationResult(
            new_params=new_params,
            update_ids=tuple(update.update_id for update in updates),
            weights=tuple(applied),
            stalenesses=tuple(stalenesses),
            mean_staleness=math.fsum(stalenesses) / len(stalenesses),
            max_staleness=max(stalenesses),
        )

    def recompute(
        self,
        parent: Tensors,
        deltas: Sequence[Tensors],
        weights: Sequence[float],
        optimizer: ServerOptimizer,
        *,
        version: int,
    ) -> Tensors:
        """Recompute a recorded version from its parent, deltas and recorded weights: the audit's path.

        ``optimizer`` holds the parent's state; ``version`` is the version being recomputed.
        """
        return self.apply(parent, deltas, weights, optimizer, version=version)


def data_shares(updates: Sequence[PendingUpdate], weight_by_sample_count: bool) -> list[float]:
    """Each update's share of the data, summing to one: ``n_i / sum(n)``, or equal shares.

    Raises ``ZeroWeightError`` when every sample count is 0.
    """
    data, total = _data_and_total(updates, weight_by_sample_count)
    return [share / total for share in data]


def _data_and_total(updates: Sequence[PendingUpdate], weight_by_sample_count: bool) -> tuple[list[float], float]:
    data = [float(update.sample_count) if weight_by_sample_count else 1.0 for update in updates]
    total = math.fsum(data)
    if total == 0:
        raise ZeroWeightError(
            f"all {len(updates)} updates have weight 0 (sample counts "
            f"{[update.sample_count for update in updates]}); nothing to average"
        )
    return data, total


def partition_by_staleness(
    updates: Sequence[PendingUpdate], current_version: int, staleness: StalenessPolicy
) -> tuple[list[PendingUpdate], list[PendingUpdate]]:
    """Split updates into ``(usable, too_stale)`` so the caller can reject the stale ones with a reason."""
    usable: list[PendingUpdate] = []
    too_stale: list[PendingUpdate] = []
    for update in updates:
        target = too_stale if staleness.is_too_stale(staleness_of(update, current_version)) else usable
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
    check_unique_ids(updates)
    stalenesses = [staleness_of(update, current_version) for update in updates]
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
    data, total = _data_and_total(updates, weight_by_sample_count)
    weights = [staleness.weight(s) * share / total for s, share in zip(stalenesses, data, strict=True)]
    if math.fsum(weights) == 0:
        raise ZeroWeightError(f"every staleness factor is 0 at version {current_version} (stalenesses {stalenesses})")
    return weights


def staleness_of(update: PendingUpdate, current_version: int) -> int:
    """``current_version - base_version``; ``InvalidStalenessError`` for a base version in the future."""
    check_int("current_version", current_version, minimum=0)
    if update.base_version > current_version:
        raise InvalidStalenessError(
            f"update {update.update_id!r} has base_version {update.base_version} "
            f"after the current version {current_version}"
        )
    return current_version - update.base_version


def check_unique_ids(updates: Sequence[PendingUpdate]) -> None:
    """Raise ``InvalidUpdateError`` when an update id appears twice."""
    counts = Counter(update.update_id for update in updates)
    duplicates = sorted(update_id for update_id, count in counts.items() if count > 1)
    if duplicates:
        raise InvalidUpdateError(f"update ids appear more than once in the buffer: {duplicates}")


def check_deltas(global_params: Tensors, updates: Sequence[PendingUpdate]) -> None:
    """Raise ``ShapeMismatchError`` naming the first update whose delta does not fit the global model."""
    for update in updates:
        try:
            check_same_structure(global_params, update.delta)
        except ShapeMismatchError as error:
            raise ShapeMismatchError(
                f"delta of update {update.update_id!r} does not fit the global model: {error}"
            ) from None


def without_limit(policy: StalenessPolicy) -> StalenessPolicy:
    """The policy's weights without its ``max_staleness``: the server's gate refuses at intake, never later.

    An update accepted within the limit that waited in the buffer while other versions were made is still
    aggregated (with its lower weight), so no accepted update is lost.
    """
    if policy.max_staleness is None:
        return policy
    return StalenessPolicy(
        function=policy.function,
        exponent=policy.exponent,
        hinge_a=policy.hinge_a,
        hinge_b=policy.hinge_b,
        max_staleness=None,
    )


def _check_update_int(update_id: str, name: str, value: int) -> None:
    try:
        check_int(name, value, minimum=0)
    except InvalidConfigError as error:
        raise InvalidUpdateError(f"update {update_id!r}: {error}") from None
