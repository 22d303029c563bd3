"""The job's side of aggregation: new versions from the server become ``model_versions`` rows; audits recompute.

The math and the decisions (which updates, which weights, when) are :class:`aggregator.AsyncServer`'s and
the configured strategy's; this module only turns their results into rows, and recomputes a recorded version
through the same strategy code for :mod:`streaming_jobs.audit`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from aggregator import AggregationConfig, NewVersion, PrivateServerOptimizer, ServerOptimizer, make_strategy
from schemas.rows import ModelVersionRow
from schemas.tensors import Tensors, encode_tensors, parameter_hash
from streaming_jobs.global_state import GlobalState


def aggregate_ready_versions(
    state: GlobalState, *, now: datetime, batch_id: int, time_trigger: bool
) -> list[ModelVersionRow]:
    """Make the versions the server's buffer policy allows now; advance ``state`` and return their rows.

    ``time_trigger`` lets the oldest-update deadline fire (checked at the end of a micro-batch); without it
    only a full buffer does. Contribution bounds and the epsilon budget are the server's
    (:meth:`aggregator.AsyncServer.ready_versions`): a refused version leaves ``state.privacy_refusal`` set.
    """
    versions = state.server.ready_versions(now, deadline=time_trigger)
    return version_rows(state, versions, now=now, batch_id=batch_id)


def version_rows(
    state: GlobalState, versions: Sequence[NewVersion], *, now: datetime, batch_id: int
) -> list[ModelVersionRow]:
    """The ``model_versions`` rows of ``versions`` (made in this order), chaining each to its parent's hash."""
    config = state.server.config
    config_json = json.dumps(config.to_dict(), sort_keys=True)
    rows = []
    for version in versions:
        kept_as_shards = version.parameter_hash is not None
        new_hash = version.parameter_hash if version.parameter_hash is not None else parameter_hash(version.parameters)
        rows.append(
            ModelVersionRow(
                model_name=state.model_name,
                version=version.version,
                parent_version=version.parent_version,
                parent_parameter_hash=state.parameter_hash,
                created_at=now,
                parameters=b"" if kept_as_shards else encode_tensors(version.parameters),
                parameter_hash=new_hash,
                update_ids=list(version.update_ids),
                update_weights=list(version.weights),
                update_staleness=list(version.stalenesses),
                staleness_mean=version.mean_staleness,
                staleness_max=version.max_staleness,
                aggregation_mode=config.strategy,
                server_optimizer=config.optimizer.name,
                optimizer_state=encode_tensors(version.optimizer_state),
                config_json=config_json,
                federated_validation_loss=version.federated_validation_loss,
                federated_validation_accuracy=version.federated_validation_accuracy,
                batch_id=batch_id,
                epsilon=version.epsilon,
                epsilon_assumption=version.epsilon_assumption,
                privacy_budget_exhausted=version.privacy_budget_exhausted,
                shards_key=state.sharded.key_of(version.version) if kept_as_shards and state.sharded else None,
            )
        )
        state.parameter_hash = new_hash
    return rows


def recompute_parameters(
    parent: Tensors,
    deltas: Sequence[Tensors],
    weights: Sequence[float],
    config: AggregationConfig,
    optimizer: ServerOptimizer,
    *,
    version: int | None = None,
) -> Tensors:
    """Recompute a version from its parent, its recorded deltas and weights (in recorded order): audits.

    Goes through the configured strategy's own ``apply`` (:meth:`aggregator.Strategy.recompute`).
    ``optimizer`` holds the parent's state (with DP, also the clip norm and the parent's version); with DP
    the noise is drawn again from the configured seed and ``version`` (default: the parent's recorded DP
    version plus one).
    """
    if version is None:
        if not isinstance(optimizer, PrivateServerOptimizer):
            version = 0  # only the DP noise depends on the version number
        elif optimizer.version is None:
            raise ValueError(
                "differential privacy is on but neither the version nor the parent's DP version is known; "
                "pass version= to recompute the noise"
            )
        else:
            version = optimizer.version + 1
    return make_strategy(config).recompute(parent, deltas, weights, optimizer, version=version)


def utc_now() -> datetime:
    """Timezone-aware now."""
    return datetime.now(UTC)
