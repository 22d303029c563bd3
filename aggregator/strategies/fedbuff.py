"""FedBuff (Nguyen et al. 2022): a buffer of staleness-weighted deltas, then one server-optimizer step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aggregator.privacy import PrivateServerOptimizer
from aggregator.robust import RobustPolicy
from aggregator.server_optimizers import ServerOptimizer
from aggregator.shards import DeltaStatistics, WholeModelFacts
from aggregator.staleness import StalenessPolicy
from aggregator.strategies.base import (
    AggregationResult,
    PendingUpdate,
    Strategy,
    aggregation_weights,
    without_limit,
)
from aggregator.strategies.private import DifferentiallyPrivate
from aggregator.strategies.registry import register_strategy
from schemas.tensors import Tensors

if TYPE_CHECKING:
    from aggregator.config import AggregationConfig

__all__ = ["FedBuff", "fedbuff_step"]


@register_strategy("fedbuff")
class FedBuff(Strategy):
    """Weights ``f(s) * n_i / sum(n)``; the combined delta (plain or robust) is the server optimizer's step.

    ``combiner`` (default: plain weighted sum) applies a norm bound, trimmed mean, median or (multi-)Krum to
    the deltas (see :mod:`aggregator.robust`); its recorded weights reproduce the step exactly.
    """

    accepts_robust_aggregation = True
    accepts_privacy = True

    def __init__(
        self, staleness: StalenessPolicy, weight_by_sample_count: bool, combiner: RobustPolicy | None = None
    ) -> None:
        self.staleness = staleness
        self.weight_by_sample_count = weight_by_sample_count
        self.combiner = combiner or RobustPolicy()

    @classmethod
    def from_config(cls, config: AggregationConfig) -> FedBuff:
        """Staleness weights without the intake limit, the configured data weighting and robust combiner."""
        return cls(without_limit(config.staleness), config.weight_by_sample_count, config.robust)

    def weights(self, updates: Sequence[PendingUpdate], current_version: int) -> list[float]:
        """``f(s_i) * n_i / sum(n)`` (see :func:`aggregator.strategies.base.aggregation_weights`)."""
        return aggregation_weights(updates, current_version, self.staleness, self.weight_by_sample_count)

    def applied_weights(
        self, statistics: DeltaStatistics, weights: Sequence[float], optimizer: ServerOptimizer
    ) -> list[float]:
        """The combiner's clip factors and Krum selection folded in (unchanged for the plain average)."""
        return list(weights) if self.combiner.is_default else self.combiner.applied_weights(statistics, weights)

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
        """One server-optimizer step on the combined delta."""
        norms = None if facts is None else facts.delta_norms
        return optimizer.step(parameters, self.combiner.combine(deltas, weights, norms=norms))


def fedbuff_step(
    global_params: Tensors,
    current_version: int,
    updates: Sequence[PendingUpdate],
    staleness: StalenessPolicy,
    weight_by_sample_count: bool,
    optimizer: ServerOptimizer,
    *,
    robust: RobustPolicy | None = None,
) -> AggregationResult:
    """One FedBuff version as a function; a :class:`PrivateServerOptimizer` makes it differentially private.

    ``staleness`` keeps its ``max_staleness`` here (``StaleUpdateError`` beyond it). With DP the deltas are
    clipped to the optimizer's clip norm (folded into the recorded weights) and the buffer must hold one
    update per named client (``InvalidUpdateError``).
    """
    policy = robust or RobustPolicy()
    strategy: Strategy = FedBuff(staleness, weight_by_sample_count, policy)
    if isinstance(optimizer, PrivateServerOptimizer):
        strategy = DifferentiallyPrivate(strategy, policy.max_update_norm)
    return strategy.aggregate(global_params, current_version, updates, optimizer)
