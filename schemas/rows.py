"""One pydantic model per Delta table row; ``streaming_jobs.tables`` holds the matching Spark schemas."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.messages import Identifier, Sha256Hex, UpdateId

NonNegative = Annotated[int, Field(ge=0)]


class _Row(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaCoordinates(_Row):
    """Where a message was read: the provenance every row keeps."""

    kafka_topic: str
    kafka_partition: NonNegative
    kafka_offset: NonNegative
    kafka_timestamp: AwareDatetime


class UpdateRow(KafkaCoordinates):
    """``updates``: one accepted client update (append-only audit log)."""

    update_id: UpdateId
    client_id: Identifier
    model_name: Identifier
    base_version: NonNegative
    sample_count: Annotated[int, Field(gt=0)]
    payload_sha256: Sha256Hex
    payload: bytes
    signature: bytes
    """The client's Ed25519 signature over the update header (64 zero bytes when unsigned)."""
    validation_loss: float | None
    validation_accuracy: float | None
    validation_count: NonNegative
    training_loss: float | None
    training_steps: NonNegative
    client_created_at: AwareDatetime
    received_at: AwareDatetime
    batch_id: NonNegative


class RejectedUpdateRow(KafkaCoordinates):
    """``rejected_updates``: one message that failed decoding or validation, with its raw bytes."""

    reason: str
    detail: str
    all_reasons: list[str]
    update_id: str | None
    client_id: str | None
    key: bytes | None
    raw_value: bytes | None
    raw_size: NonNegative
    rejected_at: AwareDatetime
    batch_id: NonNegative
    job_model: Identifier | None
    """The model whose job rejected the message: which job's record it is (jobs of several models may share the
    tables), not a claim of the message's. None in rows written before fedstream recorded it."""


class UpdateChunkRow(KafkaCoordinates):
    """``update_chunks``: one well-formed, signed chunk of a chunked update (append-only, like every table).

    The whole chunk message is kept (``value``): the job assembles an update from these rows when its last chunk
    arrives in a later micro-batch, and an auditor can check every chunk's signature and hash from them.
    """

    model_name: Identifier
    assembly_id: Sha256Hex
    """SHA-256 of the chunk's signed header and signature: every chunk of one update shares it."""
    update_id: UpdateId
    client_id: Identifier
    chunk_index: NonNegative
    chunk_count: Annotated[int, Field(gt=0)]
    key: bytes | None
    value: bytes
    received_at: AwareDatetime
    batch_id: NonNegative


class ModelShardRow(_Row):
    """``model_shards``: one shard of a global version computed on Spark executors (see ``aggregator.shards``).

    ``values``: the shard's float32 values, little-endian; ``optimizer_slots``: the server optimizer's
    per-parameter state of the shard, as safetensors keyed by slot name. A version's shards, in ``shard_ordinal``
    order, are the whole model: ``aggregator.ShardPlan.assemble``.
    """

    model_name: Identifier
    version: NonNegative
    version_key: Sha256Hex
    """What the version was made from (``streaming_jobs.executor_aggregation.version_key``): names its rows."""
    shard_ordinal: NonNegative
    tensor: str
    tensor_shape: list[NonNegative]
    shard_index: NonNegative
    value_start: NonNegative
    value_stop: NonNegative
    values: bytes
    values_sha256: Sha256Hex
    optimizer_slots: bytes
    created_at: AwareDatetime
    batch_id: NonNegative


class ModelVersionRow(_Row):
    """``model_versions``: one global version, with everything needed to recompute and audit it."""

    model_name: Identifier
    version: NonNegative
    parent_version: NonNegative | None
    parent_parameter_hash: Sha256Hex | None
    created_at: AwareDatetime
    parameters: bytes
    parameter_hash: Sha256Hex
    update_ids: list[UpdateId]
    update_weights: list[float]
    update_staleness: list[NonNegative]
    staleness_mean: float | None
    staleness_max: NonNegative | None
    aggregation_mode: str
    server_optimizer: str
    optimizer_state: bytes
    config_json: str
    federated_validation_loss: float | None
    federated_validation_accuracy: float | None
    batch_id: int
    """The micro-batch that made this version; -1 for version 0 and for a version made by the buffer deadline."""
    epsilon: float | None
    """Differential privacy spent up to and including this version, for the configured delta; None without DP."""
    epsilon_assumption: str | None
    """What ``epsilon`` rests on: ``no_amplification`` (each version a Gaussian mechanism over its clients), or
    ``poisson_subsampling q=...`` (claimed random check-ins); None without DP and in tables from before it."""
    privacy_budget_exhausted: bool | None
    """With ``dp_epsilon_budget``: True when the next version would take epsilon past it, so none follows
    this one; None without a budget."""
    shards_key: Sha256Hex | None
    """Set when the version is kept as shards in ``model_shards`` (made on Spark's executors): the key of its
    rows there; ``parameters`` is then empty (``parameter_hash`` is still the whole version's). None otherwise."""


class ClientKeyRow(_Row):
    """``client_keys``: the enrolment log; a client's newest row says whether its key is trusted."""

    client_id: Identifier
    public_key: bytes
    action: Literal["enrol", "revoke"]
    recorded_at: AwareDatetime
