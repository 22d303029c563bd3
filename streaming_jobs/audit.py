"""Audits over the Delta tables: recompute a version from its parent and its recorded updates.

A version held whole is recomputed on the driver from the parent's and the updates' recorded tensors; a version
kept as shards (or whose parent is) on the executors, from the parent's ``model_shards`` rows and the updates'
chunks in ``update_chunks``, as the job made it (:func:`streaming_jobs.executor_aggregation.recompute_on_executors`).
Either way nothing is written: the recomputed parameters are hashed and compared with the recorded hash.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F  # noqa: N812

from aggregator import AggregationConfig, ShardPlan
from aggregator.shard_step import split_state
from schemas.tensors import Tensors, decode_tensors, parameter_hash
from streaming_jobs.aggregation import recompute_parameters
from streaming_jobs.executor_aggregation import (
    recompute_on_executors,
    shard_frame,
    shard_rows,
    shards_of_version,
    version_shapes,
)
from streaming_jobs.tables import MODEL_VERSIONS, REJECTED_UPDATES, UPDATES, TableLocations, TableSpec


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
    """Recompute ``version`` from ``version - 1``: its parameters, optimizer state and the recorded updates.

    A version kept as shards, or whose parent is, is recomputed on Spark's executors (see :func:`verify_rows`).
    """
    if version < 1:
        raise ValueError(f"version 0 has no parent to recompute it from (got {version})")
    versions = locations.read(spark, MODEL_VERSIONS).where(F.col("model_name") == model_name)
    rows = {row.version: row for row in versions.where(F.col("version").isin(version - 1, version)).collect()}
    if version not in rows or version - 1 not in rows:
        raise LookupError(f"model {model_name!r} has no version {version} or no parent {version - 1}")
    return verify_rows(spark, locations, rows[version], rows[version - 1])


def verify_rows(spark: SparkSession, locations: TableLocations, row: Row, parent: Row) -> VersionVerification:
    """Recompute the version of ``model_versions`` row ``row`` from its parent's row ``parent``; write nothing.

    Uses what ``row`` records (update ids, weights, configuration) as given, so a caller can ask what a
    different record would verify as. A version held whole, with a parent held whole, is recomputed on the
    driver from the ``updates`` payloads; one kept as shards (``shards_key``), or whose parent is, on the
    executors (:func:`_recompute_sharded`). Raises ``LookupError`` when an update's payload or the parent's
    shards are missing, ``ValueError`` when ``parent`` is not the row's parent or an update's chunks are not all
    in ``update_chunks``.
    """
    if row.parent_version != parent.version or row.model_name != parent.model_name:
        raise ValueError(
            f"row of version {row.version} of {row.model_name!r} names parent {row.parent_version}, "
            f"got version {parent.version} of {parent.model_name!r}"
        )
    config = AggregationConfig.from_recorded(json.loads(row.config_json))
    if row.shards_key is not None or parent.shards_key is not None:
        recomputed_hash = _recompute_sharded(spark, locations, row, parent, config)
    else:
        recomputed_hash = parameter_hash(_recompute_whole(spark, locations, row, parent, config))
    return VersionVerification(
        version=row.version,
        stored_hash=row.parameter_hash,
        recomputed_hash=recomputed_hash,
        parent_hash_matches=row.parent_parameter_hash == parent.parameter_hash,
        update_count=len(row.update_ids),
    )


def _recompute_whole(
    spark: SparkSession, locations: TableLocations, row: Row, parent: Row, config: AggregationConfig
) -> Tensors:
    """The version's parameters, recomputed on the driver from the parent's row and the updates' payloads."""
    payloads = {
        update.update_id: update.payload
        for update in locations.read(spark, UPDATES)
        .where(F.col("update_id").isin(list(row.update_ids)))
        .select("update_id", "payload")
        .collect()
    }
    missing = [update_id for update_id in row.update_ids if update_id not in payloads]
    if missing:
        raise LookupError(f"version {row.version} names updates missing from the updates table: {missing[:5]}")
    optimizer = config.make_optimizer()
    parent_state = decode_tensors(bytes(parent.optimizer_state))
    if parent_state:
        optimizer.load_state_dict(parent_state)
    return recompute_parameters(
        decode_tensors(bytes(parent.parameters)),
        [decode_tensors(bytes(payloads[update_id])) for update_id in row.update_ids],
        list(row.update_weights),
        config,
        optimizer,
        version=row.version,
    )


