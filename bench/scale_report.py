"""Scale benchmark, the reporting: per-size results, the tables, ``bench/results/scale-latest.json``.

Everything here reads :class:`SizeResult` values; nothing starts a process or touches Kafka.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.pipeline_report import RESULTS, text_table
from bench.scale_model import size_label

MB = 10**6
MIB = 2**20
PHASES = ("read_kafka", "decode", "load_state", "validate_aggregate", "write_versions", "publish", "write_updates")
"""The job's per-batch phases (its status file's ``seconds``), in the order a batch runs them."""
STATUS_WALL = "status_wall"
"""In ``SizeResult.phases``: the first chunk sent → the status of the batch that made the version."""
FIRST_BATCH_WAIT = "first_batch_wait"
"""In ``SizeResult.phases``: the first chunk sent → the start of the first batch's handler."""


@dataclass
class EncodingRun:
    """One encoding at one size: its Kafka bytes (always) and, where the job ran with it, its versions' times."""

    encoding: str
    chunks_per_update: int
    kafka_bytes_per_update: int
    buffer_size: int
    seconds: list[float] = field(default_factory=list)
    """Publish of the first chunk to the version being readable on ``fl.models``, one per timed version."""
    publish_seconds: list[float] = field(default_factory=list)
    """Of ``seconds``, sending the K updates' chunks until the broker acknowledged them all."""
    status: str = "not run"
    """``ok``, ``failed`` or ``not run`` (only its bytes were computed)."""
    error: str | None = None

    @property
    def kafka_bytes_per_version(self) -> int:
        """Chunk message bytes of the K updates that make one version."""
        return self.buffer_size * self.kafka_bytes_per_update

    @property
    def seconds_per_version(self) -> float | None:
        """The median of the timed versions."""
        return statistics.median(self.seconds) if self.seconds else None


@dataclass
class SizeResult:
    """Everything measured at one model size."""

    parameters: int
    tensors: int
    buffer_size: int
    update_bytes: int
    """The float32 values of one update (4 bytes a parameter): what the job aggregates per update."""
    encodings: dict[str, EncodingRun] = field(default_factory=dict)
    numpy_seconds: float | None = None
    """Decoding the K updates' chunks (``decode_update_chunk``: framing, header, body SHA-256; then
    ``decode_chunk_body``) and their float64 weighted sum, in this process."""
    numpy_sum_seconds: float | None = None
    """Of ``numpy_seconds``, the weighted sum alone."""
    driver_peak_rss_bytes: int | None = None
    jvm_peak_rss_bytes: int | None = None
    tree_peak_rss_bytes: int | None = None
    """Peaks of the job's Python driver, its JVM and its whole process tree (each its own maximum)."""
    driver_memory_gib: int | None = None
    aggregated_on: str = "driver"
    """Where the job made the versions: ``"driver"`` (numpy in its Python) or ``"executors"`` (shards on Spark)."""
    batch_bytes_budget: int | None = None
    startup_seconds: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per float32 version by job phase, the mean over the timed versions (with ``STATUS_WALL`` and
    ``FIRST_BATCH_WAIT``, which are not phases)."""
    batches_per_version: float | None = None
    status: str = "ok"
    error: str | None = None

    @property
    def float32(self) -> EncodingRun | None:
        """The float32 run (the headline figures)."""
        return self.encodings.get("float32")

    @property
    def seconds_per_version(self) -> float | None:
        """Median float32 seconds per version."""
        return self.float32.seconds_per_version if self.float32 else None

    @property
    def job_bytes_per_s(self) -> float | None:
        """Float32 update bytes the job aggregates per second: K × update bytes / seconds per version."""
        seconds = self.seconds_per_version
        return self.buffer_size * self.update_bytes / seconds if seconds else None

    @property
    def numpy_bytes_per_s(self) -> float | None:
        """The same bytes per second through chunk decoding and a numpy weighted sum (the floor)."""
        return self.buffer_size * self.update_bytes / self.numpy_seconds if self.numpy_seconds else None

    @property
    def numpy_sum_bytes_per_s(self) -> float | None:
        """The same bytes per second through the weighted sum alone."""
        return self.buffer_size * self.update_bytes / self.numpy_sum_seconds if self.numpy_sum_seconds else None

    @property
    def ratio(self) -> float | None:
        """Job throughput over the numpy floor's (decode and sum)."""
        job, floor = self.job_bytes_per_s, self.numpy_bytes_per_s
        return job / floor if job is not None and floor else None

    def fail(self, error: str) -> None:
        """Record that this size failed (the first failure is kept; what was measured before it stays)."""
        if self.status != "failed":
            self.status, self.error = "failed", error


