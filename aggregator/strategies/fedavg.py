"""Synchronous FedAvg (McMahan et al. 2017): average the deltas of one round and add them; the baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aggregator.errors import EmptyBufferError, InvalidConfigError, InvalidStalenessError
from aggregator.server_optimizers import ServerOptimizer, ServerSGD
from aggregator.shards import WholeModelFacts
from aggregator.strategies.base import AggregationResult, PendingUpdate, Strategy, check_unique_ids, data_shares
from aggregator.strategies.registry import register_strategy
from aggregator.weights import add, weighted_sum
from schemas.tensors import Tensors

if TYPE_CHECKING:
    from aggregator.config import AggregationConfig

__all__ = ["FedAvg", "fedavg_step"]


@register_strategy("fedavg")
class FedAvg(Strategy):
    """Weights ``n_i / sum(n)`` (or equal) over updates that share one base version; no server optimizer.

    Synchronous: the server takes only updates of the current version, so every round is fresh.
    """

    synchronous = True

    def __init__(self, weight_by_sample_count: bool) -> None:
        self.weight_by_sample_count = weight_by_sample_count

    @classmethod
    def from_config(cls, config: AggregationConfig) -> FedAvg:
        """The configured data weighting."""
        return cls(config.weight_by_sample_count)

    @classmethod
    def check_config(cls, config: AggregationConfig) -> None:
        """FedAvg adds the average as it is: server optimizer ``sgd`` with learning rate 1."""
        if config.optimizer.name != "sgd" or config.optimizer.learning_rate != 1.0:
            raise InvalidConfigError(
                "mode 'fedavg' averages without a server optimizer, so it needs server_optimizer 'sgd' "
                f"and server_learning_rate 1.0, got {config.optimizer.name!r} "
                f"and {config.optimizer.learning_rate!r}; use mode 'fedbuff' for a server optimizer"
            )

    def check_updates(self, updates: Sequence[PendingUpdate], current_version: int) -> None:
        """A round: at least one update, unique ids, one shared base version."""
        if not updates:
            raise EmptyBufferError("no updates to average in this FedAvg round")
        check_unique_ids(updates)
        base_versions = sorted({update.base_version for update in updates})
        if len(base_versions) != 1:
            raise InvalidStalenessError(
                f"synchronous FedAvg needs one shared base_version, got base versions {base_versions}"
            )

    def weights(self, updates: Sequence[PendingUpdate], current_version: int) -> list[float]:
        """Data shares: ``n_i / sum(n)`` or ``1 / n``."""
        return data_shares(updates, self.weight_by_sample_count)

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
        """``theta + sum_i w_i * delta_i``."""
        return add(parameters, weighted_sum(list(deltas), list(weights)))


def fedavg_step(
    global_params: Tensors, updates: Sequence[PendingUpdate], weight_by_sample_count: bool
) -> AggregationResult:
    """One FedAvg round as a function, at the round's shared base version (every staleness 0)."""
    current_version = max((update.base_version for update in updates), default=0)
    return FedAvg(weight_by_sample_count).aggregate(global_params, current_version, updates, ServerSGD(1.0))