def _recompute_sharded(
    spark: SparkSession, locations: TableLocations, row: Row, parent: Row, config: AggregationConfig
) -> str:
    """The version's parameter hash, recomputed on the executors from the parent's shards and the updates' chunks.

    A parent kept as shards is read from its ``model_shards`` rows (``shards_key``); a parent held whole (the
    version the model switched to shards at) is cut into shards from its own row, which the driver held whole
    when the job ran. The parent's slots come with its shards, its scalars from its recorded optimizer state.
    """
    parent_state = decode_tensors(bytes(parent.optimizer_state))
    parent_scalars, _ = split_state(parent_state, config.make_optimizer())
    if parent.shards_key is not None:
        parent_key = parent.shards_key
        shapes = version_shapes(spark, locations, row.model_name, parent.version, parent_key)
        if not shapes:
            raise LookupError(
                f"version {parent.version} of {row.model_name!r} is kept as shards, but model_shards has no rows "
                f"under its key {parent_key}"
            )
        plan = ShardPlan(tuple((name, tuple(shapes[name])) for name in sorted(shapes)))
        parent_shards = shards_of_version(spark, locations, row.model_name, parent.version, parent_key)
    else:
        parent_key = parent.parameter_hash  # what the job keys a switched version's shards by
        parameters = decode_tensors(bytes(parent.parameters))
        plan = ShardPlan.of(parameters)
        rows = shard_rows(row.model_name, parent.version, parent_key, parameters, parent_state, config, batch_id=-1)
        parent_shards = shard_frame(spark, rows)
    recomputed = recompute_on_executors(
        spark,
        locations,
        model_name=row.model_name,
        config=config,
        plan=plan,
        version=row.version,
        parent=parent_shards,
        parent_key=parent_key,
        parent_scalars=parent_scalars,
        update_ids=list(row.update_ids),
        applied_weights=list(row.update_weights),
    )
    return recomputed.parameter_hash


AuditRow = dict[str, object]
_LINEAGE_COLUMNS = (
    "version",
    "parent_version",
    "parameter_hash",
    "created_at",
    "update_ids",
    "update_weights",
    "update_staleness",
    "aggregation_mode",
    "server_optimizer",
)


def read_as_of(spark: SparkSession, locations: TableLocations, table: TableSpec, as_of: str | None) -> DataFrame:
    """The table now, or as it was at ``as_of`` (a Delta table version number or a timestamp): time travel."""
    if as_of is None:
        return locations.read(spark, table)
    reader = spark.read.format("delta")
    reader = reader.option("versionAsOf", int(as_of)) if as_of.isdigit() else reader.option("timestampAsOf", as_of)
    if locations.catalog_schema:
        return reader.table(locations.identifier(table))
    return reader.load(locations.identifier(table))


def lineage(
    spark: SparkSession, locations: TableLocations, model_name: str, version: int, as_of: str | None = None
) -> list[AuditRow]:
    """The parent chain of ``version`` back to 0, each with its updates, clients, weights and staleness."""
    versions = {
        row.version: row
        for row in read_as_of(spark, locations, MODEL_VERSIONS, as_of)
        .where((F.col("model_name") == model_name) & (F.col("version") <= version))
        .select(*_LINEAGE_COLUMNS)
        .collect()
    }
    if version not in versions:
        raise LookupError(f"model {model_name!r} has no version {version}")
    clients = {
        row.update_id: row.client_id
        for row in read_as_of(spark, locations, UPDATES, as_of)
        .where(F.col("model_name") == model_name)
        .select("update_id", "client_id")
        .collect()
    }
    chain: list[AuditRow] = []
    current: int | None = version
    while current is not None:
        row = versions[current]
        chain.append(
            {
                "version": row.version,
                "parent_version": row.parent_version,
                "created_at": utc_iso(row.created_at),
                "parameter_hash": row.parameter_hash,
                "mode": f"{row.aggregation_mode}/{row.server_optimizer}",
                "updates": [
                    {"update_id": update_id, "client_id": clients.get(update_id), "weight": weight, "staleness": s}
                    for update_id, weight, s in zip(
                        row.update_ids, row.update_weights, row.update_staleness, strict=True
                    )
                ],
            }
        )
        current = row.parent_version
    return chain


