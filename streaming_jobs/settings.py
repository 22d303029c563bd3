"""The streaming job's configuration: one typed object, the same locally and on Databricks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aggregator import AggregationConfig
from schemas.kafka_settings import KafkaSettings
from schemas.messages import Identifier
from streaming_jobs.stack.paths import state_dir


def _default_tables_root() -> str:
    return str(state_dir() / "tables")


def _default_checkpoint() -> str:
    return str(state_dir() / "checkpoints" / "aggregation-job")


class JobSettings(BaseModel):
    """Everything ``fedstream job`` needs; every field has a local default."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    model_name: Identifier = "har-cnn"
    tables_root: str = Field(default_factory=_default_tables_root)
    catalog_schema: str | None = None
    checkpoint_location: str = Field(default_factory=_default_checkpoint)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings.from_env)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    max_offsets_per_trigger: int = Field(default=500, gt=0)
    trigger_interval_seconds: float = Field(default=1.0, ge=0)
    register_every: int = Field(default=10, ge=0)
    """Register the global model in the MLflow registry every N versions (0: never)."""
    mlflow_experiment: str = "fedstream"
    writer_id: Identifier = "fedstream-aggregation-job"
    """Delta ``txnAppId`` prefix: identifies this job's writes so replays are skipped."""
    initial_model_path: str | None = None
    """safetensors file of version 0, used once when ``model_versions`` is empty."""

    @field_validator("aggregation", mode="before")
    @classmethod
    def _aggregation_from_mapping(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return AggregationConfig.from_dict(value)
        return value

    @property
    def registered_model_name(self) -> str:
        """MLflow registry name of the global model."""
        return f"fedstream-{self.model_name}"

    def initial_model_file(self) -> Path | None:
        """Path of the version-0 parameters, if configured."""
        return Path(self.initial_model_path) if self.initial_model_path else None
