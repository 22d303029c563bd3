"""One version made on Spark executors and on the driver from the same stored chunks, compared bit for bit.

``test_executor_aggregation.py`` runs ``python -m tests.integration.executor_scenario ROOT`` in a process of its
own on a ``local-cluster`` master (executors in JVMs of their own): it runs :func:`run` once per configuration
of :data:`SCENARIOS` in the one Spark application and prints one JSON line per configuration with what it found.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from aggregator import SHARD_VALUES, AggregationConfig, PendingUpdate, ShardPlan, make_strategy
from aggregator.shard_step import split_state
from producers.updates import build_chunked_update
from schemas.chunks import UpdateChunk, assemble_update, decode_update_chunk
from schemas.messages import Encoding
from schemas.rows import UpdateChunkRow
from schemas.tensors import Tensors, encode_tensors, parameter_hash
from schemas.wire import DecodedUpdate
from streaming_jobs.aggregation import recompute_parameters
from streaming_jobs.executor_aggregation import (
    ShardedVersion,
    aggregate_on_executors,
    read_version,
    shard_rows,
    shards_root,
    version_shapes,
    version_values,
    write_shards,
)
from streaming_jobs.publisher import model_records, sharded_model_records
from streaming_jobs.tables import MODEL_SHARDS, UPDATE_CHUNKS, TableLocations
from tests.rows import version_row

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PARENT_KEY = "e" * 64
"""The key the parent version's shards are written under (a version the driver made, here)."""
MAX_MESSAGE_BYTES = 300_000
"""About 75,000 float32 values a chunk: chunks straddle shard and tensor boundaries."""
ENCODINGS = (Encoding.FLOAT32, Encoding.FLOAT16, Encoding.INT8, Encoding.FLOAT32)


def model(seed: int, scale: float = 1.0) -> Tensors:
    """A model of three shards of one tensor (the last short) and two small tensors."""
    rng = np.random.default_rng(seed)
    return {
        "body.weight": (scale * rng.normal(size=(3, SHARD_VALUES - 5))).astype(np.float32),
        "body.bias": (scale * rng.normal(size=7)).astype(np.float32),
        "head.weight": (scale * rng.normal(size=(5, 3))).astype(np.float32),
    }


@dataclass(frozen=True)
class Outcome:
    """What one comparison found."""

    identical_parameters: bool
    identical_slots: bool
    identical_weights: bool
    identical_scalars: bool
    audit_recomputes: bool
    root_matches: bool
    published_matches: bool
    weights: tuple[float, ...]


def run(
    spark, root: Path, model_name: str, config: AggregationConfig, *, updates: int = 4, again: bool = False
) -> Outcome:  # type: ignore[no-untyped-def]
    """Store a parent (with optimizer slots) and ``updates`` chunked updates, make version 2 both ways, compare.

    ``again``: make version 2 a second time from the same inputs (as a replay after a crash would) and check
    that it is the same version and wrote no second set of shards.
    """
    locations = TableLocations(str(root))
    locations.ensure_table(spark, UPDATE_CHUNKS)
    strategy = make_strategy(config)
    optimizer = config.make_optimizer()
    first = [_pending(f"{model_name}-first-{i}", model(10 + i, 0.02), 0, i) for i in range(updates)]
    parent = strategy.aggregate(model(1), 0, first, optimizer).new_params
    parent_state = optimizer.state_dict()
    write_shards(
        spark,
        locations,
        shard_rows(model_name, 1, PARENT_KEY, parent, parent_state, config, batch_id=0),
        app_id=None,
        batch_id=None,
    )

    pending: list[PendingUpdate] = []
    rows: list[UpdateChunkRow] = []
    for index in range(updates):
        delta = model(100 + index, 0.02 * (1 + 40 * (index == 1)))  # one large: clipped, and Krum's outlier
        update_id = hashlib.md5(f"{model_name}-{index}".encode()).hexdigest()
        _, values = build_chunked_update(
            client_id=f"client-{index}",
            model_name=model_name,
            base_version=1 if index % 2 or config.strategy == "fedavg" else 0,
            sample_count=10 + index,
            delta=delta,
            max_message_bytes=MAX_MESSAGE_BYTES,
            encoding=ENCODINGS[index % len(ENCODINGS)],
            update_id=update_id,
        )
        chunks = [chunk for chunk in map(decode_update_chunk, values) if isinstance(chunk, UpdateChunk)]
        assert len(chunks) == len(values) >= 3
        decoded = assemble_update(list(reversed(chunks)))  # the whole path's delta: the same float32 values
        assert isinstance(decoded, DecodedUpdate), decoded
        pending.append(_pending(update_id, decoded.delta, decoded.header.base_version, index))
        stored = zip(chunks, values, strict=True)
        rows.extend(_chunk_row(chunk, value, offset) for offset, (chunk, value) in enumerate(stored))
    rows.append(rows[0])  # a chunk stored twice (a replay) counts once
    locations.append(spark, UPDATE_CHUNKS, rows, app_id=None, batch_id=None)

    whole_optimizer = config.make_optimizer()
    whole_optimizer.load_state_dict(parent_state)
    whole = strategy.aggregate(parent, 1, pending, whole_optimizer)
    whole_state = whole_optimizer.state_dict()

    scalars, _ = split_state(parent_state, optimizer)

    def make_version_2(batch_id: int) -> ShardedVersion:
        return aggregate_on_executors(
            spark,
            locations,
            model_name=model_name,
            config=config,
            plan=ShardPlan.of(parent),
            parent_version=1,
            parent_key=PARENT_KEY,
            parent_scalars=scalars,
            update_ids=[update.update_id for update in pending],
            weights=strategy.weights(pending, 1),
            app_id="executor-scenario",
            batch_id=batch_id,
        )

    made = make_version_2(2)
    if again:
        remade = make_version_2(3)
        assert (remade.key, remade.root, remade.weights) == (made.key, made.root, made.weights)
        rows = locations.read(spark, MODEL_SHARDS).where(f"model_name = '{model_name}' AND version = 2").count()
        assert rows == len(ShardPlan.of(parent).shards), rows
    parameters, slots = read_version(spark, locations, model_name, 2, made.key)
    whole_scalars, whole_slots = split_state(whole_state, whole_optimizer)
    flat_slots = {f"{slot}/{name}": array for slot, by_name in whole_slots.items() for name, array in by_name.items()}
    audit_optimizer = config.make_optimizer()
    audit_optimizer.load_state_dict(parent_state)
    recomputed = recompute_parameters(
        parent, [update.delta for update in pending], list(made.weights), config, audit_optimizer, version=2
    )
    plan = ShardPlan.of(parent)
    digests = [_sha(plan.cut(whole.new_params, shard)[shard.tensor]) for shard in plan.shards]
    row = version_row(2, model_name=model_name, parameter_hash=made.root)
    shapes = version_shapes(spark, locations, model_name, 2, made.key)
    values = version_values(spark, locations, model_name, 2, made.key, shards_per_read=2)
    records = list(sharded_model_records(row, shapes, values, _unsigned, MAX_MESSAGE_BYTES))
    whole_row = version_row(
        2, model_name=model_name, parameter_hash=made.root, parameters=encode_tensors(whole.new_params)
    )
    return Outcome(
        identical_parameters=_same(parameters, whole.new_params),
        identical_slots=_same(slots, flat_slots),
        identical_weights=made.weights == whole.weights,
        identical_scalars=_same(made.optimizer_scalars, whole_scalars),
        audit_recomputes=_same(recomputed, parameters),
        root_matches=made.root == shards_root(digests) and made.parameter_hash == parameter_hash(whole.new_params),
        published_matches=records == model_records(whole_row, _unsigned, MAX_MESSAGE_BYTES) and len(records) > 3,
        weights=made.weights,
    )


