"""FedNova (Wang et al. 2020, "Tackling the Objective Inconsistency Problem"): normalise by local steps.

A client that took more local steps moves its delta further; averaging raw deltas then favours the objective
of the busiest clients. FedNova divides each delta by its local steps ``tau_i`` and rescales the average by
the effective step count ``tau_eff = sum_i p_i tau_i`` (``p_i`` the data shares), so each update counts
with ``f(s_i) * p_i * tau_eff / tau_i``: FedBuff's weight times ``tau_eff / tau_i``. The normalisation
is linear, so it is folded into the recorded weights and a version is recomputed like FedBuff's.

``tau_i`` is ``training_steps`` as the client reported it in its header's metrics (like sample counts, a
client's word). An update that reports 0 steps (older clients) keeps its FedBuff weight, and ``tau_eff`` is
taken over the updates that report steps; with equal steps everywhere FedNova is FedBuff exactly.
No robust combiner and no differential privacy: coordinate-wise statistics would drop the normalisation,
and ``tau_eff / tau_i`` has no ``1 / n`` bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from aggregator.strategies.base import PendingUpdate, data_shares
from aggregator.strategies.fedbuff import FedBuff
from aggregator.strategies.registry import register_strategy

__all__ = ["FedNova", "step_normalisation"]


@register_strategy("fednova")
class FedNova(FedBuff):
    """FedBuff weights times ``tau_eff / tau_i``; the same server-optimizer step on the weighted sum."""

    accepts_robust_aggregation = False
    accepts_privacy = False

    def weights(self, updates: Sequence[PendingUpdate], current_version: int) -> list[float]:
        """``f(s_i) * p_i * tau_eff / tau_i`` (see :func:`step_normalisation`)."""
        buffered = super().weights(updates, current_version)
        factors = step_normalisation(updates, self.weight_by_sample_count)
        return [weight * factor for weight, factor in zip(buffered, factors, strict=True)]


def step_normalisation(updates: Sequence[PendingUpdate], weight_by_sample_count: bool) -> list[float]:
    """``tau_eff / tau_i`` per update; 1 for an update that reports no steps, and 1 everywhere when all agree."""
    shares = data_shares(updates, weight_by_sample_count)
    known = [(share, update.training_steps) for share, update in zip(shares, updates, strict=True)]
    known = [(share, steps) for share, steps in known if steps > 0]
    share_total = math.fsum(share for share, _ in known)
    if len({steps for _, steps in known}) <= 1 or share_total == 0:
        return [1.0] * len(updates)
    effective_steps = math.fsum(share * steps for share, steps in known) / share_total
    return [effective_steps / update.training_steps if update.training_steps > 0 else 1.0 for update in updates]
