"""The job's working state, rebuilt from Delta on every start: current version, optimizer, pending buffer.

Nothing here survives a restart on its own: ``load_global_state`` derives it from ``model_versions`` (the
newest version and its optimizer state) and ``updates`` (accepted updates not yet in any version).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyspark.sql import SparkSession
from pyspark.sql import functions as F  # noqa: N812

from aggregator import AggregationConfig, BudgetCheck, PendingUpdate, ServerOptimizer
from schemas.rows import ModelVersionRow
from schemas.tensors import Tensors, decode_tensors
from streaming_jobs.tables import MODEL_VERSIONS, UPDATES, TableLocations


class MissingInitialVersionError(RuntimeError):
    """``model_versions`` has no version of the model and no initial model was given."""


@dataclass(frozen=True)
class BufferedUpdate:
    """An accepted update waiting for aggregation, with the client's federated-evaluation metrics."""

    pending: PendingUpdate
    validation_loss: float | None
    validation_accuracy: float | None
    validation_count: int


@dataclass
class GlobalState:
    """The newest global version and the updates that will make the next ones.

    ``privacy_refusal``: set while ``dp_epsilon_budget`` refuses the next version (the buffer is held).
    """

    model_name: str
    version: int
    parameters: Tensors
    parameter_hash: str
    optimizer: ServerOptimizer
    pending: list[BufferedUpdate] = field(default_factory=list)
    privacy_refusal: BudgetCheck | None = None

    def oldest_pending_at(self) -> datetime | None:
        """When the oldest buffered update arrived."""
        return min((item.pending.received_at for item in self.pending), default=None)


def load_global_state(
    spark: SparkSession, locations: TableLocations, model_name: str, config: AggregationConfig
) -> GlobalState:
    """Rebuild the state from Delta; raises ``MissingInitialVersionError`` before version 0 exists."""
    versions = locations.read(spark, MODEL_VERSIONS).where(F.col("model_name") == model_name)
    newest = versions.orderBy(F.col("version").desc()).limit(1).collect()
    if not newest:
        raise MissingInitialVersionError(
            f"no version of model {model_name!r} in {locations.identifier(MODEL_VERSIONS)}; "
            "bootstrap version 0 first (initial_model_path)"
        )
    row = newest[0]
    optimizer = config.make_optimizer()
    optimizer_state = decode_tensors(bytes(row.optimizer_state))
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    aggregated = versions.select(F.explode("update_ids").alias("update_id"))
    pending_rows = (
        locations.read(spark, UPDATES)
        .where(F.col("model_name") == model_name)
        .join(aggregated, on="update_id", how="left_anti")
        .orderBy("batch_id", "kafka_partition", "kafka_offset")
        .collect()
    )
    pending = [
        BufferedUpdate(
            pending=PendingUpdate(
                update_id=pending_row.update_id,
                delta=decode_tensors(bytes(pending_row.payload)),
                base_version=pending_row.base_version,
                sample_count=pending_row.sample_count,
                received_at=pending_row.received_at.replace(tzinfo=UTC),
                client_id=pending_row.client_id,
            ),
            validation_loss=pending_row.validation_loss,
            validation_accuracy=pending_row.validation_accuracy,
            validation_count=pending_row.validation_count,
        )
        for pending_row in pending_rows
    ]
    return GlobalState(
        model_name=model_name,
        version=row.version,
        parameters=decode_tensors(bytes(row.parameters)),
        parameter_hash=row.parameter_hash,
        optimizer=optimizer,
        pending=pending,
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
        aggregation_mode=config.mode,
        server_optimizer=config.server_optimizer,
        optimizer_state=encode_tensors(config.make_optimizer().state_dict()),
        config_json=json.dumps(config.to_dict(), sort_keys=True),
        federated_validation_loss=None,
        federated_validation_accuracy=None,
        batch_id=-1,
        epsilon=None,
        epsilon_assumption=None,
        privacy_budget_exhausted=None,
    )
