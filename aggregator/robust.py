"""Poisoning-robust aggregation of buffered deltas: norm bound, trimmed mean, coordinate median, (multi-)Krum.

Two kinds of rule, and what a version row records for each:

- linear (``none``, ``krum``, ``multi_krum``): the aggregated delta is ``sum_i w_i * delta_i``. The norm
  bound (a clip factor ``min(1, bound / ||delta_i||)``) and Krum's selection (weight 0 for the excluded)
  are folded into ``w_i``, so the recorded weights are exactly the coefficients applied, and an audit
  recomputes the delta with a plain weighted sum.
- coordinate-wise (``trimmed_mean``, ``median``): each coordinate takes the unweighted statistic of the
  (norm-bounded) deltas, scaled by the total of the staleness and data weights, so a buffer of stale
  updates still moves the model less. The recorded weights are those staleness and data weights; an audit
  recomputes with :func:`combine_deltas`, which re-derives the clip factors from the deltas themselves.

Updates above ``max_update_norm`` are scaled down to it (clipped), not rejected: an honest client with a
large step still counts, and a scaled attacker is reduced to the bound.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, Literal, get_args

import numpy as np
import numpy.typing as npt

from aggregator._checks import check_int, check_number, check_positive
from aggregator.errors import EmptyBufferError, InvalidConfigError
from aggregator.shards import DeltasInMemory, DeltaStatistics
from aggregator.weights import WeightsLike, check_same_structure, l2_norm, weighted_sum
from schemas.tensors import Tensors

RobustRule = Literal["none", "trimmed_mean", "median", "krum", "multi_krum"]
ROBUST_RULES: Final[tuple[str, ...]] = get_args(RobustRule)
LINEAR_RULES: Final = frozenset({"none", "krum", "multi_krum"})

__all__ = [
    "LINEAR_RULES",
    "ROBUST_RULES",
    "RobustPolicy",
    "RobustRule",
    "clip_factor",
    "combine_deltas",
    "coordinate_median",
    "krum_scores",
    "krum_scores_from_distances",
    "krum_select",
    "krum_select_from_distances",
    "trimmed_mean",
]


@dataclass(frozen=True)
class RobustPolicy:
    """Which robust rule the FedBuff step applies, with its parameters; validated on construction.

    ``trim_fraction``: share of the values cut at each end of every coordinate (trimmed mean).
    ``krum_byzantine``: ``f``, the number of malicious updates Krum should tolerate in a buffer.
    ``multi_krum_selected``: ``m``, updates Multi-Krum keeps (``None``: ``n - f``).
    ``max_update_norm``: L2 bound; a larger delta is scaled down to it (``None``: no bound).
    """

    JSON_KEYS: ClassVar[Mapping[str, str]] = {
        "rule": "robust_aggregation",
        "trim_fraction": "trim_fraction",
        "krum_byzantine": "krum_byzantine",
        "multi_krum_selected": "multi_krum_selected",
        "max_update_norm": "max_update_norm",
    }
    """Each field's key in the aggregation JSON (``config_json``)."""

    rule: RobustRule = "none"
    trim_fraction: float = 0.1
    krum_byzantine: int = 1
    multi_krum_selected: int | None = None
    max_update_norm: float | None = None

    def __post_init__(self) -> None:
        """Reject an unknown rule or out-of-range parameters, naming the value."""
        if self.rule not in ROBUST_RULES:
            raise InvalidConfigError(f"robust_aggregation must be one of {list(ROBUST_RULES)}, got {self.rule!r}")
        trim = check_number("trim_fraction", self.trim_fraction)
        if not 0.0 <= trim < 0.5:
            raise InvalidConfigError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction!r}")
        check_int("krum_byzantine", self.krum_byzantine, minimum=0)
        if self.multi_krum_selected is not None:
            check_int("multi_krum_selected", self.multi_krum_selected, minimum=1)
        if self.max_update_norm is not None:
            check_positive("max_update_norm", self.max_update_norm)

    @property
    def is_linear(self) -> bool:
        """Whether the rule is a weighted sum whose recorded weights are the applied coefficients."""
        return self.rule in LINEAR_RULES

    @property
    def is_default(self) -> bool:
        """True when the policy changes nothing: plain weighted average, no norm bound."""
        return self.rule == "none" and self.max_update_norm is None

    def applied_weights(self, statistics: DeltaStatistics, weights: Sequence[float]) -> list[float]:
        """The weights to record: for linear rules with clip factors and Krum selection folded in.

        Decided from whole-delta figures only (``statistics``), so the driver and shard-wise executors decide
        alike. Coordinate-wise rules return ``weights`` unchanged (their clipping happens in ``combine_deltas``).
        """
        norms = statistics.norms()
        _check_lengths(norms, weights)
        if not self.is_linear:
            return list(weights)
        factors = [clip_factor(norm, self.max_update_norm) for norm in norms]
        applied = [weight * factor for weight, factor in zip(weights, factors, strict=True)]
        if self.rule == "none":
            return applied
        selected_count = 1 if self.rule == "krum" else self.multi_krum_selected
        distances = statistics.squared_distances(factors)
        chosen = set(krum_select_from_distances(distances, self.krum_byzantine, selected_count))
        kept_total = math.fsum(weights[index] for index in chosen)
        if kept_total == 0:
            return [0.0] * len(applied)
        rescale = math.fsum(weights) / kept_total
        return [value * rescale if index in chosen else 0.0 for index, value in enumerate(applied)]

    def combine(
        self, deltas: Sequence[WeightsLike], weights: Sequence[float], *, norms: Sequence[float] | None = None
    ) -> Tensors:
        """The aggregated delta from the recorded weights (see :func:`combine_deltas`)."""
        return combine_deltas(deltas, weights, self, norms=norms)


