"""A global version computed on Spark executors, shard by shard, from the chunks in ``update_chunks``.

For models too large for the driver. No tensor reaches the driver: the executors cut each stored chunk of
the version's updates into shard pieces (:mod:`aggregator.shards`), gather every shard's pieces with the parent
version's shard (``model_shards``), and return per-shard partial sums; the driver turns those into the applied
weights (clip factors, Krum's choice: :class:`aggregator.shard_step.ShardStatistics`) and the optimizer's
scalar state, and the executors compute every shard of the new version
(:func:`aggregator.shard_step.compute_shard`). :func:`aggregate_on_executors` writes those shards to
``model_shards``; :func:`recompute_on_executors` computes them again from a recorded version's inputs and only
hashes them (``audit verify``). The version is bit-identical to the one the driver computes whole from the same
parent and updates (``tests/integration/test_executor_aggregation.py``), so ``audit`` can recompute either.

Passes over the data: one shuffle gathers each shard's pieces (kept, memory and disk, for the rest), one map
gives the norms' partials, one more the distances' (Krum only), one computes the shards.
"""

from __future__ import annotations

import hashlib
import json
import math
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from aggregator import AggregationConfig, Shard, ShardPlan, make_strategy
from aggregator.shard_step import ShardStatistics, compute_shard, next_scalar_state, shard_state, split_state
from aggregator.shards import pairwise_partials, scaled_float32, squared_sum
from schemas.chunks import UpdateChunk, decode_chunk_body, decode_update_chunk
from schemas.tensors import decode_tensors, encode_tensors, parameter_hash_streamed, sha256_hex
from streaming_jobs.tables import MODEL_SHARDS, UPDATE_CHUNKS, TableLocations

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "ShardedVersion",
    "aggregate_on_executors",
    "read_version",
    "recompute_on_executors",
    "shard_frame",
    "shard_rows",
    "shards_of_version",
    "shards_root",
    "version_key",
    "version_shapes",
    "version_values",
    "write_shards",
]

_PIECES = "shard_ordinal long, position long, value_offset long, data binary, slots binary"
_GATHERED = "shard_ordinal long, parent binary, slots binary, deltas array<binary>"
_PARENT = -1
"""``position`` of the parent version's piece among a shard's pieces (updates are 0, 1, ...)."""
GATHERED_PARTITION_BYTES = 128 * 2**20
"""About how much of the gathered shards one partition holds (at 100 M parameters and K = 10: ~40 partitions)."""
FrameMap = Callable[[Iterator["pd.DataFrame"]], Iterator["pd.DataFrame"]]
"""A ``mapInPandas`` function."""


@dataclass(frozen=True)
class ShardedVersion:
    """A version made on the executors: what its ``model_versions`` row and the next version need.

    Written to ``model_shards`` by :func:`aggregate_on_executors`; only computed and hashed by
    :func:`recompute_on_executors`.

    ``weights``: as applied (an audit recomputes from them); ``optimizer_scalars``: the optimizer state but its
    per-parameter slots (those are in the shard rows); ``root``: :func:`shards_root` of the new shards; ``key``:
    :func:`version_key`, which names this version's rows in ``model_shards``; ``parameter_hash``:
    :func:`schemas.tensors.parameter_hash` of the version, streamed from its shards (what clients check).
    """

    version: int
    key: str
    parameter_hash: str
    weights: tuple[float, ...]
    delta_norms: tuple[float, ...]
    optimizer_scalars: dict[str, npt.NDArray[Any]]
    root: str


def shards_root(values_sha256: Sequence[str]) -> str:
    """SHA-256 over the shards' value digests in ordinal order: the identity of a version kept as shards."""
    return hashlib.sha256(b"".join(bytes.fromhex(digest) for digest in values_sha256)).hexdigest()


