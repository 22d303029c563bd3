"""Executor-scale benchmark, the child processes: one phase of one model size each, so memory is measured cleanly.

``python -m bench.executor_scale_worker PHASE FOLDER SPEC`` with ``PHASE`` one of

- ``prepare``: K synthetic chunked float32 updates appended to ``update_chunks`` under ``FOLDER`` (a few dozen
  chunks a commit) and the parent, version 1, to ``model_shards`` (a few dozen shards a commit, the fresh
  optimizer's state: no slots). Not measured. Writes ``SPEC`` (JSON) with what the other phases need.
- ``aggregate``: Spark on ``FEDSTREAM_SPARK_MASTER``; once the executors are registered and warm (Python
  workers started, both tables' Delta logs read once), one
  :func:`streaming_jobs.executor_aggregation.aggregate_on_executors` call. The call's start and end (epoch
  seconds) are printed as ``@window start|end T`` lines around it, so the parent process, which samples this
  process tree's RSS, picks the call's window; a last JSON line holds the result.
- ``numpy``: the same updates regenerated from their seeds (not timed); timed: every chunk decoded
  (``decode_update_chunk``, SHA-256 included, and ``decode_chunk_body``) and the FedBuff + Adam version made whole
  by ``aggregator`` (``Strategy.aggregate``), or, where ``MemAvailable`` cannot hold the K deltas, accumulated
  update by update (float64 Σ w·Δ in the same order, then the same optimizer step). Peak RSS is this process's
  own ``ru_maxrss`` (it does nothing else). A last JSON line holds the result.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aggregator import AggregationConfig, PendingUpdate, ShardPlan, make_strategy
from aggregator.shard_step import split_state
from bench.scale_model import FLOAT32_BYTES, model_layout, model_name, random_delta
from producers.updates import build_chunked_update
from schemas.chunks import UpdateChunk, decode_chunk_body, decode_update_chunk
from schemas.rows import UpdateChunkRow
from schemas.tensors import Tensors, sha256_hex

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MAX_MESSAGE_BYTES = 1_000_000
CHUNKS_PER_COMMIT = 40
SHARDS_PER_COMMIT = 32
PARENT_SEED = 7
PARENT_KEY = "executor-scale-parent"
"""The key (``version_key``) version 1's shards are written under."""
UPDATE_SEED = 1000
WINDOW_MARK = "@window"
GIB = 2**30


def aggregation_config(updates: int) -> AggregationConfig:
    """FedBuff with K = ``updates`` and a server Adam step: what the benchmark aggregates."""
    return AggregationConfig.from_dict(
        {
            "mode": "fedbuff",
            "buffer_size": updates,
            "server_optimizer": "adam",
            "server_learning_rate": 0.01,
            "max_wait_seconds": None,
        }
    )


@dataclass(frozen=True)
class Spec:
    """One size's synthetic updates: enough to write them (prepare) and to regenerate them (numpy)."""

    parameters: int
    model_name: str
    update_ids: list[str]
    base_versions: list[int]
    sample_counts: list[int]
    seeds: list[int]
    chunks_per_update: int = 0

    @classmethod
    def of(cls, parameters: int, updates: int) -> Spec:
        """K updates of a model of ``parameters`` values: ids from a hash, base versions 0 and 1 in turn."""
        ids = [hashlib.md5(f"executor-scale-{parameters}-{index}".encode()).hexdigest() for index in range(updates)]
        return cls(
            parameters=parameters,
            model_name=model_name(parameters),
            update_ids=ids,
            base_versions=[index % 2 for index in range(updates)],
            sample_counts=[10 + index for index in range(updates)],
            seeds=[UPDATE_SEED + index for index in range(updates)],
        )

    def pending(self, index: int, delta: Tensors) -> PendingUpdate:
        """Update ``index`` as the buffer holds it (``delta={}``: metadata only, enough for the weights)."""
        return PendingUpdate(
            update_id=self.update_ids[index],
            delta=delta,
            base_version=self.base_versions[index],
            sample_count=self.sample_counts[index],
            received_at=T0,
            client_id=f"client-{index}",
        )

    def chunks(self, index: int) -> list[bytes]:
        """Update ``index``'s ``fl.updates`` chunk values (float32, at most 1,000,000 bytes each)."""
        _, values = build_chunked_update(
            client_id=f"client-{index}",
            model_name=self.model_name,
            base_version=self.base_versions[index],
            sample_count=self.sample_counts[index],
            delta=random_delta(model_layout(self.parameters), seed=self.seeds[index]),
            max_message_bytes=MAX_MESSAGE_BYTES,
            update_id=self.update_ids[index],
        )
        return values

    def parent(self) -> Tensors:
        """Version 1, the parent the version is made from (small random values)."""
        return random_delta(model_layout(self.parameters), seed=PARENT_SEED, scale=0.1)

    def plan(self) -> ShardPlan:
        """The model's shard plan (tensors by name)."""
        layout = model_layout(self.parameters)
        return ShardPlan(tuple((name, layout[name]) for name in sorted(layout)))

    def save(self, path: Path) -> None:
        """Write the spec as JSON."""
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Spec:
        """Read a spec written by :meth:`save`."""
        return cls(**json.loads(path.read_text()))