def combine_deltas(
    deltas: Sequence[WeightsLike],
    weights: Sequence[float],
    policy: RobustPolicy,
    *,
    norms: Sequence[float] | None = None,
) -> Tensors:
    """Aggregate ``deltas`` with recorded ``weights`` under ``policy``: what the step did, for audits too.

    Linear rules: ``weighted_sum(deltas, weights)``. Coordinate-wise rules: ``sum(weights)`` times the
    trimmed mean or median of the deltas after the norm bound. ``norms``: the whole deltas' L2 norms when
    ``deltas`` are one shard of them (``None``: computed from ``deltas``).
    """
    _check_lengths(deltas, weights)
    if policy.is_linear:
        return weighted_sum(list(deltas), list(weights))
    if norms is None:
        norms = [l2_norm(delta) for delta in deltas]
    _check_lengths(norms, weights)
    bound = policy.max_update_norm
    clipped = [_scaled(delta, clip_factor(norm, bound)) for delta, norm in zip(deltas, norms, strict=True)]
    median = policy.rule == "median"
    statistic = coordinate_median(clipped) if median else trimmed_mean(clipped, policy.trim_fraction)
    total = math.fsum(weights)
    return {key: (np.asarray(value, dtype=np.float64) * total).astype(np.float32) for key, value in statistic.items()}


def clip_factor(norm: float, bound: float | None) -> float:
    """``min(1, bound / norm)``: the factor that scales a delta of L2 norm ``norm`` down to ``bound``."""
    if bound is None or norm <= bound:
        return 1.0
    return bound / norm


def coordinate_median(deltas: Sequence[WeightsLike]) -> Tensors:
    """Unweighted coordinate-wise median (the mean of the middle two for an even count)."""
    stacked = _stacked(deltas)
    return {key: np.median(values, axis=0).astype(np.float32) for key, values in stacked.items()}


def trimmed_mean(deltas: Sequence[WeightsLike], trim_fraction: float) -> Tensors:
    """Unweighted coordinate-wise mean after cutting ``floor(trim_fraction * n)`` values at each end.

    With too few updates to cut that many and keep one, it cuts ``(n - 1) // 2`` (the median, or close).
    """
    stacked = _stacked(deltas)
    count = len(deltas)
    cut = min(math.floor(trim_fraction * count), (count - 1) // 2)
    result: Tensors = {}
    for key, values in stacked.items():
        ordered = np.sort(values, axis=0)
        result[key] = ordered[cut : count - cut].mean(axis=0).astype(np.float32)
    return result


def krum_scores(deltas: Sequence[WeightsLike], byzantine: int) -> list[float]:
    """Krum score per update: sum of squared L2 distances to its ``n - f - 2`` nearest others.

    With fewer updates than Krum's ``n > 2f + 2`` needs, at least one neighbour is still used (and a
    single update scores 0), so a short buffer made by the deadline still aggregates.
    """
    return krum_scores_from_distances(DeltasInMemory(deltas).squared_distances([1.0] * len(deltas)), byzantine)


def krum_scores_from_distances(distances: npt.NDArray[np.float64], byzantine: int) -> list[float]:
    """:func:`krum_scores` from the updates' pairwise squared distances (see :class:`DeltaStatistics`)."""
    check_int("krum_byzantine", byzantine, minimum=0)
    count = distances.shape[0]
    if count == 1:
        return [0.0]
    neighbours = max(1, min(count - byzantine - 2, count - 1))
    scores = []
    for index in range(count):
        others = np.delete(distances[index], index)
        scores.append(math.fsum(np.sort(others)[:neighbours].tolist()))
    return scores


def krum_select(deltas: Sequence[WeightsLike], byzantine: int, selected: int | None = None) -> list[int]:
    """Indices (ascending) of the ``selected`` updates with the lowest Krum scores; ties go to the earlier.

    ``selected=1`` is Krum; more is Multi-Krum; ``None`` keeps ``max(1, n - f)``.
    """
    distances = DeltasInMemory(deltas).squared_distances([1.0] * len(deltas))
    return krum_select_from_distances(distances, byzantine, selected)


def krum_select_from_distances(
    distances: npt.NDArray[np.float64], byzantine: int, selected: int | None = None
) -> list[int]:
    """:func:`krum_select` from the updates' pairwise squared distances."""
    count = distances.shape[0]
    keep = max(1, count - byzantine) if selected is None else check_int("selected", selected, minimum=1)
    scores = krum_scores_from_distances(distances, byzantine)
    order = sorted(range(count), key=lambda index: (scores[index], index))
    return sorted(order[: min(keep, count)])


def _scaled(delta: WeightsLike, factor: float) -> WeightsLike:
    if factor == 1.0:
        return delta
    return {key: (np.asarray(value, dtype=np.float64) * factor).astype(np.float32) for key, value in delta.items()}


def _stacked(deltas: Sequence[WeightsLike]) -> dict[str, npt.NDArray[np.float64]]:
    if not deltas:
        raise EmptyBufferError("robust aggregation needs at least one delta, got none")
    first = deltas[0]
    for other in deltas[1:]:
        check_same_structure(first, other)
    return {key: np.stack([np.asarray(delta[key], dtype=np.float64) for delta in deltas]) for key in first}


def _check_lengths(deltas: Sequence[object], weights: Sequence[float]) -> None:
    if not deltas:
        raise EmptyBufferError("robust aggregation needs at least one delta, got none")
    if len(deltas) != len(weights):
        raise InvalidConfigError(f"got {len(deltas)} deltas but {len(weights)} weights")