def version_key(parent_key: str, update_ids: Sequence[str], weights: Sequence[float], config_json: str) -> str:
    """What a version's shards are made from, as one SHA-256: the parent's key, the updates, weights and config.

    ``model_shards`` rows carry it: a version number made again from other inputs (after a crash, a deadline
    flush replaced by a fuller buffer) writes rows under another key instead of being mistaken for the first.
    Every input is in the version's ``model_versions`` row, so a reader can recompute it.
    """
    fields = [parent_key, list(update_ids), [repr(float(weight)) for weight in weights], config_json]
    return hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()


def aggregate_on_executors(
    spark: SparkSession,
    locations: TableLocations,
    *,
    model_name: str,
    config: AggregationConfig,
    plan: ShardPlan,
    parent_version: int,
    parent_key: str,
    parent_scalars: Mapping[str, npt.NDArray[Any]],
    update_ids: Sequence[str],
    weights: Sequence[float],
    app_id: str,
    batch_id: int,
) -> ShardedVersion:
    """Make version ``parent_version + 1`` from the updates ``update_ids`` (in the version's order) on executors.

    ``weights``: the strategy's weights from the updates' metadata (:meth:`aggregator.Strategy.weights`);
    ``parent_key`` and ``parent_scalars``: the parent's :func:`version_key` and its optimizer state without
    slots. The shards are appended to ``model_shards`` once per writer ``app_id``, version and
    :func:`version_key`, so running this again with the same inputs writes nothing and returns the same version.
    ``batch_id`` is recorded on the rows. Raises ``ValueError`` when an update's chunks are not all stored.
    """
    locations.ensure_table(spark, MODEL_SHARDS)
    inputs = _VersionInputs(
        model_name=model_name,
        config=config,
        plan=plan,
        version=parent_version + 1,
        parent=shards_of_version(spark, locations, model_name, parent_version, parent_key),
        parent_key=parent_key,
        parent_scalars=parent_scalars,
        update_ids=update_ids,
        batch_id=batch_id,
    )
    with _computed(spark, locations, inputs, weights, weights_applied=False) as computed:
        app = f"{app_id}:{computed.key}"
        locations.append_frame(MODEL_SHARDS, computed.shards, app_id=app, batch_id=computed.version)
    written = shards_of_version(spark, locations, model_name, computed.version, computed.key)
    root, streamed_hash = _hashes(written, plan, computed.version)
    return computed.made(streamed_hash, root)


def recompute_on_executors(
    spark: SparkSession,
    locations: TableLocations,
    *,
    model_name: str,
    config: AggregationConfig,
    plan: ShardPlan,
    version: int,
    parent: DataFrame,
    parent_key: str,
    parent_scalars: Mapping[str, npt.NDArray[Any]],
    update_ids: Sequence[str],
    applied_weights: Sequence[float],
) -> ShardedVersion:
    """Compute a recorded version again on the executors, as :func:`aggregate_on_executors` made it; write nothing.

    For audits: ``applied_weights`` are the version's recorded weights (clip factors, Krum's choice folded in),
    ``config`` its recorded configuration, ``parent`` the parent version's ``model_shards`` rows
    (:func:`shards_of_version`, or :func:`shard_frame` of a parent held whole) and ``parent_scalars`` its
    optimizer state without slots. The new shards are kept (memory and disk) only while they are hashed; the
    result's ``parameter_hash`` is what the version's ``model_versions`` row must record, and its ``key`` what
    its ``shards_key`` must be when ``parent_key`` is the parent's. Raises ``ValueError`` when an update's
    chunks are not all in ``update_chunks``; a shard missing from ``parent`` fails the Spark job.
    """
    inputs = _VersionInputs(
        model_name=model_name,
        config=config,
        plan=plan,
        version=version,
        parent=parent,
        parent_key=parent_key,
        parent_scalars=parent_scalars,
        update_ids=update_ids,
        batch_id=-1,
    )
    with _computed(spark, locations, inputs, applied_weights, weights_applied=True) as computed:
        shards = computed.shards.persist()
        try:
            root, streamed_hash = _hashes(shards, plan, version)
        finally:
            shards.unpersist()
    return computed.made(streamed_hash, root)


