"""Table rows for tests: one valid row of each kind, with the fields a test cares about overridden."""

from datetime import UTC, datetime
from typing import Any

from schemas.rows import ModelVersionRow, RejectedUpdateRow, UpdateRow

CREATED_AT = datetime(2025, 3, 1, tzinfo=UTC)
KAFKA: dict[str, Any] = {
    "kafka_topic": "fl.updates",
    "kafka_partition": 0,
    "kafka_offset": 0,
    "kafka_timestamp": CREATED_AT,
}


def version_row(version: int, **overrides: Any) -> ModelVersionRow:
    """Version ``version`` of model ``m``, made by no update in batch ``version``; ``overrides`` replace fields."""
    fields: dict[str, Any] = {
        "model_name": "m",
        "version": version,
        "parent_version": None if version == 0 else version - 1,
        "parent_parameter_hash": None if version == 0 else "b" * 64,
        "created_at": CREATED_AT,
        "parameters": b"",
        "parameter_hash": "c" * 64,
        "update_ids": [],
        "update_weights": [],
        "update_staleness": [],
        "staleness_mean": None,
        "staleness_max": None,
        "aggregation_mode": "fedbuff",
        "server_optimizer": "sgd",
        "optimizer_state": b"",
        "config_json": "{}",
        "federated_validation_loss": None,
        "federated_validation_accuracy": None,
        "batch_id": version,
        "epsilon": None,
        "epsilon_assumption": None,
        "privacy_budget_exhausted": None,
        "shards_key": None,
    }
    return ModelVersionRow(**{**fields, **overrides})


def update_row(number: int = 0, **overrides: Any) -> UpdateRow:
    """Accepted update ``number`` of model ``m`` (its id and Kafka offset follow it); ``overrides`` replace fields."""
    fields: dict[str, Any] = {
        **KAFKA,
        "kafka_offset": number,
        "update_id": f"{number:032x}",
        "client_id": f"client-{number}",
        "model_name": "m",
        "base_version": 0,
        "sample_count": 64,
        "payload_sha256": "a" * 64,
        "payload": b"\x00\x01",
        "signature": bytes(64),
        "validation_loss": None,
        "validation_accuracy": None,
        "validation_count": 0,
        "training_loss": None,
        "training_steps": 1,
        "client_created_at": CREATED_AT,
        "received_at": CREATED_AT,
        "batch_id": 0,
    }
    return UpdateRow(**{**fields, **overrides})


def rejected_row(**overrides: Any) -> RejectedUpdateRow:
    """A message rejected for ``key_mismatch``; ``overrides`` replace fields."""
    fields: dict[str, Any] = {
        **KAFKA,
        "reason": "key_mismatch",
        "detail": "key b'x' != client_id 'y'",
        "all_reasons": ["key_mismatch"],
        "update_id": None,
        "client_id": None,
        "key": None,
        "raw_value": None,
        "raw_size": 0,
        "rejected_at": CREATED_AT,
        "batch_id": 1,
        "job_model": "m",
    }
    return RejectedUpdateRow(**{**fields, **overrides})