def verify_chain(
    spark: SparkSession,
    locations: TableLocations,
    model_name: str,
    version: int,
    on_verified: Callable[[AuditRow, int], None] | None = None,
) -> list[AuditRow]:
    """Recompute every version from 1 to ``version`` and check the parent-hash chain down to version 0.

    ``on_verified`` is called with each version's row and ``version`` (the count) as soon as it is checked:
    a long chain's progress.
    """
    results = []
    for each in range(1, version + 1):
        check = verify_version(spark, locations, model_name, each)
        results.append(
            {
                "version": each,
                "ok": check.ok,
                "stored_hash": check.stored_hash,
                "recomputed_hash": check.recomputed_hash,
                "parent_hash_matches": check.parent_hash_matches,
                "updates": check.update_count,
            }
        )
        if on_verified is not None:
            on_verified(results[-1], version)
    return results


def client_activity(
    spark: SparkSession,
    locations: TableLocations,
    client_id: str,
    as_of: str | None = None,
    model_name: str | None = None,
) -> dict[str, list[AuditRow]]:
    """A client's accepted updates (with the version each went into) and its rejected messages.

    ``model_name``: only that model's updates and versions (``None``: every model's). Rejected messages
    carry no trusted model name (they may not even parse), so all of the client's rejections are listed.
    """
    versions = read_as_of(spark, locations, MODEL_VERSIONS, as_of)
    updates = read_as_of(spark, locations, UPDATES, as_of).where(F.col("client_id") == client_id)
    if model_name is not None:
        versions = versions.where(F.col("model_name") == model_name)
        updates = updates.where(F.col("model_name") == model_name)
    placed = {
        update_id: row.version
        for row in versions.select("version", "update_ids").collect()
        for update_id in row.update_ids
    }
    accepted = [
        {
            "update_id": row.update_id,
            "model_name": row.model_name,
            "base_version": row.base_version,
            "sample_count": row.sample_count,
            "received_at": utc_iso(row.received_at),
            "in_version": placed.get(row.update_id),
        }
        for row in updates.orderBy("received_at").collect()
    ]
    rejected = [
        {
            "update_id": row.update_id,
            "reason": row.reason,
            "detail": row.detail,
            "rejected_at": utc_iso(row.rejected_at),
        }
        for row in read_as_of(spark, locations, REJECTED_UPDATES, as_of)
        .where(F.col("client_id") == client_id)
        .orderBy("rejected_at")
        .collect()
    ]
    return {"accepted": accepted, "rejected": rejected}


def rejected_summary(
    spark: SparkSession, locations: TableLocations, as_of: str | None = None, by: str = "hour"
) -> list[AuditRow]:
    """Rejected messages counted by reason and time bucket (``hour`` or ``day``)."""
    bucket = F.date_trunc(by, F.col("rejected_at")).alias(by)
    rows = (
        read_as_of(spark, locations, REJECTED_UPDATES, as_of)
        .groupBy(bucket, "reason")
        .agg(F.count("*").alias("count"), F.countDistinct("client_id").alias("clients"))
        .orderBy(by, "reason")
        .collect()
    )
    return [{by: utc_iso(row[by]), "reason": row.reason, "count": row["count"], "clients": row.clients} for row in rows]


def utc_iso(moment: datetime) -> str:
    """``moment`` as ISO 8601 in UTC with its offset (``...+00:00``).

    PySpark hands timestamps back as naive datetimes in the Python process's local time, so a naive value is
    read as local time, which is what it is; an aware one is converted.
    """
    return moment.astimezone(UTC).isoformat()