def _unsigned(data: bytes) -> bytes:
    return bytes(64)


def _pending(update_id: str, delta: Tensors, base_version: int, index: int) -> PendingUpdate:
    return PendingUpdate(
        update_id=update_id,
        delta=delta,
        base_version=base_version,
        sample_count=10 + index,
        received_at=T0,
        client_id=f"client-{index}",
        training_steps=1 + index % 3,
    )


def _chunk_row(chunk: UpdateChunk, value: bytes, offset: int) -> UpdateChunkRow:
    return UpdateChunkRow(
        kafka_topic="fl.updates",
        kafka_partition=0,
        kafka_offset=offset,
        kafka_timestamp=T0,
        model_name=chunk.header.model_name,
        assembly_id=chunk.assembly_id,
        update_id=chunk.header.update_id,
        client_id=chunk.header.client_id,
        chunk_index=chunk.index,
        chunk_count=chunk.layout.chunk_count,
        key=None,
        value=value,
        received_at=T0,
        batch_id=0,
    )


def _same(first: dict, second: dict) -> bool:  # type: ignore[type-arg]
    return sorted(first) == sorted(second) and all(
        np.asarray(first[key]).dtype == np.asarray(second[key]).dtype
        and np.asarray(first[key]).tobytes() == np.asarray(second[key]).tobytes()
        for key in first
    )


def _sha(values: np.ndarray) -> str:
    from schemas.tensors import sha256_hex

    return sha256_hex(np.asarray(values, dtype="<f4").tobytes())


SCENARIOS: dict[str, tuple[dict[str, object], int, bool]] = {
    # trimmed mean needs four updates to cut one at each end; "again" makes version 2 twice, as a replay would
    "trimmed_yogi": (
        {"mode": "fedbuff", "buffer_size": 4, "server_optimizer": "yogi", "server_learning_rate": 0.01,
         "robust_aggregation": "trimmed_mean", "trim_fraction": 0.25, "max_update_norm": 1.0},
        4,
        True,
    ),
    # Multi-Krum keeps n - f = 2 of three (one weight 0); three updates still use every encoding
    "multi_krum_adam": (
        {"mode": "fedbuff", "buffer_size": 4, "server_optimizer": "adam", "server_learning_rate": 0.01,
         "robust_aggregation": "multi_krum", "krum_byzantine": 1, "max_update_norm": 1.0},
        3,
        False,
    ),
}  # fmt: skip
"""Per configuration: the aggregation, how many updates version 2 is made from, and whether it is made twice."""


def main(root: str) -> None:
    """Run every scenario on whatever master ``FEDSTREAM_SPARK_MASTER`` names; print each outcome as JSON."""
    from streaming_jobs.spark_session import get_spark

    spark = get_spark("fedstream-executor-scenario")
    try:
        context = spark.sparkContext
        for _ in range(120):  # executors of a local-cluster master register a few seconds after the driver starts
            executors = context._jsc.sc().getExecutorIds().size()
            if executors >= 2 or not context.master.startswith("local-cluster"):
                break
            time.sleep(0.5)
        for name, (config, updates, again) in SCENARIOS.items():
            outcome = run(
                spark, Path(root) / name, f"model_{name}", AggregationConfig.from_dict(config), updates=updates,
                again=again,
            )  # fmt: skip
            found = {"scenario": name, "master": context.master, "executors": executors, **vars(outcome)}
            print(json.dumps(found), flush=True)
    finally:
        spark.stop()


if __name__ == "__main__":
    main(sys.argv[1])