@dataclass(frozen=True)
class _VersionInputs:
    """What one version is computed from: the parent's shard rows and scalars, the updates, the configuration."""

    model_name: str
    config: AggregationConfig
    plan: ShardPlan
    version: int
    parent: DataFrame
    parent_key: str
    parent_scalars: Mapping[str, npt.NDArray[Any]]
    update_ids: Sequence[str]
    batch_id: int


@dataclass(frozen=True)
class _ComputedVersion:
    """A version whose shards the executors compute when an action runs on ``shards`` (``model_shards`` rows)."""

    version: int
    key: str
    weights: tuple[float, ...]
    delta_norms: tuple[float, ...]
    optimizer_scalars: dict[str, npt.NDArray[Any]]
    shards: DataFrame

    def made(self, parameter_hash: str, root: str) -> ShardedVersion:
        return ShardedVersion(
            self.version, self.key, parameter_hash, self.weights, self.delta_norms, self.optimizer_scalars, root
        )


@contextmanager
def _computed(
    spark: SparkSession,
    locations: TableLocations,
    inputs: _VersionInputs,
    weights: Sequence[float],
    *,
    weights_applied: bool,
) -> Iterator[_ComputedVersion]:
    """The version's shards as a DataFrame to write or hash inside the block (the gathered shards are kept).

    ``weights_applied``: ``weights`` are the version's applied weights, as recorded (an audit); otherwise the
    strategy's weights from the updates' metadata, into which the strategy folds what it decides from the
    deltas' statistics.
    """
    positions = {update_id: position for position, update_id in enumerate(inputs.update_ids)}
    if len(positions) != len(inputs.update_ids):
        raise ValueError(f"update ids repeat: {sorted(inputs.update_ids)}")
    config = inputs.config
    gathered = _gather(spark, locations, inputs.model_name, inputs.plan, inputs.parent, positions).persist()
    try:
        squared = _collect_squared_sums(gathered, len(positions))
        statistics = ShardStatistics(squared, lambda factors: _collect_distance_partials(gathered, factors))
        if weights_applied:
            applied = [float(weight) for weight in weights]
        else:
            decider = config.make_optimizer()
            if inputs.parent_scalars:
                decider.load_state_dict(inputs.parent_scalars)
            applied = make_strategy(config).applied_weights(statistics, weights, decider)
        norms = statistics.norms()
        config_json = json.dumps(config.to_dict(), sort_keys=True)
        key = version_key(inputs.parent_key, inputs.update_ids, applied, config_json)
        identity = _VersionIdentity(inputs.model_name, inputs.version, key)
        compute = _computer(config, inputs.plan, identity, applied, norms, inputs.parent_scalars, inputs.batch_id)
        scalars = next_scalar_state(config, inputs.parent_scalars, applied, version=inputs.version, delta_norms=norms)
        shards = gathered.mapInPandas(compute, MODEL_SHARDS.schema)
        yield _ComputedVersion(inputs.version, key, tuple(applied), norms, scalars, shards)
    finally:
        gathered.unpersist()


def _hashes(shards: DataFrame, plan: ShardPlan, version: int) -> tuple[str, str]:
    """``(shards_root, parameter hash)`` of a version's ``model_shards`` rows; the values stream a few at a time."""
    digests = shards.select("shard_ordinal", "values_sha256").collect()
    ordered = [row.values_sha256 for row in sorted(digests, key=lambda row: row.shard_ordinal)]
    if len(ordered) != len(plan.shards):
        raise RuntimeError(f"version {version} has {len(ordered)} shards, expected {len(plan.shards)}")
    shapes = {name: list(shape) for name, shape in plan.shapes}
    streamed_hash = parameter_hash_streamed(shapes, _frame_values(shards, len(ordered))())
    return shards_root(ordered), streamed_hash


@dataclass(frozen=True)
class _VersionIdentity:
    model_name: str
    version: int
    key: str


