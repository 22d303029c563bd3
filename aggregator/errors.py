"""Typed errors of the aggregator: one class per failure a caller can act on.

Every class is a ``ValueError`` too, so callers that only know the standard library still catch them,
and every message names the offending value.
"""


class AggregatorError(Exception):
    """Base class of every error raised by ``aggregator``."""


class EmptyBufferError(AggregatorError, ValueError):
    """Aggregation was asked for with no updates at all."""


class ZeroWeightError(AggregatorError, ValueError):
    """Every update in a buffer got a raw weight of zero, so the weights cannot be normalised."""


class ShapeMismatchError(AggregatorError, ValueError):
    """Two sets of model weights differ in their parameter names or shapes."""


class InvalidConfigError(AggregatorError, ValueError):
    """A policy, optimizer or configuration parameter is out of range or of the wrong type."""


class InvalidStalenessError(AggregatorError, ValueError):
    """A staleness is negative or not an integer, or a base version lies in the future."""


class StaleUpdateError(AggregatorError, ValueError):
    """An update is staler than the policy's ``max_staleness``; the caller should reject it first."""


class InvalidUpdateError(AggregatorError, ValueError):
    """A pending update carries an impossible field (negative count, empty or duplicate id)."""


class InvalidBufferStateError(AggregatorError, ValueError):
    """The buffer state given to a policy is impossible (negative count, pending but no receive time)."""


class NaiveDatetimeError(AggregatorError, ValueError):
    """A datetime without a timezone was given where a timezone-aware one is required."""


class InvalidStateError(AggregatorError, ValueError):
    """A server optimizer's state dict is malformed or does not fit the optimizer."""
