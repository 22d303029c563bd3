"""The job's working state, rebuilt from Delta on every start: the server (version, optimizer, buffer) and hashes.

Nothing here survives a restart on its own: ``load_global_state`` derives it from ``model_versions`` (the
newest version and its optimizer state) and ``updates`` (accepted updates not yet in any version), and hands
them to an :class:`aggregator.AsyncServer`, the same server the simulator and the bench drive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F  # noqa: N812

from aggregator import AggregationConfig, AsyncServer, BudgetCheck, PendingUpdate
from aggregator.shard_step import split_state
from schemas.rows import ModelVersionRow
from schemas.tensors import Tensors, decode_tensors
from streaming_jobs.sharded_model import ExecutorVersions, ShardedModel, plan_of, switch_to_shards
from streaming_jobs.tables import MODEL_VERSIONS, UPDATES, TableLocations


class MissingInitialVersionError(RuntimeError):
    """``model_versions`` has no version of the model and no initial model was given."""


@dataclass
class GlobalState:
    """The model's server (newest version, optimizer, buffer) and the newest version's parameter hash."""

    model_name: str
    server: AsyncServer
    parameter_hash: str
    sharded: ShardedModel | None = None
    """Set for a model kept as shards and aggregated on executors (the server then holds no parameters)."""

    @property
    def version(self) -> int:
        """The newest global version."""
        return self.server.version

    @property
    def parameters(self) -> Tensors:
        """The newest global parameters."""
        return self.server.parameters

    @property
    def pending(self) -> tuple[PendingUpdate, ...]:
        """Accepted updates not yet in a version, in Kafka order."""
        return self.server.pending

    @property
    def privacy_refusal(self) -> BudgetCheck | None:
        """Set while ``dp_epsilon_budget`` refuses the next version (the buffer is held)."""
        return self.server.privacy_refusal


def load_global_state(
    spark: SparkSession,
    locations: TableLocations,
    model_name: str,
    config: AggregationConfig,
    *,
    before_batch: int | None = None,
    executor_min_parameters: int | None = None,
    writer_id: str = "fedstream",
) -> GlobalState:
    """Rebuild the state from Delta; raises ``MissingInitialVersionError`` before version 0 exists.

    ``before_batch``: the state as it was before micro-batch ``before_batch`` wrote anything (its versions and
    its updates left out), to replay that batch after a crash. ``executor_min_parameters``: a model at least this
    large is kept as shards and aggregated on executors (:mod:`streaming_jobs.sharded_model`); one already kept
    so stays so.
    """
    versions = locations.read(spark, MODEL_VERSIONS).where(F.col("model_name") == model_name)
    updates = locations.read(spark, UPDATES).where(F.col("model_name") == model_name)
    if before_batch is not None:
        versions = versions.where(F.col("batch_id") != before_batch)
        updates = updates.where(F.col("batch_id") != before_batch)
    newest = versions.orderBy(F.col("version").desc()).limit(1).collect()
    if not newest:
        raise MissingInitialVersionError(
            f"no version of model {model_name!r} in {locations.identifier(MODEL_VERSIONS)}; "
            "bootstrap version 0 first (initial_model_path)"
        )
    row = newest[0]
    aggregated = versions.select(F.explode("update_ids").alias("update_id"))
    pending_rows = (
        updates.join(aggregated, on="update_id", how="left_anti")
        .orderBy("batch_id", "kafka_partition", "kafka_offset")
        .collect()
    )
    parameters = {} if row.shards_key is not None else decode_tensors(bytes(row.parameters))
    sharded = _sharded_model(spark, locations, model_name, config, row, parameters, executor_min_parameters)
    pending = [
        PendingUpdate(
            update_id=pending_row.update_id,
            delta={} if sharded is not None else decode_tensors(bytes(pending_row.payload)),
            base_version=pending_row.base_version,
            sample_count=pending_row.sample_count,
            received_at=pending_row.received_at.replace(tzinfo=UTC),
            client_id=pending_row.client_id,
            training_steps=pending_row.training_steps,
            validation_loss=pending_row.validation_loss,
            validation_accuracy=pending_row.validation_accuracy,
            validation_count=pending_row.validation_count,
        )
        for pending_row in pending_rows
    ]
    optimizer_state = decode_tensors(bytes(row.optimizer_state))
    if sharded is None:
        server = AsyncServer(
            config,
            parameters,
            version=row.version,
            optimizer_state=optimizer_state,
            pending=pending,
        )
    else:
        maker = ExecutorVersions(spark, locations, model_name, config, sharded, writer_id=writer_id)
        scalars, _ = split_state(optimizer_state, config.make_optimizer())
        server = AsyncServer(
            config, {}, version=row.version, optimizer_state=scalars, pending=pending, make_version=maker
        )
    return GlobalState(model_name=model_name, server=server, parameter_hash=row.parameter_hash, sharded=sharded)


def _sharded_model(
    spark: SparkSession,
    locations: TableLocations,
    model_name: str,
    config: AggregationConfig,
    row: Row,
    parameters: Tensors,
    executor_min_parameters: int | None,
) -> ShardedModel | None:
    """The shard plan and key when the model is (or now becomes) kept as shards; ``None`` for the driver's path."""
    if row.shards_key is not None:
        if executor_min_parameters is None:
            raise RuntimeError(
                f"version {row.version} of {model_name!r} is kept as shards (made on executors): start the job "
                "with --executor-aggregation-min-parameters to go on aggregating it"
            )
        return ShardedModel(plan_of(spark, locations, model_name, row.version, row.shards_key), row.shards_key)
    if executor_min_parameters is None:
        return None
    if sum(int(array.size) for array in parameters.values()) < executor_min_parameters:
        return None
    return switch_to_shards(
        spark,
        locations,
        model_name,
        config,
        version=row.version,
        parameters=parameters,
        parameter_hash=row.parameter_hash,
        optimizer_state=decode_tensors(bytes(row.optimizer_state)),
    )


def initial_version_row(model_name: str, parameters: Tensors, config: AggregationConfig) -> ModelVersionRow:
    """The ``model_versions`` row of version 0: seeded parameters, no parent, no updates."""
    import json

    from schemas.tensors import encode_tensors, parameter_hash

    return ModelVersionRow(
        model_name=model_name,
        version=0,
        parent_version=None,
        parent_parameter_hash=None,
        created_at=datetime.now(UTC),
        parameters=encode_tensors(parameters),
        parameter_hash=parameter_hash(parameters),
        update_ids=[],
        update_weights=[],
        update_staleness=[],
        staleness_mean=None,
        staleness_max=None,
        aggregation_mode=config.strategy,
        server_optimizer=config.optimizer.name,
        optimizer_state=encode_tensors(config.make_optimizer().state_dict()),
        config_json=json.dumps(config.to_dict(), sort_keys=True),
        federated_validation_loss=None,
        federated_validation_accuracy=None,
        batch_id=-1,
        epsilon=None,
        epsilon_assumption=None,
        privacy_budget_exhausted=None,
        shards_key=None,
    )