def largest_ok(results: Sequence[SizeResult]) -> SizeResult | None:
    """The largest size whose float32 versions were all made."""
    return max((r for r in results if r.status == "ok"), key=lambda r: r.parameters, default=None)


def json_row(result: SizeResult) -> dict[str, object]:
    """One size's entry in ``scale-latest.json``."""
    float32 = result.float32
    return {
        "parameters": result.parameters,
        "tensors": result.tensors,
        "update_bytes": result.update_bytes,
        "chunks_per_update": float32.chunks_per_update if float32 else None,
        "kafka_bytes_per_update": {name: run.kafka_bytes_per_update for name, run in result.encodings.items()},
        "kafka_bytes_per_version": {name: run.kafka_bytes_per_version for name, run in result.encodings.items()},
        "chunks_per_update_by_encoding": {name: run.chunks_per_update for name, run in result.encodings.items()},
        "seconds_per_version": result.seconds_per_version,
        "seconds_each_version": float32.seconds if float32 else [],
        "publish_seconds_each_version": float32.publish_seconds if float32 else [],
        "job_bytes_per_s": result.job_bytes_per_s,
        "numpy_bytes_per_s": result.numpy_bytes_per_s,
        "numpy_sum_only_bytes_per_s": result.numpy_sum_bytes_per_s,
        "ratio": result.ratio,
        "driver_peak_rss_bytes": result.driver_peak_rss_bytes,
        "jvm_peak_rss_bytes": result.jvm_peak_rss_bytes,
        "tree_peak_rss_bytes": result.tree_peak_rss_bytes,
        "spark_driver_memory_gib": result.driver_memory_gib,
        "aggregated_on": result.aggregated_on,
        "batch_bytes_budget": result.batch_bytes_budget,
        "startup_seconds": result.startup_seconds,
        "batches_per_version": result.batches_per_version,
        "phase_seconds_per_version": result.phases,
        "encoding_runs": {
            name: {
                "status": run.status,
                "error": run.error,
                "seconds_per_version": run.seconds_per_version,
                "seconds_each_version": run.seconds,
            }
            for name, run in result.encodings.items()
            if run.status != "not run"
        },
        "status": result.status,
        "error": result.error,
    }


def document(results: Sequence[SizeResult], *, started_at: str, versions: int, buffer_size: int) -> dict[str, object]:
    """The whole ``scale-latest.json``: the machine, the workload, a row per size, the largest that worked."""
    best = largest_ok(results)
    return {
        "started_at": started_at,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "buffer_size": buffer_size,
        "versions_timed_per_size": versions,
        "largest_ok_parameters": best.parameters if best else None,
        "sizes": [json_row(result) for result in results],
    }