def prepare(folder: Path, spec_path: Path, parameters: int, updates: int) -> None:
    """Append the K updates' chunks to ``update_chunks`` and version 1 to ``model_shards``; save the spec."""
    from streaming_jobs.executor_aggregation import shard_rows, write_shards
    from streaming_jobs.spark_session import get_spark
    from streaming_jobs.tables import UPDATE_CHUNKS, TableLocations

    spec = Spec.of(parameters, updates)
    spark = get_spark("fedstream-executor-scale-prepare")
    try:
        locations = TableLocations(str(folder / "tables"))
        locations.ensure_table(spark, UPDATE_CHUNKS)
        offset = 0
        chunk_counts = set()
        for index in range(updates):
            values = spec.chunks(index)
            chunk_counts.add(len(values))
            for start in range(0, len(values), CHUNKS_PER_COMMIT):
                rows = [
                    _chunk_row(value, offset + position)
                    for position, value in enumerate(values[start : start + CHUNKS_PER_COMMIT])
                ]
                locations.append(spark, UPDATE_CHUNKS, rows, app_id=None, batch_id=None)
            offset += len(values)
            del values
        config = aggregation_config(updates)
        state = config.make_optimizer().state_dict()
        shards = shard_rows(spec.model_name, 1, PARENT_KEY, spec.parent(), state, config, batch_id=0)
        while batch := list(itertools.islice(shards, SHARDS_PER_COMMIT)):
            write_shards(spark, locations, iter(batch), app_id=None, batch_id=None)
    finally:
        spark.stop()
    (chunks_per_update,) = chunk_counts
    Spec(**{**asdict(spec), "chunks_per_update": chunks_per_update}).save(spec_path)


def _chunk_row(value: bytes, offset: int) -> UpdateChunkRow:
    chunk = decode_update_chunk(value)
    if not isinstance(chunk, UpdateChunk):
        raise RuntimeError(f"a chunk just encoded does not decode: {chunk}")
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


def aggregate(folder: Path, spec_path: Path) -> dict[str, Any]:
    """One version made on the executors, timed over the whole :func:`aggregate_on_executors` call."""
    from streaming_jobs.executor_aggregation import aggregate_on_executors
    from streaming_jobs.spark_session import get_spark
    from streaming_jobs.tables import TableLocations

    spec = Spec.load(spec_path)
    config = aggregation_config(len(spec.update_ids))
    spark = get_spark("fedstream-executor-scale")
    try:
        context = spark.sparkContext
        executors = _await_executors(spark)
        locations = TableLocations(str(folder / "tables"))
        _warm_up(spark, locations)
        pending = [spec.pending(index, {}) for index in range(len(spec.update_ids))]
        weights = make_strategy(config).weights(pending, 1)
        optimizer = config.make_optimizer()
        scalars, _ = split_state(optimizer.state_dict(), optimizer)
        _mark("start")
        started = time.perf_counter()
        made = aggregate_on_executors(
            spark,
            locations,
            model_name=spec.model_name,
            config=config,
            plan=spec.plan(),
            parent_version=1,
            parent_key=PARENT_KEY,
            parent_scalars=scalars,
            update_ids=spec.update_ids,
            weights=weights,
            app_id="executor-scale",
            batch_id=2,
        )
        seconds = time.perf_counter() - started
        _mark("end")
        return {"seconds": seconds, "master": context.master, "executors": executors, "root": made.root}
    finally:
        spark.stop()


def _await_executors(spark: Any) -> int:
    """Executors registered, waiting up to a minute for a ``local-cluster`` master's two (as executor_scenario)."""
    context = spark.sparkContext
    wanted = _cluster_executors(context.master)
    executors = 0
    for _ in range(120):
        executors = int(context._jsc.sc().getExecutorIds().size())
        if executors >= wanted:
            break
        time.sleep(0.5)
    return executors


def _cluster_executors(master: str) -> int:
    """``local-cluster[N,cores,memory]`` → N; any other master → 0 (nothing to wait for)."""
    if not master.startswith("local-cluster["):
        return 0
    return int(master.removeprefix("local-cluster[").split(",")[0])


