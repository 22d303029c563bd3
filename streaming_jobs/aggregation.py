"""Turn buffered updates into new global versions with the configured strategy, and recompute them for audits."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime

from aggregator import (
    AggregationConfig,
    AggregationResult,
    BudgetCheck,
    ModelWeights,
    PendingUpdate,
    PrivateServerOptimizer,
    ServerOptimizer,
    StalenessPolicy,
    add,
    fedasync_step,
    fedavg_step,
    fedbuff_step,
    private_server_step,
    weighted_sum,
)
from schemas.rows import ModelVersionRow
from schemas.tensors import encode_tensors, parameter_hash
from streaming_jobs.global_state import BufferedUpdate, GlobalState

logger = logging.getLogger(__name__)


def aggregate_ready_versions(
    state: GlobalState, config: AggregationConfig, *, now: datetime, batch_id: int, time_trigger: bool
) -> list[ModelVersionRow]:
    """Aggregate while the buffer policy says so; advance ``state`` and return the new version rows.

    ``time_trigger`` lets the oldest-update deadline fire (checked at the end of a micro-batch); without it
    only a full buffer does. With DP a version takes at most one update per client; a client's later
    updates stay pending, in Kafka order, for the next versions (:meth:`aggregator.BufferPolicy.next_version`).
    With ``dp_epsilon_budget`` a version that would take epsilon past it is not made: the buffer is held,
    ``state.privacy_refusal`` says why and the first refusal is logged.
    """
    policy = config.buffer_policy()
    rows: list[ModelVersionRow] = []
    while state.pending:
        chosen = policy.next_version(
            [item.pending.client_id for item in state.pending],
            state.oldest_pending_at(),
            now,
            bound_clients=config.bounds_contributions,
            deadline=time_trigger,
        )
        if not chosen:
            break
        if _budget_refuses(state):
            break
        rows.append(
            _advance(state, [state.pending[position] for position in chosen], config, now=now, batch_id=batch_id)
        )
        taken = set(chosen)
        state.pending[:] = [item for position, item in enumerate(state.pending) if position not in taken]
    return rows


def _budget_refuses(state: GlobalState) -> bool:
    check = _budget_check(state.optimizer)
    if check is None or check.allows_next:
        state.privacy_refusal = None
        return False
    if state.privacy_refusal is None:
        logger.warning("%s (model %s, %d updates held)", check.describe(), state.model_name, len(state.pending))
    state.privacy_refusal = check
    return True


def _budget_check(optimizer: ServerOptimizer) -> BudgetCheck | None:
    """Whether the next version fits ``dp_epsilon_budget``; ``None`` without DP or without a budget."""
    return optimizer.budget_check() if isinstance(optimizer, PrivateServerOptimizer) else None


def _advance(
    state: GlobalState, taken: list[BufferedUpdate], config: AggregationConfig, *, now: datetime, batch_id: int
) -> ModelVersionRow:
    result = aggregate(state.parameters, state.version, [item.pending for item in taken], config, state.optimizer)
    new_hash = parameter_hash(result.new_params)
    epsilon, assumption, exhausted = _privacy_fields(state.optimizer, state.version + 1)
    row = ModelVersionRow(
        model_name=state.model_name,
        version=state.version + 1,
        parent_version=state.version,
        parent_parameter_hash=state.parameter_hash,
        created_at=now,
        parameters=encode_tensors(result.new_params),
        parameter_hash=new_hash,
        update_ids=list(result.update_ids),
        update_weights=list(result.weights),
        update_staleness=list(result.stalenesses),
        staleness_mean=result.mean_staleness,
        staleness_max=result.max_staleness,
        aggregation_mode=config.mode,
        server_optimizer=config.server_optimizer,
        optimizer_state=encode_tensors(state.optimizer.state_dict()),
        config_json=json.dumps(config.to_dict(), sort_keys=True),
        federated_validation_loss=_weighted_metric(taken, "validation_loss"),
        federated_validation_accuracy=_weighted_metric(taken, "validation_accuracy"),
        batch_id=batch_id,
        epsilon=epsilon,
        epsilon_assumption=assumption,
        privacy_budget_exhausted=exhausted,
    )
    state.version += 1
    state.parameters = result.new_params
    state.parameter_hash = new_hash
    return row


def _privacy_fields(optimizer: ServerOptimizer, version: int) -> tuple[float | None, str | None, bool | None]:
    """``epsilon``, ``epsilon_assumption`` and ``privacy_budget_exhausted`` of ``version``, just made."""
    if not isinstance(optimizer, PrivateServerOptimizer):
        return None, None, None
    ledger = optimizer.ledger
    assumption = ledger.assumption()
    if ledger.versions < version:
        uncovered = version - ledger.versions
        assumption = f"{assumption}; versions 1-{uncovered} were made without DP and are not covered"
    check = optimizer.budget_check()
    return optimizer.epsilon_spent(), assumption, None if check is None else not check.allows_next


def aggregate(
    parameters: ModelWeights,
    version: int,
    updates: Sequence[PendingUpdate],
    config: AggregationConfig,
    optimizer: ServerOptimizer,
) -> AggregationResult:
    """One aggregation step of ``config.mode``; staleness weights apply but never refuse an accepted update.

    Updates were checked against ``max_staleness`` when they arrived; one that waited in the buffer while
    other versions were made is still aggregated (with its lower weight), so no accepted update is lost.
    """
    pending = list(updates)
    staleness = _without_limit(config.staleness_policy())
    if config.mode == "fedasync":
        return fedasync_step(parameters, version, pending[0], config.mixing, staleness)
    if config.mode == "fedavg":
        return fedavg_step(parameters, pending, config.weight_by_sample_count)
    return fedbuff_step(
        parameters,
        version,
        pending,
        staleness,
        config.weight_by_sample_count,
        optimizer,
        robust=config.robust_policy(),
    )


def recompute_parameters(
    parent: ModelWeights,
    deltas: Sequence[ModelWeights],
    weights: Sequence[float],
    config: AggregationConfig,
    optimizer: ServerOptimizer,
    *,
    version: int | None = None,
) -> ModelWeights:
    """Recompute a version from its parent, its recorded deltas and weights (in recorded order): audits.

    ``optimizer`` holds the parent's state (with DP, also the clip norm and the parent's version). Robust
    rules go through the same ``combine`` as the step; with DP the noise is drawn again from the configured
    seed and ``version`` (default: the parent's recorded DP version plus one).
    """
    if config.mode == "fedasync":
        return weighted_sum([parent, deltas[0]], [1.0, weights[0]])
    if config.mode == "fedavg":
        return add(parent, weighted_sum(list(deltas), list(weights)))
    if isinstance(optimizer, PrivateServerOptimizer):
        if version is None:
            if optimizer.version is None:
                raise ValueError(
                    "differential privacy is on but neither the version nor the parent's DP version is known; "
                    "pass version= to recompute the noise"
                )
            version = optimizer.version + 1
        return private_server_step(parent, deltas, weights, optimizer, version=version)
    return optimizer.step(parent, config.robust_policy().combine(deltas, weights))


def _without_limit(policy: StalenessPolicy) -> StalenessPolicy:
    return dataclasses.replace(policy, max_staleness=None)


def _weighted_metric(taken: Sequence[BufferedUpdate], name: str) -> float | None:
    pairs = [(getattr(item, name), item.validation_count) for item in taken]
    usable = [(value, count) for value, count in pairs if value is not None and count > 0]
    total = sum(count for _, count in usable)
    if not total:
        return None
    return math.fsum(value * count for value, count in usable) / total


def utc_now() -> datetime:
    """Timezone-aware now."""
    return datetime.now(UTC)
