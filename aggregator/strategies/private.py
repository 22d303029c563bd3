"""Client-level differential privacy as a wrapper any strategy that accepts it is composed with.

The wrapped strategy weighs the updates as usual (every weight at most ``1 / n``); the wrapper then clips
each delta to the clip norm the :class:`aggregator.privacy.PrivateServerOptimizer` holds (the clip factor
folded into the recorded weight), sums, adds seeded Gaussian noise and takes the private server step. A
version takes at most one update per client (the sensitivity of the sum is one clipped update).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aggregator.errors import InvalidConfigError, InvalidUpdateError
from aggregator.privacy import PrivateServerOptimizer
from aggregator.robust import clip_factor
from aggregator.server_optimizers import ServerOptimizer
from aggregator.shards import DeltaStatistics, WholeModelFacts
from aggregator.strategies.base import PendingUpdate, Strategy
from aggregator.weights import l2_norm, weighted_sum
from schemas.tensors import Tensors

if TYPE_CHECKING:
    from aggregator.config import AggregationConfig

__all__ = ["DifferentiallyPrivate", "check_one_per_client", "private_server_step"]


class DifferentiallyPrivate(Strategy):
    """``inner``'s weights, each delta clipped to the clip norm (and ``max_update_norm``), noise, private step."""

    def __init__(self, inner: Strategy, max_update_norm: float | None = None) -> None:
        if isinstance(inner, DifferentiallyPrivate):
            raise InvalidConfigError("differential privacy cannot wrap a strategy that is already private")
        if not inner.accepts_privacy:
            raise InvalidConfigError(
                f"differential privacy needs every weight at most 1/n; strategy {inner.name!r} gives no such bound"
            )
        self.inner = inner
        self.max_update_norm = max_update_norm

    @classmethod
    def from_config(cls, config: AggregationConfig) -> DifferentiallyPrivate:
        """Not registered by name: :func:`aggregator.strategies.registry.make_strategy` composes it."""
        from aggregator.strategies.registry import strategy_class

        return cls(strategy_class(config.strategy).from_config(config), config.robust.max_update_norm)

    def check_updates(self, updates: Sequence[PendingUpdate], current_version: int) -> None:
        """One update per named client, then whatever the inner strategy checks."""
        check_one_per_client(updates)
        self.inner.check_updates(updates, current_version)

    def weights(self, updates: Sequence[PendingUpdate], current_version: int) -> list[float]:
        """The inner strategy's weights."""
        return self.inner.weights(updates, current_version)

    def applied_weights(
        self, statistics: DeltaStatistics, weights: Sequence[float], optimizer: ServerOptimizer
    ) -> list[float]:
        """Each weight times the factor that clips its delta to ``min(clip norm, max_update_norm)``."""
        clip_norm = _private(optimizer).clip_norm
        bound = clip_norm if self.max_update_norm is None else min(clip_norm, self.max_update_norm)
        return [weight * clip_factor(norm, bound) for weight, norm in zip(weights, statistics.norms(), strict=True)]

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
        """The noised private step from the clip-folded weights (noise seeded by ``version`` and the shard)."""
        return private_server_step(parameters, deltas, weights, _private(optimizer), version=version, facts=facts)


def private_server_step(
    global_params: Tensors,
    deltas: Sequence[Tensors],
    applied_weights: Sequence[float],
    optimizer: PrivateServerOptimizer,
    *,
    version: int,
    facts: WholeModelFacts | None = None,
) -> Tensors:
    """The DP server step from the recorded (clip-folded) weights: sum, seeded noise, step, adapt the clip.

    Shared by the step and audits, so a recomputation draws the same noise and the same sum. ``facts``: the
    whole deltas' norms and the shard computed (see :meth:`aggregator.Strategy.apply`).
    """
    clip_norm = optimizer.clip_norm
    norms = [l2_norm(delta) for delta in deltas] if facts is None else facts.delta_norms
    unclipped = sum(1 for norm in norms if norm <= clip_norm)
    clipped_sum = weighted_sum(list(deltas), list(applied_weights))
    return optimizer.private_step(
        global_params,
        clipped_sum,
        update_count=len(deltas),
        version=version,
        unclipped_count=unclipped,
        shard=None if facts is None else facts.shard,
    )


def check_one_per_client(updates: Sequence[PendingUpdate]) -> None:
    """Raise ``InvalidUpdateError`` for an update without a client or two updates of one client."""
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


def _private(optimizer: ServerOptimizer) -> PrivateServerOptimizer:
    if not isinstance(optimizer, PrivateServerOptimizer):
        raise InvalidConfigError(
            f"differential privacy needs a PrivateServerOptimizer (AggregationConfig.make_optimizer with "
            f"dp_noise_multiplier set), got {type(optimizer).__name__}"
        )
    return optimizer
