"""Audits over the Delta tables: recompute a version from its parent and its recorded updates."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F  # noqa: N812

from aggregator import AggregationConfig
from schemas.tensors import decode_tensors, parameter_hash
from streaming_jobs.aggregation import recompute_parameters
from streaming_jobs.tables import MODEL_VERSIONS, UPDATES, TableLocations


@dataclass(frozen=True)
class VersionVerification:
    """Whether a stored version is exactly what its parent and recorded updates produce."""

    version: int
    stored_hash: str
    recomputed_hash: str
    parent_hash_matches: bool
    update_count: int

    @property
    def ok(self) -> bool:
        """True when the recomputed parameters hash to the stored hash and the parent link holds."""
        return self.stored_hash == self.recomputed_hash and self.parent_hash_matches


def verify_version(
    spark: SparkSession, locations: TableLocations, model_name: str, version: int
) -> VersionVerification:
    """Recompute ``version`` from ``version - 1``: its parameters, optimizer state and the recorded updates."""
    if version < 1:
        raise ValueError(f"version 0 has no parent to recompute it from (got {version})")
    versions = locations.read(spark, MODEL_VERSIONS).where(F.col("model_name") == model_name)
    rows = {row.version: row for row in versions.where(F.col("version").isin(version - 1, version)).collect()}
    if version not in rows or version - 1 not in rows:
        raise LookupError(f"model {model_name!r} has no version {version} or no parent {version - 1}")
    row, parent = rows[version], rows[version - 1]
    payloads = {
        update.update_id: update.payload
        for update in locations.read(spark, UPDATES)
        .where(F.col("update_id").isin(list(row.update_ids)))
        .select("update_id", "payload")
        .collect()
    }
    missing = [update_id for update_id in row.update_ids if update_id not in payloads]
    if missing:
        raise LookupError(f"version {version} names updates missing from the updates table: {missing[:5]}")
    config = AggregationConfig.from_dict(json.loads(row.config_json))
    optimizer = config.make_optimizer()
    parent_state = decode_tensors(bytes(parent.optimizer_state))
    if parent_state:
        optimizer.load_state_dict(parent_state)
    recomputed = recompute_parameters(
        decode_tensors(bytes(parent.parameters)),
        [decode_tensors(bytes(payloads[update_id])) for update_id in row.update_ids],
        list(row.update_weights),
        config,
        optimizer,
    )
    return VersionVerification(
        version=version,
        stored_hash=row.parameter_hash,
        recomputed_hash=parameter_hash(recomputed),
        parent_hash_matches=row.parent_parameter_hash == parent.parameter_hash,
        update_count=len(row.update_ids),
    )
