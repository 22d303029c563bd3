"""Pure aggregation math for fedstream: staleness, buffering, weighting, strategies, server optimizers.

numpy only; no Spark, Kafka or torch. All state (optimizer moments, configuration) is plain arrays and
JSON-safe dicts, so it can live in Delta tables.
"""

from aggregator.buffer import BufferPolicy
from aggregator.config import AGGREGATION_MODES, AggregationConfig, AggregationMode
from aggregator.errors import (
    AggregatorError,
    EmptyBufferError,
    InvalidBufferStateError,
    InvalidConfigError,
    InvalidStalenessError,
    InvalidStateError,
    InvalidUpdateError,
    NaiveDatetimeError,
    ShapeMismatchError,
    StaleUpdateError,
    ZeroWeightError,
)
from aggregator.server_optimizers import (
    SERVER_OPTIMIZERS,
    ServerAdagrad,
    ServerAdam,
    ServerOptimizer,
    ServerSGD,
    ServerYogi,
    make_server_optimizer,
)
from aggregator.staleness import (
    STALENESS_FUNCTIONS,
    StalenessFunctionName,
    StalenessPolicy,
    check_staleness,
    constant,
    hinge,
    inverse_sqrt,
    polynomial,
)
from aggregator.strategies import (
    AggregationResult,
    PendingUpdate,
    aggregation_weights,
    fedasync_step,
    fedavg_step,
    fedbuff_step,
    partition_by_staleness,
)
from aggregator.weights import (
    ModelWeights,
    add,
    check_same_structure,
    l2_norm,
    parameter_count,
    scale,
    subtract,
    weighted_sum,
    zeros_like,
)

__all__ = [
    "AGGREGATION_MODES",
    "SERVER_OPTIMIZERS",
    "STALENESS_FUNCTIONS",
    "AggregationConfig",
    "AggregationMode",
    "AggregationResult",
    "AggregatorError",
    "BufferPolicy",
    "EmptyBufferError",
    "InvalidBufferStateError",
    "InvalidConfigError",
    "InvalidStalenessError",
    "InvalidStateError",
    "InvalidUpdateError",
    "ModelWeights",
    "NaiveDatetimeError",
    "PendingUpdate",
    "ServerAdagrad",
    "ServerAdam",
    "ServerOptimizer",
    "ServerSGD",
    "ServerYogi",
    "ShapeMismatchError",
    "StaleUpdateError",
    "StalenessFunctionName",
    "StalenessPolicy",
    "ZeroWeightError",
    "add",
    "aggregation_weights",
    "check_same_structure",
    "check_staleness",
    "constant",
    "fedasync_step",
    "fedavg_step",
    "fedbuff_step",
    "hinge",
    "inverse_sqrt",
    "l2_norm",
    "make_server_optimizer",
    "parameter_count",
    "partition_by_staleness",
    "polynomial",
    "scale",
    "subtract",
    "weighted_sum",
    "zeros_like",
]
