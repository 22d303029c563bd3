"""The streaming job's configuration: one typed object, the same locally and on Databricks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from aggregator import AggregationConfig
from schemas.kafka_settings import ENVIRONMENT_VARIABLES as KAFKA_ENVIRONMENT_VARIABLES
from schemas.kafka_settings import KafkaSettings
from schemas.messages import Identifier
from schemas.paths import state_dir
from streaming_jobs import databricks
from streaming_jobs.intake_limits import DEFAULT_BATCH_BYTES_BUDGET
from streaming_jobs.signing_key import SIGNING_KEY_FILE_VARIABLE, SIGNING_KEY_VARIABLE
from streaming_jobs.tables import DEFAULT_AUDIT_WINDOW_DAYS, MINIMUM_AUDIT_WINDOW_DAYS

CHECKPOINT_VARIABLE = "FEDSTREAM_CHECKPOINT_LOCATION"

ENVIRONMENT_VARIABLES: dict[str, str] = {
    databricks.CATALOG_VARIABLE: "catalog_schema (with FEDSTREAM_SCHEMA): Unity Catalog catalog of the tables",
    databricks.SCHEMA_VARIABLE: "catalog_schema (with FEDSTREAM_CATALOG): Unity Catalog schema of the tables",
    CHECKPOINT_VARIABLE: "checkpoint_location",
    databricks.SECRET_SCOPE_VARIABLE: (
        "kafka.sasl_username/sasl_password and signing_key from this secret scope (Databricks)"
    ),
    **{variable: f"kafka.{field}" for variable, field in KAFKA_ENVIRONMENT_VARIABLES.items()},
    SIGNING_KEY_VARIABLE: "signing_key: PEM of the job's Ed25519 key that signs every global version",
    SIGNING_KEY_FILE_VARIABLE: "signing_key_file: a PEM file of that key",
}
"""Every environment variable ``JobSettings`` reads (a field left unset takes its value from here)."""


def _default_tables_root() -> str:
    return str(state_dir() / "tables")


def _default_checkpoint(environ: Mapping[str, str] | None = None) -> str:
    values = os.environ if environ is None else environ
    return values.get(CHECKPOINT_VARIABLE) or str(state_dir() / "checkpoints" / "aggregation-job")


def _default_catalog_schema() -> str | None:
    return databricks.catalog_schema_from_env()


def _default_kafka() -> KafkaSettings:
    return databricks.kafka_settings_for_runtime()


def _default_signing_key(
    environ: Mapping[str, str] | None = None, dbutils: databricks.DbutilsLike | None = None
) -> SecretStr | None:
    values = os.environ if environ is None else environ
    if values.get(SIGNING_KEY_VARIABLE):
        return SecretStr(values[SIGNING_KEY_VARIABLE])
    if values.get(SIGNING_KEY_FILE_VARIABLE):
        return None  # the file is the configured key; the scope is not asked
    return databricks.signing_key_from_scope(values, dbutils=dbutils)


def _default_signing_key_file(environ: Mapping[str, str] | None = None) -> str | None:
    values = os.environ if environ is None else environ
    return values.get(SIGNING_KEY_FILE_VARIABLE) or None


class JobSettings(BaseModel):
    """Everything ``fedstream job`` needs; every field has a local default."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    model_name: Identifier = "har-cnn"
    tables_root: str = Field(default_factory=_default_tables_root)
    catalog_schema: str | None = Field(default_factory=_default_catalog_schema)
    """Unity Catalog ``catalog.schema`` of the tables (None: Delta folders under ``tables_root``)."""
    audit_window_days: int = Field(default=DEFAULT_AUDIT_WINDOW_DAYS, ge=MINIMUM_AUDIT_WINDOW_DAYS)
    """Days of Delta history the tables keep (log and deleted-file retention): ``audit --as-of`` reaches this far."""
    checkpoint_location: str = Field(default_factory=_default_checkpoint)
    kafka: KafkaSettings = Field(default_factory=_default_kafka)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    max_offsets_per_trigger: int = Field(default=500, gt=0)
    """Most messages per micro-batch; lowered at start so that ``batch_bytes_budget`` holds them all."""
    batch_bytes_budget: int = Field(default=DEFAULT_BATCH_BYTES_BUDGET, gt=0)
    """Most message bytes one micro-batch brings into the driver's Python (see ``streaming_jobs.intake_limits``)."""
    rejected_bytes_kept: int = Field(default=64 * 1024, ge=0)
    """Leading bytes of a rejected message kept in ``rejected_updates.raw_value`` (its size and hash always)."""
    trigger_interval_seconds: float = Field(default=0.5, ge=0)
    register_every: int = Field(default=10, ge=0)
    """Register the global model in the MLflow registry every N versions (0: never)."""
    model_architecture: str | None = None
    """The model's architecture (a ``producers.models.build_model`` name): each registered version is then an
    MLflow model (signature, input example) that ``mlflow.pyfunc`` and serving endpoints load. None: a registered
    version is the bare safetensors file of its parameters, which nothing can serve. Needs torch when set."""
    mlflow_experiment: str = "fedstream"
    writer_id: Identifier = "fedstream-aggregation-job"
    """Delta ``txnAppId`` prefix of this job's ``rejected_updates`` appends, so a replayed batch's are skipped. Each
    checkpoint adds an id of its own (``streaming_jobs.checkpoint_identity``), so a new checkpoint never has its
    writes skipped."""
    initial_model_path: str | None = None
    """safetensors file of version 0, used once when ``model_versions`` is empty."""
    require_signatures: bool = True
    """Accept only updates signed by an enrolled, unrevoked client key (``client_keys`` table)."""
    registry_refresh_seconds: float = Field(default=10.0, gt=0)
    """How often the job re-reads ``client_keys`` (in the background): a revocation takes effect within twice this."""
    replay_window_seconds: float | None = Field(default=900.0, gt=0)
    chunk_deadline_seconds: float = Field(default=600.0, gt=0)
    """A chunked update still missing chunks this long (Kafka time) after its first is rejected as ``incomplete``."""
    max_open_chunked_updates_per_client: int = Field(default=2, gt=0)
    """Incomplete chunked updates one client may have open at once."""
    max_open_chunk_bytes: int = Field(default=2 * 2**30, gt=0)
    """Chunk bytes the job holds for all incomplete chunked updates together (in ``update_chunks``, not memory)."""
    executor_aggregation_min_parameters: int | None = Field(default=None, gt=0)
    """A model of at least this many parameters is kept as shards and aggregated on Spark's executors
    (``streaming_jobs.sharded_model``); ``None``: every model on the driver."""
    """Reject an update whose ``created_at`` is further than this from its Kafka timestamp (None: no limit)."""
    enrol_public_keys_dir: str | None = None
    """Folder of ``<client_id>.pub`` files enrolled at start (convenience for local runs and the demo)."""
    signing_key: SecretStr | None = Field(default_factory=_default_signing_key, repr=False)
    """PEM of the job's Ed25519 key, which signs every version on ``fl.models`` (``streaming_jobs.signing_key``).

    Parsed when the job starts, so that no validation error can echo it."""
    signing_key_file: str | None = Field(default_factory=_default_signing_key_file)
    """A PEM file of that key. With neither, a local job uses the local stack's key (made on first use)."""

    @field_validator("aggregation", mode="before")
    @classmethod
    def _aggregation_from_mapping(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return AggregationConfig.from_dict(value)
        return value

    @field_validator("model_architecture")
    @classmethod
    def _known_architecture(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from fedstream.export import check_architecture  # imports torch: only for a job that names an architecture

        try:
            return check_architecture(value)
        except ImportError as error:
            raise ValueError(str(error)) from error

    @model_validator(mode="after")
    def _one_signing_key(self) -> JobSettings:
        if self.signing_key is not None and self.signing_key_file is not None:
            raise ValueError(
                f"signing_key and signing_key_file ({self.signing_key_file!r}) are both set; give the job one key"
            )
        return self

    @model_validator(mode="after")
    def _refuse_unsupported_on_databricks(self) -> JobSettings:
        if databricks.on_databricks():
            databricks.refuse_unsupported(self)
        return self

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        dbutils: databricks.DbutilsLike | None = None,
        **overrides: Any,
    ) -> JobSettings:
        """Settings from ``ENVIRONMENT_VARIABLES`` (``os.environ`` by default), then ``overrides``."""
        values: dict[str, Any] = {
            "catalog_schema": databricks.catalog_schema_from_env(environ),
            "checkpoint_location": _default_checkpoint(environ),
            "kafka": databricks.kafka_settings_for_runtime(environ, dbutils=dbutils),
            "signing_key": _default_signing_key(environ, dbutils),
            "signing_key_file": _default_signing_key_file(environ),
        }
        return cls.model_validate({**values, **overrides})

    @property
    def registered_model_name(self) -> str:
        """MLflow registry name of the global model; three-part in Unity Catalog when the tables are there."""
        if self.catalog_schema and self.catalog_schema.count(".") == 1:
            return databricks.registered_model_name(self.catalog_schema, self.model_name)
        return f"fedstream-{self.model_name}"

    def initial_model_file(self) -> Path | None:
        """Path of the version-0 parameters, if configured."""
        return Path(self.initial_model_path) if self.initial_model_path else None