def write_results(payload: dict[str, object], results_dir: Path = RESULTS) -> Path:
    """Write ``scale-latest.json``; return its path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "scale-latest.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def _number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _mib(value: int | None) -> str:
    return "—" if value is None else f"{value / MIB:,.0f}"


def _mb(value: float | None) -> str:
    return "—" if value is None else f"{value / MB:,.1f}"


def _status(status: str, error: str | None, width: int = 100) -> str:
    if status != "failed":
        return status
    text = " ".join((error or "").split())
    return f"failed: {text[:width]}{'…' if len(text) > width else ''}"


def format_sizes(results: Sequence[SizeResult]) -> str:
    """The main table: one line per size, float32."""
    header = (
        "parameters", "update MB", "chunks/upd", "Kafka MB/version", "s/version", "job MB/s", "numpy MB/s",
        "ratio", "sum-only MB/s", "made on", "driver py MiB", "JVM MiB", "tree MiB", "heap", "status",
    )  # fmt: skip
    lines = []
    for r in results:
        float32 = r.float32
        runs = f" ({len(float32.seconds)})" if float32 and float32.seconds else ""
        lines.append(
            (
                f"{size_label(r.parameters)} ({r.tensors} tensors)",
                _mb(r.update_bytes),
                str(float32.chunks_per_update) if float32 else "—",
                _mb(float32.kafka_bytes_per_version) if float32 else "—",
                _number(r.seconds_per_version, 2) + runs,
                _mb(r.job_bytes_per_s),
                _mb(r.numpy_bytes_per_s),
                _number(r.ratio, 3),
                _mb(r.numpy_sum_bytes_per_s),
                r.aggregated_on,
                _mib(r.driver_peak_rss_bytes),
                _mib(r.jvm_peak_rss_bytes),
                _mib(r.tree_peak_rss_bytes),
                f"{r.driver_memory_gib}g" if r.driver_memory_gib else "—",
                _status(r.status, r.error),
            )
        )
    return text_table(header, lines)


def format_encodings(results: Sequence[SizeResult]) -> str:
    """Kafka bytes per encoding and size, with the job's seconds per version where it ran with the encoding."""
    header = ("parameters", "encoding", "chunks/upd", "bytes/update", "MB/version", "vs float32", "s/version", "run")
    lines = []
    for r in results:
        float32 = r.float32
        for name, run in r.encodings.items():
            share = run.kafka_bytes_per_update / float32.kafka_bytes_per_update if float32 else None
            lines.append(
                (
                    size_label(r.parameters),
                    name,
                    str(run.chunks_per_update),
                    f"{run.kafka_bytes_per_update:,}",
                    _mb(run.kafka_bytes_per_version),
                    _number(share, 3),
                    _number(run.seconds_per_version, 2),
                    _status(run.status, run.error, 60),
                )
            )
    return text_table(header, lines)


def format_phases(results: Sequence[SizeResult]) -> str:
    """Where a float32 version's seconds go: the job's phases summed over its batches, the rest outside them.

    The wall is first chunk sent → the status of the batch that made the version (written after that batch's
    updates are durable, so a little after the version is readable); "outside" is the wall less the phases:
    sending, trigger waits, Spark's planning and its Kafka fetch before each handler.
    """
    header = ("parameters", "batches", "to 1st batch", *PHASES, "outside", "wall")
    lines = []
    for r in results:
        wall = r.phases.get(STATUS_WALL)
        if wall is None or r.seconds_per_version is None:
            continue
        inside = sum(seconds for phase, seconds in r.phases.items() if phase not in (STATUS_WALL, FIRST_BATCH_WAIT))
        lines.append(
            (
                size_label(r.parameters),
                _number(r.batches_per_version, 1),
                _number(r.phases.get(FIRST_BATCH_WAIT), 2),
                *(_number(r.phases.get(phase), 2) for phase in PHASES),
                _number(wall - inside, 2),
                _number(wall, 2),
            )
        )
    return text_table(header, lines)


def format_verdict(results: Sequence[SizeResult]) -> str:
    """One line: the largest model that worked, and the sizes that failed."""
    best = largest_ok(results)
    failed = [size_label(r.parameters) for r in results if r.status == "failed"]
    head = (
        f"largest model that worked: {size_label(best.parameters)} parameters ({_mb(best.update_bytes)} MB a float32 "
        "update)"
        if best
        else "no size worked"
    )
    return head + (f"; failed: {', '.join(failed)}" if failed else "")