def shards_of_version(
    spark: SparkSession, locations: TableLocations, model_name: str, version: int, key: str
) -> DataFrame:
    """``model_shards`` rows of one version made from one set of inputs (its :func:`version_key`)."""
    from pyspark.sql import functions

    return locations.read(spark, MODEL_SHARDS).where(
        (functions.col("model_name") == model_name)
        & (functions.col("version") == version)
        & (functions.col("version_key") == key)
    )


def _gather(
    spark: SparkSession,
    locations: TableLocations,
    model_name: str,
    plan: ShardPlan,
    parent: DataFrame,
    positions: Mapping[str, int],
) -> DataFrame:
    """One row per shard: the parent's values and slots, and every update's values of the shard, in order.

    ``parent``: the parent version's ``model_shards`` rows.
    """
    from pyspark.sql import functions

    ids = list(positions)
    chunks = (
        locations.read(spark, UPDATE_CHUNKS)
        .where((functions.col("model_name") == model_name) & functions.col("update_id").isin(ids))
        .select("update_id", "assembly_id", "chunk_index", "value")
    )  # a chunk stored twice gives the same pieces twice: the gatherer keeps one (no shuffle of the bytes here)
    assemblies = chunks.groupBy("update_id").agg(functions.countDistinct("assembly_id").alias("n")).collect()
    found = {row.update_id: row.n for row in assemblies}
    problems = {update_id: found.get(update_id, 0) for update_id in ids if found.get(update_id, 0) != 1}
    if problems:
        raise ValueError(f"updates without exactly one stored chunk assembly: {problems}")
    pieces = chunks.mapInPandas(_chunk_cutter(plan, dict(positions)), _PIECES)
    parent_pieces = parent.select(
        functions.col("shard_ordinal"),
        functions.lit(_PARENT).cast("long").alias("position"),
        functions.lit(0).cast("long").alias("value_offset"),
        functions.col("values").alias("data"),
        functions.col("optimizer_slots").alias("slots"),
    )
    # Partitions of about GATHERED_PARTITION_BYTES: Spark caches and hands Python a partition at a time.
    shard_bytes = (len(ids) + 3) * 4 * max(shard.size for shard in plan.shards)  # updates, parent, two slots
    shards_per_partition = max(1, GATHERED_PARTITION_BYTES // max(shard_bytes, 1))
    partitions = max(spark.sparkContext.defaultParallelism, -(-len(plan.shards) // shards_per_partition))
    return (
        pieces.unionByName(parent_pieces)
        .repartition(partitions, "shard_ordinal")
        .groupBy("shard_ordinal")
        .applyInPandas(_gatherer(plan, len(ids)), _GATHERED)
    )


def _chunk_cutter(
    plan: ShardPlan, positions: dict[str, int]
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """Executors: each stored chunk message cut into the shard pieces it holds (decoded to float32)."""
    starts, shards = _flat_starts(plan)

    def cut(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        for frame in frames:
            rows: list[tuple[int, int, int, bytes, None]] = []
            for update_id, value in zip(frame["update_id"], frame["value"], strict=True):
                chunk = decode_update_chunk(bytes(value))
                if not isinstance(chunk, UpdateChunk):
                    raise ValueError(f"a stored chunk of update {update_id!r} no longer decodes: {chunk}")
                _check_layout(plan, chunk, update_id)
                values = decode_chunk_body(chunk.layout, chunk.index, chunk.body)
                if not isinstance(values, np.ndarray):
                    raise ValueError(f"chunk {chunk.index} of update {update_id!r} no longer decodes: {values}")
                start, stop = chunk.layout.chunk_bounds(chunk.index)
                first = bisect_right(starts, start) - 1
                for shard, shard_start in zip(shards[first:], starts[first:], strict=True):
                    if shard_start >= stop:
                        break
                    low, high = max(start, shard_start), min(stop, shard_start + shard.size)
                    if low < high:
                        piece = values[low - start : high - start]
                        rows.append((shard.ordinal, positions[update_id], low - shard_start, piece.tobytes(), None))
            yield pd.DataFrame(rows, columns=["shard_ordinal", "position", "value_offset", "data", "slots"])

    return cut


def _flat_starts(plan: ShardPlan) -> tuple[list[int], list[Shard]]:
    """Each shard's first value in the flattened model (tensors in name order), and the shards, in order."""
    tensor_starts: dict[str, int] = {}
    offset = 0
    for name, shape in plan.shapes:
        tensor_starts[name] = offset
        offset += math.prod(shape)
    return [tensor_starts[shard.tensor] + shard.start for shard in plan.shards], list(plan.shards)


def _check_layout(plan: ShardPlan, chunk: UpdateChunk, update_id: str) -> None:
    shapes = tuple((tensor.name, tuple(tensor.shape)) for tensor in chunk.layout.tensors)
    if shapes != plan.shapes:
        raise ValueError(f"update {update_id!r} has tensors {shapes[:5]}..., the model {plan.shapes[:5]}...")


def _gatherer(plan: ShardPlan, update_count: int) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Executors: one shard's pieces joined into the parent's values and each update's, checked whole."""
    sizes = {shard.ordinal: shard.size for shard in plan.shards}

    def gather(frame: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd

        ordinal = int(frame["shard_ordinal"].iloc[0])
        size = sizes[ordinal]
        parent = frame[frame["position"] == _PARENT]
        if len(parent) != 1:
            raise ValueError(f"shard {ordinal}: the parent version has {len(parent)} rows of it in model_shards")
        deltas = []
        for position in range(update_count):
            pieces = frame[frame["position"] == position].sort_values("value_offset")
            pieces = pieces.drop_duplicates("value_offset")  # a chunk stored twice
            joined = b"".join(bytes(data) for data in pieces["data"])
            offsets = pieces["value_offset"].tolist()
            lengths = [len(data) // 4 for data in pieces["data"]]
            contiguous = offsets == [sum(lengths[:index]) for index in range(len(lengths))]
            if not contiguous or len(joined) != 4 * size:
                raise ValueError(f"shard {ordinal}: update {position} covers {len(joined) // 4} of {size} values")
            deltas.append(joined)
        row = {
            "shard_ordinal": ordinal,
            "parent": bytes(parent["data"].iloc[0]),
            "slots": bytes(parent["slots"].iloc[0]),
        }
        return pd.DataFrame([{**row, "deltas": deltas}])

    return gather


def _float32(data: bytes) -> npt.NDArray[np.float32]:
    """The float32 values of stored little-endian bytes, read-only and without a copy (nothing writes to them)."""
    return np.frombuffer(data, dtype="<f4")


def _collect_squared_sums(gathered: DataFrame, update_count: int) -> list[list[float]]:
    """Each update's :func:`aggregator.shards.squared_sum` of every shard (computed on executors)."""

    def partials(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        for frame in frames:
            rows = [
                (int(ordinal), position, squared_sum(_float32(bytes(data))))
                for ordinal, deltas in zip(frame["shard_ordinal"], frame["deltas"], strict=True)
                for position, data in enumerate(deltas)
            ]
            yield pd.DataFrame(rows, columns=["shard_ordinal", "position", "squared_sum"])

    result: list[list[float]] = [[] for _ in range(update_count)]
    for row in gathered.mapInPandas(partials, "shard_ordinal long, position long, squared_sum double").collect():
        result[row.position].append(row.squared_sum)
    return result


def _collect_distance_partials(gathered: DataFrame, factors: Sequence[float]) -> list[npt.NDArray[np.float64]]:
    """Every shard's pairwise squared distances of the scaled updates (computed on executors; Krum only)."""
    factors = list(factors)

    def partials(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        for frame in frames:
            rows = []
            for ordinal, deltas in zip(frame["shard_ordinal"], frame["deltas"], strict=True):
                scaled = [
                    scaled_float32(_float32(bytes(data)), factor) for data, factor in zip(deltas, factors, strict=True)
                ]
                rows.append((int(ordinal), pairwise_partials(scaled).reshape(-1).tolist()))
            yield pd.DataFrame(rows, columns=["shard_ordinal", "partial"])

    count = len(factors)
    rows = gathered.mapInPandas(partials, "shard_ordinal long, partial array<double>").collect()
    return [np.asarray(row.partial, dtype=np.float64).reshape(count, count) for row in rows]


def _computer(
    config: AggregationConfig,
    plan: ShardPlan,
    identity: _VersionIdentity,
    weights: Sequence[float],
    norms: Sequence[float],
    parent_scalars: Mapping[str, npt.NDArray[Any]],
    batch_id: int,
) -> FrameMap:
    """Executors: each gathered shard's new values and optimizer slots, as ``model_shards`` rows."""
    shards = {shard.ordinal: shard for shard in plan.shards}
    shapes = dict(plan.shapes)
    scalars = dict(parent_scalars)
    created_at = datetime.now(UTC)

    def compute(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        for frame in frames:
            rows = []
            for ordinal, parent, slots, deltas in frame[["shard_ordinal", "parent", "slots", "deltas"]].itertuples(
                index=False
            ):
                shard = shards[int(ordinal)]
                slot_values = decode_tensors(bytes(slots)) if slots is not None and len(slots) else {}
                values, new_slots = compute_shard(
                    config,
                    shard,
                    _float32(bytes(parent)),
                    [_float32(bytes(data)) for data in deltas],
                    weights,
                    shard_state(scalars, slot_values, shard),
                    version=identity.version,
                    delta_norms=norms,
                )
                shape = shapes[shard.tensor]
                rows.append(_shard_row(identity, shard, shape, values, new_slots, created_at, batch_id))
            yield pd.DataFrame(rows, columns=MODEL_SHARDS.schema.fieldNames())

    return compute


def _shard_row(
    identity: _VersionIdentity,
    shard: Shard,
    shape: tuple[int, ...],
    values: npt.NDArray[np.floating],
    slots: Mapping[str, npt.NDArray[Any]],
    created_at: datetime,
    batch_id: int,
) -> dict[str, Any]:
    data = np.asarray(values, dtype="<f4").tobytes()
    return {
        "model_name": identity.model_name,
        "version": identity.version,
        "version_key": identity.key,
        "shard_ordinal": shard.ordinal,
        "tensor": shard.tensor,
        "tensor_shape": list(shape),
        "shard_index": shard.index,
        "value_start": shard.start,
        "value_stop": shard.stop,
        "values": data,
        "values_sha256": sha256_hex(data),
        "optimizer_slots": encode_tensors({slot: np.asarray(array, dtype=np.float32) for slot, array in slots.items()}),
        "created_at": created_at,
        "batch_id": batch_id,
    }


def shard_rows(
    model_name: str,
    version: int,
    key: str,
    parameters: Mapping[str, npt.NDArray[np.floating]],
    optimizer_state: Mapping[str, npt.NDArray[Any]],
    config: AggregationConfig,
    *,
    batch_id: int,
) -> Iterator[dict[str, Any]]:
    """``model_shards`` rows of a version held whole (the first one, or a driver-made one), one shard at a time.

    ``key``: what names the version's rows (the first version's: e.g. its parameter hash).
    """
    plan = ShardPlan.of(parameters)
    _, slots = split_state(optimizer_state, config.make_optimizer())
    created_at = datetime.now(UTC)
    for shard in plan.shards:
        values = plan.cut(parameters, shard)[shard.tensor]
        shard_slots = {slot: plan.cut(by_name, shard)[shard.tensor] for slot, by_name in slots.items()}
        shape = dict(plan.shapes)[shard.tensor]
        identity = _VersionIdentity(model_name, version, key)
        yield _shard_row(identity, shard, shape, values, shard_slots, created_at, batch_id)


def write_shards(
    spark: SparkSession,
    locations: TableLocations,
    rows: Iterator[dict[str, Any]],
    *,
    app_id: str | None,
    batch_id: int | None,
) -> None:
    """Append :func:`shard_rows` to ``model_shards`` (once per ``(app_id, batch_id)``), handed over as Arrow."""
    locations.ensure_table(spark, MODEL_SHARDS)
    locations.append_frame(MODEL_SHARDS, shard_frame(spark, rows), app_id=app_id, batch_id=batch_id)


def shard_frame(spark: SparkSession, rows: Iterator[dict[str, Any]]) -> DataFrame:
    """:func:`shard_rows` as a DataFrame of ``model_shards`` rows, handed to the JVM as one Arrow table."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(MODEL_SHARDS.schema, timezone="UTC")
    return spark.createDataFrame(pa.Table.from_pylist(list(rows), schema=schema))


def version_shapes(
    spark: SparkSession, locations: TableLocations, model_name: str, version: int, key: str
) -> dict[str, list[int]]:
    """Each tensor's shape in a version kept as shards (no values are read)."""
    rows = (
        shards_of_version(spark, locations, model_name, version, key)
        .select("tensor", "tensor_shape")
        .distinct()
        .collect()
    )
    return {row.tensor: list(row.tensor_shape) for row in rows}


def version_values(
    spark: SparkSession,
    locations: TableLocations,
    model_name: str,
    version: int,
    key: str,
    *,
    shards_per_read: int = 16,
) -> Callable[[], Iterator[npt.NDArray[np.float32]]]:
    """The values of a version kept as shards, in order, for :func:`streaming_jobs.publisher.sharded_model_records`.

    Each call reads the shards again, ``shards_per_read`` at a time (16 MiB of float32 by default), so the driver
    holds a few shards, never the version.
    """
    table = shards_of_version(spark, locations, model_name, version, key)
    return _frame_values(table, table.count(), shards_per_read)


def _frame_values(
    table: DataFrame, count: int, shards_per_read: int = 16
) -> Callable[[], Iterator[npt.NDArray[np.float32]]]:
    """The ``values`` of ``count`` shard rows in ordinal order, read ``shards_per_read`` shards at a time."""

    def values() -> Iterator[npt.NDArray[np.float32]]:
        for first in range(0, count, shards_per_read):
            rows = (
                table.where(f"shard_ordinal >= {first} AND shard_ordinal < {first + shards_per_read}")
                .select("shard_ordinal", "values")
                .collect()
            )
            for row in sorted(rows, key=lambda row: row.shard_ordinal):
                yield _float32(row["values"])

    return values


def read_version(
    spark: SparkSession, locations: TableLocations, model_name: str, version: int, key: str
) -> tuple[dict[str, npt.NDArray[np.float32]], dict[str, npt.NDArray[np.float32]]]:
    """A version kept as shards, whole: its parameters, and its optimizer slots keyed ``slot/parameter``.

    Brings the whole model to the driver: for tests, and audits of models that fit it.
    """
    rows = shards_of_version(spark, locations, model_name, version, key).orderBy("shard_ordinal").collect()
    if not rows:
        raise ValueError(f"model_shards has no version {version} of {model_name!r}")
    shapes = tuple(sorted({(row.tensor, tuple(row.tensor_shape)) for row in rows}))
    plan = ShardPlan(shapes)
    parameters = plan.assemble({row.shard_ordinal: _float32(row["values"]) for row in rows})
    slot_pieces: dict[str, dict[int, npt.NDArray[np.floating]]] = {}
    for row in rows:
        for slot, array in decode_tensors(row.optimizer_slots).items():
            slot_pieces.setdefault(slot, {})[row.shard_ordinal] = array
    slots = {
        f"{slot}/{name}": array for slot, pieces in slot_pieces.items() for name, array in plan.assemble(pieces).items()
    }
    return parameters, slots
