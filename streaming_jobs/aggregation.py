"""Turn buffered updates into new global versions with the configured strategy, and recompute them for audits."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime

from aggregator import (
    AggregationConfig,
    AggregationResult,
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


def aggregate_ready_versions(
    state: GlobalState, config: AggregationConfig, *, now: datetime, batch_id: int, time_trigger: bool
) -> list[ModelVersionRow]:
    """Aggregate while the buffer policy says so; advance ``state`` and return the new version rows.

    ``time_trigger`` lets the oldest-update deadline fire (checked at the end of a micro-batch); without it
    only a full buffer does.
    """
    policy = config.buffer_policy()
    rows: list[ModelVersionRow] = []
    while state.pending:
        full = len(state.pending) >= config.buffer_size
        if not full and not (
            time_trigger and policy.should_aggregate(len(state.pending), state.oldest_pending_at(), now)
        ):
            break
        taken = state.pending[: config.buffer_size]
        rows.append(_advance(state, taken, config, now=now, batch_id=batch_id))
        del state.pending[: len(taken)]
    return rows


def _advance(
    state: GlobalState, taken: list[BufferedUpdate], config: AggregationConfig, *, now: datetime, batch_id: int
) -> ModelVersionRow:
    result = aggregate(state.parameters, state.version, [item.pending for item in taken], config, state.optimizer)
    new_hash = parameter_hash(result.new_params)
    privacy = config.privacy_policy()
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
        epsilon=None if privacy is None else privacy.epsilon(state.version + 1),
    )
    state.version += 1
    state.parameters = result.new_params
    state.parameter_hash = new_hash
    return row


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