def _warm_up(spark: Any, locations: Any) -> None:
    """Warm what a long-running job has warm: every executor's Python worker, the tables' Delta logs, the JIT.

    Without it the first Delta query of the session (the call's check of the stored assemblies) takes half a
    minute on 2 cores, whatever the model's size.
    """
    from streaming_jobs.tables import MODEL_SHARDS, UPDATE_CHUNKS

    def identity(frames: Iterator[Any]) -> Iterator[Any]:
        yield from frames

    partitions = max(2, spark.sparkContext.defaultParallelism)
    spark.range(0, partitions, numPartitions=partitions).mapInPandas(identity, "id long").collect()
    locations.read(spark, UPDATE_CHUNKS).groupBy("update_id").count().collect()
    locations.read(spark, MODEL_SHARDS).groupBy("version").count().collect()


def _mark(edge: str) -> None:
    print(f"{WINDOW_MARK} {edge} {time.time():.3f}", flush=True)


def numpy_floor(spec_path: Path) -> dict[str, Any]:
    """Seconds to decode every update's chunks and make the version in one process; the result's root."""
    from streaming_jobs.executor_aggregation import shards_root

    spec = Spec.load(spec_path)
    count = len(spec.update_ids)
    config = aggregation_config(count)
    strategy = make_strategy(config)
    optimizer = config.make_optimizer()
    parent = spec.parent()
    update_bytes = FLOAT32_BYTES * spec.parameters
    needed = count * update_bytes + 12 * update_bytes + GIB
    available = _memory_available_bytes()
    streaming = available < needed
    weights = strategy.weights([spec.pending(index, {}) for index in range(count)], 1)
    decode_seconds = aggregate_seconds = 0.0
    accumulator: dict[str, npt.NDArray[np.float64]] = {}
    pending: list[PendingUpdate] = []
    for index in range(count):
        chunks = spec.chunks(index)
        started = time.perf_counter()
        delta = _decode(chunks)
        decoded = time.perf_counter()
        decode_seconds += decoded - started
        del chunks
        if streaming:
            for name, values in delta.items():
                total = accumulator.setdefault(name, np.zeros(values.shape, dtype=np.float64))
                total += values.astype(np.float64) * weights[index]
            aggregate_seconds += time.perf_counter() - decoded
        else:
            pending.append(spec.pending(index, delta))
        del delta
    started = time.perf_counter()
    if streaming:
        combined = {name: total.astype(np.float32) for name, total in accumulator.items()}
        accumulator.clear()
        new_params = optimizer.step(parent, combined)
    else:
        new_params = strategy.aggregate(parent, 1, pending, optimizer).new_params
    aggregate_seconds += time.perf_counter() - started
    plan = spec.plan()
    digests = [sha256_hex(np.asarray(plan.cut(new_params, s)[s.tensor], dtype="<f4").tobytes()) for s in plan.shards]
    return {
        "seconds": decode_seconds + aggregate_seconds,
        "decode_seconds": decode_seconds,
        "aggregate_seconds": aggregate_seconds,
        "streaming": streaming,
        "memory_available_bytes": available,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "root": shards_root(digests),
    }


def _decode(chunks: list[bytes]) -> Tensors:
    """An update's float32 tensors from its chunks (views of one flat array, in layout order)."""
    flat: npt.NDArray[np.float32] | None = None
    layout = None
    for value in chunks:
        chunk = decode_update_chunk(value)
        if not isinstance(chunk, UpdateChunk):
            raise RuntimeError(f"a chunk does not decode: {chunk}")
        values = decode_chunk_body(chunk.layout, chunk.index, chunk.body)
        if not isinstance(values, np.ndarray):
            raise RuntimeError(f"a chunk body does not decode: {values}")
        if flat is None:
            layout = chunk.layout
            flat = np.empty(layout.total_elements, dtype=np.float32)
        start, stop = chunk.layout.chunk_bounds(chunk.index)
        flat[start:stop] = values
    if flat is None or layout is None:
        raise RuntimeError("an update without chunks")
    delta: Tensors = {}
    offset = 0
    for tensor in layout.tensors:
        size = int(np.prod(tensor.shape))
        delta[tensor.name] = flat[offset : offset + size].reshape(tuple(tensor.shape))
        offset += size
    return delta


def _memory_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str]) -> int:
    """Run one phase; ``aggregate`` and ``numpy`` print their result as the last JSON line."""
    phase, folder, spec_path = argv[0], Path(argv[1]), Path(argv[2])
    if phase == "prepare":
        prepare(folder, spec_path, int(argv[3]), int(argv[4]))
        return 0
    if phase == "aggregate":
        result = aggregate(folder, spec_path)
    elif phase == "numpy":
        result = numpy_floor(spec_path)
    else:
        raise SystemExit(f"unknown phase {phase!r}: prepare, aggregate or numpy")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
