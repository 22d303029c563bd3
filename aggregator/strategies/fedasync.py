"""FedAsync (Xie et al. 2019): every update on its own, mixed in with ``mixing * f(s)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aggregator._checks import check_fraction
from aggregator.errors import EmptyBufferError, InvalidConfigError, InvalidUpdateError, StaleUpdateError
from aggregator.server_optimizers import ServerOptimizer, ServerSGD
from aggregator.shards import WholeModelFacts
from aggregator.staleness import StalenessPolicy
from aggregator.strategies.base import AggregationResult, PendingUpdate, Strategy, staleness_of, without_limit
from aggregator.strategies.registry import register_strategy
from aggregator.weights import weighted_sum
from schemas.tensors import Tensors

if TYPE_CHECKING:
    from aggregator.config import AggregationConfig

__all__ = ["FedAsync", "fedasync_step"]


@register_strategy("fedasync")
class FedAsync(Strategy):
    """``theta_new = theta + mixing * f(s) * delta`` (K = 1); the recorded weight is ``mixing * f(s)``.

    No server optimizer: the mix is the step.
    """

    def __init__(self, staleness: StalenessPolicy, mixing: float) -> None:
        check_fraction("mixing", mixing)
        self.staleness = staleness
        self.mixing = mixing

    @classmethod
    def from_config(cls, config: AggregationConfig) -> FedAsync:
        """Staleness weights without the intake limit and the configured mixing rate."""
        return cls(without_limit(config.staleness), config.mixing)

    @classmethod
    def check_config(cls, config: AggregationConfig) -> None:
        """FedAsync aggregates one update at a time: ``buffer_size`` must be 1."""
        size = config.buffer.buffer_size
        if size != 1:
            raise InvalidConfigError(
                f"mode 'fedasync' aggregates one update at a time, so buffer_size must be 1, got {size}"
            )

    def weights(self, updates: Sequence[PendingUpdate], current_version: int) -> list[float]:
        """``[mixing * f(s)]`` for the one update (``StaleUpdateError`` beyond the policy's limit)."""
        if not updates:
            raise EmptyBufferError(f"no update to mix in at version {current_version}")
        if len(updates) != 1:
            raise InvalidUpdateError(f"FedAsync mixes in one update at a time, got {len(updates)}")
        update = updates[0]
        s = staleness_of(update, current_version)
        if self.staleness.is_too_stale(s):
            raise StaleUpdateError(
                f"update {update.update_id!r} has staleness {s} > max_staleness {self.staleness.max_staleness}"
            )
        return [self.mixing * self.staleness.weight(s)]

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
        """``theta + weight * delta``, accumulated in float64."""
        return weighted_sum([parameters, deltas[0]], [1.0, weights[0]])


def fedasync_step(
    global_params: Tensors,
    current_version: int,
    update: PendingUpdate,
    mixing: float,
    staleness: StalenessPolicy,
) -> AggregationResult:
    """One FedAsync version as a function; ``staleness`` keeps its ``max_staleness`` (``StaleUpdateError``)."""
    return FedAsync(staleness, mixing).aggregate(global_params, current_version, [update], ServerSGD(1.0))
