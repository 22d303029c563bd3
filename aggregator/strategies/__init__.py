"""Aggregation strategies, one module per algorithm, registered by name (see :mod:`.registry`).

``fedbuff``, ``fedasync``, ``fedavg`` and ``fednova`` are built in; differential privacy is a wrapper
(:class:`.private.DifferentiallyPrivate`) and robust aggregation a combiner (:class:`aggregator.robust.RobustPolicy`)
that strategies are composed with. The ``*_step`` functions are the same strategies called as functions.
"""

from aggregator.strategies import fedasync, fedavg, fedbuff, fednova  # noqa: F401  (each registers itself)
from aggregator.strategies.base import (
    AggregationResult,
    PendingUpdate,
    Strategy,
    aggregation_weights,
    data_shares,
    partition_by_staleness,
    staleness_of,
)
from aggregator.strategies.fedasync import FedAsync, fedasync_step
from aggregator.strategies.fedavg import FedAvg, fedavg_step
from aggregator.strategies.fedbuff import FedBuff, fedbuff_step
from aggregator.strategies.private import DifferentiallyPrivate, private_server_step
from aggregator.strategies.registry import make_strategy, register_strategy, strategy_class, strategy_names

__all__ = [
    "AggregationResult",
    "DifferentiallyPrivate",
    "FedAsync",
    "FedAvg",
    "FedBuff",
    "PendingUpdate",
    "Strategy",
    "aggregation_weights",
    "data_shares",
    "fedasync_step",
    "fedavg_step",
    "fedbuff_step",
    "make_strategy",
    "partition_by_staleness",
    "private_server_step",
    "register_strategy",
    "staleness_of",
    "strategy_class",
    "strategy_names",
]
