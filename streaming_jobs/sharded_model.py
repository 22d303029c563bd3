"""A model the job keeps as shards and aggregates on Spark's executors (``--executor-aggregation-min-parameters``).

For such a model the driver never holds a tensor. Its :class:`aggregator.AsyncServer` holds no parameters and
its updates no deltas: chunks are checked one by one as they arrive and stay in ``update_chunks``
(:mod:`streaming_jobs.chunked_updates`); the server decides *which* updates make a version and their weights
from metadata, as always, and :class:`ExecutorVersions` makes the version on the executors
(:func:`streaming_jobs.executor_aggregation.aggregate_on_executors`), and the server's optimizer takes the scalars
(step count, DP clip norm and ledger) that call moved with the strategy's own ``apply`` on a model with no tensors. The
version's ``model_versions`` row has no parameters: its ``parameter_hash`` is the whole version's (streamed from
the shards: what clients check), and ``shards_key`` names its rows in ``model_shards``; ``fl.models`` gets the
same chunks a whole version would (:func:`streaming_jobs.publisher.sharded_model_records`).

A model switches to shards when the job starts with the option and the newest version is held whole and large
enough: that version is written to ``model_shards`` (under its parameter hash as key) once. Only chunked updates
can be aggregated on executors; a whole update of such a model does not fit one message anyway.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy.typing as npt

from aggregator import AggregationConfig, PendingUpdate, ServerOptimizer, ShardPlan, make_strategy
from aggregator.shard_step import split_state
from aggregator.strategies import AggregationResult
from schemas.tensors import Tensors
from streaming_jobs.executor_aggregation import (
    ShardedVersion,
    aggregate_on_executors,
    shard_rows,
    version_shapes,
    write_shards,
)
from streaming_jobs.tables import MODEL_SHARDS, TableLocations

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["ExecutorVersions", "ShardedModel", "plan_of", "switch_to_shards"]


@dataclass
class ShardedModel:
    """The shard plan of a model kept as shards, and the key of its newest version's rows in ``model_shards``."""

    plan: ShardPlan
    key: str
    made: dict[int, ShardedVersion] = field(default_factory=dict)
    """Versions made since the state was loaded, by number: their keys go into their ``model_versions`` rows."""

    def key_of(self, version: int) -> str:
        """The ``model_shards`` key of a version made since the state was loaded."""
        return self.made[version].key


class ExecutorVersions:
    """The :data:`aggregator.VersionMaker` of a model kept as shards: every version made on the executors."""

    def __init__(
        self,
        spark: SparkSession,
        locations: TableLocations,
        model_name: str,
        config: AggregationConfig,
        sharded: ShardedModel,
        *,
        writer_id: str,
    ) -> None:
        self.spark = spark
        self.locations = locations
        self.model_name = model_name
        self.config = config
        self.sharded = sharded
        self.writer_id = writer_id

    def __call__(
        self,
        parameters: Tensors,
        current_version: int,
        updates: Sequence[PendingUpdate],
        optimizer: ServerOptimizer,
    ) -> AggregationResult:
        """Version ``current_version + 1`` from ``updates``, made on the executors and appended to ``model_shards``."""
        strategy = make_strategy(self.config)
        strategy.check_updates(updates, current_version)
        weights = strategy.weights(updates, current_version)
        scalars, _ = split_state(optimizer.state_dict(), optimizer)
        made = aggregate_on_executors(
            self.spark,
            self.locations,
            model_name=self.model_name,
            config=self.config,
            plan=self.sharded.plan,
            parent_version=current_version,
            parent_key=self.sharded.key,
            parent_scalars=scalars,
            update_ids=[update.update_id for update in updates],
            weights=weights,
            app_id=f"{self.writer_id}:shards",
            batch_id=current_version + 1,
        )
        optimizer.load_state_dict(made.optimizer_scalars)  # step, DP clip norm and ledger after this version
        self.sharded.key = made.key
        self.sharded.made[made.version] = made
        stalenesses = tuple(current_version - update.base_version for update in updates)
        return AggregationResult(
            new_params={},
            update_ids=tuple(update.update_id for update in updates),
            weights=made.weights,
            stalenesses=stalenesses,
            mean_staleness=math.fsum(stalenesses) / len(stalenesses),
            max_staleness=max(stalenesses),
            parameter_hash=made.parameter_hash,
        )


def switch_to_shards(
    spark: SparkSession,
    locations: TableLocations,
    model_name: str,
    config: AggregationConfig,
    *,
    version: int,
    parameters: Tensors,
    parameter_hash: str,
    optimizer_state: Mapping[str, npt.NDArray[Any]],
) -> ShardedModel:
    """Keep a version held whole as shards from now on: its rows in ``model_shards`` (once), keyed by its hash."""
    plan = ShardPlan.of(parameters)
    locations.ensure_table(spark, MODEL_SHARDS)
    if not version_shapes(spark, locations, model_name, version, parameter_hash):
        rows = shard_rows(model_name, version, parameter_hash, parameters, optimizer_state, config, batch_id=0)
        write_shards(spark, locations, rows, app_id=f"fedstream:switch-to-shards:{parameter_hash}", batch_id=version)
    return ShardedModel(plan=plan, key=parameter_hash)


def plan_of(spark: SparkSession, locations: TableLocations, model_name: str, version: int, key: str) -> ShardPlan:
    """The shard plan of a version kept as shards (from its rows' tensor shapes)."""
    shapes = version_shapes(spark, locations, model_name, version, key)
    if not shapes:
        raise RuntimeError(f"model_shards has no rows of version {version} of {model_name!r} under key {key}")
    return ShardPlan(tuple((name, tuple(shapes[name])) for name in sorted(shapes)))
