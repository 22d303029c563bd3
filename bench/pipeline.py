"""Pipeline benchmark: the streaming job against a bare loop, on the benchmark's own broker.

``python -m bench.pipeline [--quick]`` (or ``make bench-pipeline``) measures, for the ``har-cnn`` model
(104,358 float32 parameters, ~420 KB per update) and FedBuff with buffer size K = 10:

1. sustained throughput: a backlog of B updates is pre-loaded onto ``fl.updates``, then the runner starts;
   timed from the start of its first micro-batch to the status that shows version B/K;
2. latency: the runner idle and caught up, K updates are published in one acknowledged burst; timed from
   the acknowledgement to the new version being readable on ``fl.models``;
3. the floor: both workloads through ``bench.bare_loop`` (kafka-python, decode, validate, ``fedbuff_step``,
   publish; no Spark, no Delta), and the job/bare-loop ratios;
4. peak RSS of each runner's process tree for backlogs B and 10×B, and of one HAPT client process.

Everything runs in a temporary ``FEDSTREAM_HOME`` with a broker on port 29092 (override with ``--port``),
which is stopped at the end. It prints a table and writes CSVs under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.processes import BatchStatus, RssSample, Runner, RunnerFailedError
from bench.workload import UpdateFactory, initial_parameters, publish_backlog, publish_model, signing_supported
from schemas.kafka_settings import KafkaSettings
from schemas.tensors import Tensors, encode_tensors

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS = REPOSITORY / "bench" / "results"
MODEL_NAME = "har-cnn"
MIB = 2**20

TARGET_UPDATES_PER_SECOND = 100.0
TARGET_P50_LATENCY_SECONDS = 3.0
TARGET_PEAK_RISE_PERCENT = 20.0


@dataclass(frozen=True)
class BenchSettings:
    """What to run; the defaults are the issue's workload, ``quick()`` a smaller one."""

    backlog: int = 300
    backlog_factor: int = 10
    latency_repeats: int = 20
    buffer_size: int = 10
    max_offsets: int = 500
    extra_max_offsets: int | None = 100
    """A second ``--max-offsets-per-trigger`` tried on the small backlog (job only); None skips it."""
    trigger_seconds: float = 1.0
    register_every: int = 10
    port: int = 29092
    client_subject: int | None = 1
    keep_state: bool = False

    @classmethod
    def quick(cls) -> BenchSettings:
        """A run of a few minutes: smaller backlogs, fewer bursts, no second trigger size."""
        return cls(backlog=100, latency_repeats=10, extra_max_offsets=None)

    @property
    def aggregation(self) -> dict[str, object]:
        """Every update (all based on version 0) is accepted: no staleness bound, no deadline."""
        return {"buffer_size": self.buffer_size, "max_staleness": None, "max_wait_seconds": None}

    def check(self) -> None:
        """Raise ``ValueError`` for a workload that cannot end exactly on a version."""
        for name in ("backlog", "backlog_factor", "buffer_size", "max_offsets", "latency_repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "latency_repeats" else 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.backlog % self.buffer_size:
            raise ValueError(f"backlog {self.backlog} must be a multiple of buffer_size {self.buffer_size}")


@dataclass
class BacklogRun:
    """One runner draining one pre-loaded backlog."""

    runner: str
    max_offsets: int
    backlog: int
    publish_seconds: float
    startup_seconds: float
    seconds: float
    batches: list[BatchStatus]
    peak: RssSample | None
    reported_batches: int

    @property
    def updates_per_second(self) -> float:
        """Updates aggregated per second, first micro-batch to the last version."""
        return self.backlog / self.seconds

    @property
    def peak_mib(self) -> float:
        """Peak RSS of the runner's process tree, MiB."""
        return self.peak.total_bytes / MIB if self.peak else float("nan")

    def phase_totals(self) -> dict[str, float]:
        """Seconds per phase summed over the run's micro-batches."""
        totals: dict[str, float] = {}
        for batch in self.batches:
            for phase, seconds in batch.seconds.items():
                totals[phase] = totals.get(phase, 0.0) + seconds
        return totals


@dataclass
class LatencyRun:
    """Burst-to-version latencies of one runner, with the micro-batches that served the bursts."""

    runner: str
    seconds: list[float]
    batches: list[BatchStatus] = field(default_factory=list)
    batches_per_burst: list[int] = field(default_factory=list)

    def percentile(self, fraction: float) -> float:
        """Nearest-rank percentile (``fraction`` in (0, 1])."""
        ordered = sorted(self.seconds)
        return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass(frozen=True)
class ClientRun:
    """One client process: train one round on one HAPT subject and publish."""

    subject: int
    peak_rss_kib: int
    report: dict[str, object]


@dataclass
class Report:
    """Everything measured in one benchmark run."""

    settings: BenchSettings
    started_at: str
    backlogs: list[BacklogRun] = field(default_factory=list)
    latencies: list[LatencyRun] = field(default_factory=list)
    client: ClientRun | None = None
    notes: list[str] = field(default_factory=list)

    def backlog_run(self, runner: str, backlog: int, max_offsets: int | None = None) -> BacklogRun | None:
        """The run of ``runner`` over ``backlog`` (with ``max_offsets`` when given)."""
        for run in self.backlogs:
            if run.runner == runner and run.backlog == backlog and max_offsets in (None, run.max_offsets):
                return run
        return None

    def latency(self, runner: str) -> LatencyRun | None:
        """The latency run of ``runner``."""
        return next((run for run in self.latencies if run.runner == runner), None)


class Bench:
    """Owns the benchmark's stack, its folders and the runners it starts."""

    def __init__(self, settings: BenchSettings, home: Path, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.home = home
        self.say = say
        self.kafka = KafkaSettings(bootstrap_servers=f"localhost:{settings.port}")
        self.parameters: Tensors = initial_parameters(MODEL_NAME)
        self.initial_model = home / "initial-model.safetensors"
        self.initial_model.write_bytes(encode_tensors(self.parameters))
        self.keys_dir = home / "client-keys" if signing_supported() else None
        self.factory = UpdateFactory(MODEL_NAME, self.parameters, keys_dir=self.keys_dir)
        self.random = random.Random(0)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
        }

    def runner(self, kind: str, max_offsets: int, label: str) -> Runner:
        """A job or bare-loop runner over its own folder (tables, checkpoint, status, log)."""
        folder = self.home / "runs" / label
        folder.mkdir(parents=True)
        status_file = folder / "status.json"
        aggregation = json.dumps(self.settings.aggregation)
        if kind == "job":
            command = [
                sys.executable, "-m", "fedstream.cli", "job",
                "--model-name", MODEL_NAME,
                "--initial-model", str(self.initial_model),
                "--tables-root", str(folder / "tables"),
                "--checkpoint", str(folder / "checkpoint"),
                "--status-file", str(status_file),
                "--aggregation", aggregation,
                "--max-offsets-per-trigger", str(max_offsets),
                "--trigger-seconds", str(self.settings.trigger_seconds),
                "--register-every", str(self.settings.register_every),
                "--experiment", f"bench-{label}",
                *(["--enrol-public-keys", str(self.keys_dir)] if self.keys_dir else []),
            ]  # fmt: skip
        else:
            command = [
                sys.executable, "-m", "bench.bare_loop",
                "--model-name", MODEL_NAME,
                "--initial-model", str(self.initial_model),
                "--status-file", str(status_file),
                "--aggregation", aggregation,
                "--max-records", str(max_offsets),
                *(["--public-keys", str(self.keys_dir)] if self.keys_dir else []),
            ]  # fmt: skip
        return Runner(name=kind, command=command, folder=folder, env=self.env, status_file=status_file, cwd=folder)

    def reset(self) -> None:
        """Delete and recreate both topics: each measurement starts from empty topics."""
        from devstack.topics import reset_topics

        reset_topics(self.kafka)

    def backlog(
        self, kind: str, backlog: int, max_offsets: int, latency_repeats: int
    ) -> tuple[BacklogRun, LatencyRun | None]:
        """Pre-load ``backlog`` updates, start the runner, time the drain; then, optionally, the bursts."""
        label = f"{kind}-b{backlog}-m{max_offsets}"
        self.reset()
        size = backlog * self.factory.message_bytes / MIB
        self.say(f"{label}: publishing a backlog of {backlog} updates ({size:,.0f} MiB) ...")
        publish_seconds = publish_backlog(self.kafka, self.factory, backlog)
        self.say(f"{label}: backlog on fl.updates in {publish_seconds:.1f}s; starting the {kind} ...")
        runner = self.runner(kind, max_offsets, label)
        runner.start()
        try:
            target = backlog // self.settings.buffer_size
            done = runner.wait_for_version(target, timeout_seconds=300 + 0.5 * backlog)
            follower, sampler = runner.follower, runner.sampler
            if follower is None or sampler is None:
                raise RuntimeError("runner not started")
            batches = follower.ordered(until=done.finished_at)
            first = batches[0]
            if follower.latest.get("rejected"):
                raise RunnerFailedError(f"{label} rejected updates: {follower.latest.get('rejected_by_reason')}")
            run = BacklogRun(
                runner=kind,
                max_offsets=max_offsets,
                backlog=backlog,
                publish_seconds=publish_seconds,
                startup_seconds=first.started_at - runner.started_at,
                seconds=done.finished_at - first.started_at,
                batches=batches,
                peak=sampler.peak(until=done.finished_at),
                reported_batches=done.batch_id + 1,
            )
            if len(batches) != run.reported_batches:
                self.say(f"{label}: WARNING phases of {len(batches)} of {run.reported_batches} batches were seen")
            self.say(
                f"{label}: {backlog} updates in {run.seconds:.1f}s = {run.updates_per_second:.1f}/s "
                f"({len(batches)} batches, start-up {run.startup_seconds:.1f}s, peak RSS {run.peak_mib:,.0f} MiB)"
            )
            latency = self.latency(kind, runner, latency_repeats) if latency_repeats else None
        finally:
            runner.stop()
            if not self.settings.keep_state:
                for folder in ("tables", "checkpoint"):
                    shutil.rmtree(runner.folder / folder, ignore_errors=True)
        return run, latency

    def latency(self, kind: str, runner: Runner, repeats: int) -> LatencyRun:
        """Bursts of K acknowledged updates into the idle runner; seconds from acknowledgement to new version."""
        from producers.transport import GlobalModelSubscriber, UpdatePublisher

        follower = runner.follower
        if follower is None:
            raise RuntimeError("runner not started")
        current = int(follower.latest["current_version"])
        subscriber = GlobalModelSubscriber(self.kafka, MODEL_NAME)
        publisher = UpdatePublisher(self.kafka)
        result = LatencyRun(runner=kind, seconds=[])
        try:
            if subscriber.wait_for_version_after(current - 1, 120) != current:
                raise RunnerFailedError(f"{kind}: fl.models does not show version {current}")
            runner.wait_until_idle(current)
            self.say(f"{kind}: caught up at version {current}; {repeats} bursts of {self.settings.buffer_size} ...")
            for _ in range(repeats):
                time.sleep(self.random.uniform(0.3, 0.3 + self.settings.trigger_seconds))  # any trigger phase
                burst = [self.factory.make() for _ in range(self.settings.buffer_size)]
                burst_at = time.time()
                for client_id, value in burst:
                    publisher.publish(client_id, value, wait=False)
                publisher.flush()
                acknowledged = time.perf_counter()
                newest = subscriber.wait_for_version_after(current, 120)
                seen = time.perf_counter()
                if newest != current + 1:
                    raise RunnerFailedError(f"{kind}: expected version {current + 1} on fl.models, got {newest}")
                current = newest
                result.seconds.append(seen - acknowledged)
                runner.wait_until_idle(current)
                served = follower.ordered(since=burst_at)
                result.batches += served
                result.batches_per_burst.append(len(served))
        finally:
            publisher.close()
            subscriber.close()
        self.say(
            f"{kind}: latency p50 {result.percentile(0.5):.3f}s p95 {result.percentile(0.95):.3f}s "
            f"over {len(result.seconds)} bursts"
        )
        return result

    def client(self, subject: int) -> ClientRun:
        """Peak RSS of one client process (``os.wait4`` of the child), training on one subject."""
        self.reset()
        publish_model(self.kafka, MODEL_NAME, self.parameters)
        self.say(f"client: training on HAPT subject {subject} and publishing ...")
        log_file = self.home / "client.log"
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.client_rss", "--subject", str(subject), "--model-name", MODEL_NAME],
                stdout=subprocess.PIPE,
                stderr=log,
                env=self.env,
                cwd=self.home,
            )
            stdout = process.stdout.read() if process.stdout else b""
            _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS, not all children's
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"the client process failed ({process.returncode}):\n{log_file.read_text()[-3000:]}")
        report = json.loads(stdout.decode().strip().splitlines()[-1])
        run = ClientRun(subject=subject, peak_rss_kib=usage.ru_maxrss, report=report)
        self.say(f"client: peak RSS {run.peak_rss_kib / 1024:,.0f} MiB, {report}")
        return run


def run_benchmark(settings: BenchSettings, say: Callable[[str], None]) -> Report:
    """Run every measurement on a fresh stack in a temporary ``FEDSTREAM_HOME``; always stop the broker."""
    settings.check()
    home = Path(tempfile.mkdtemp(prefix="fedstream-bench-"))
    os.environ.update(
        FEDSTREAM_HOME=str(home),
        FEDSTREAM_KAFKA_PORT=str(settings.port),
        FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS=f"localhost:{settings.port}",
    )
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)
    from devstack.local_stack import stack_down, stack_up

    report = Report(settings=settings, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    say(f"state folder {home}; broker on port {settings.port}")
    try:
        status = stack_up()
        if not status.healthy:
            raise RuntimeError(status.describe())
        bench = Bench(settings, home, say)
        signed = "signed (Ed25519, keys enrolled in the job)" if bench.keys_dir else "unsigned"
        report.notes.append(f"updates {signed}; staleness bound and buffer deadline off, so every update is accepted")
        report.notes.append("kafka-python computes CRC-32C with the crc32c package in every process")
        say(f"{MODEL_NAME}: update message {bench.factory.message_bytes:,} bytes, {signed}")
        if settings.client_subject is not None:
            report.client = bench.client(settings.client_subject)
        small, large = settings.backlog, settings.backlog * settings.backlog_factor
        for kind in ("job", "bare"):
            run, _ = bench.backlog(kind, small, settings.max_offsets, latency_repeats=0)
            report.backlogs.append(run)
            if kind == "job" and settings.extra_max_offsets:
                run, _ = bench.backlog(kind, small, settings.extra_max_offsets, latency_repeats=0)
                report.backlogs.append(run)
            run, latency = bench.backlog(kind, large, settings.max_offsets, settings.latency_repeats)
            report.backlogs.append(run)
            if latency is not None:
                report.latencies.append(latency)
    finally:
        stack_down()
        if settings.keep_state:
            say(f"state kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return report


# ---------------------------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Row:
    """One line of the summary table."""

    measure: str
    unit: str
    job: float | None
    bare: float | None
    target: str
    met: bool | None

    @property
    def ratio(self) -> float | None:
        """Job value over bare-loop value."""
        if self.job is None or self.bare is None or self.bare == 0:
            return None
        return self.job / self.bare


def summary_rows(report: Report) -> list[Row]:
    """The table's rows: throughput, latency and memory, with targets."""
    settings = report.settings
    small, large = settings.backlog, settings.backlog * settings.backlog_factor
    rows: list[Row] = []
    throughput_runs = [(small, settings.max_offsets), (large, settings.max_offsets)]
    if settings.extra_max_offsets:
        throughput_runs.insert(1, (small, settings.extra_max_offsets))
    for backlog, max_offsets in throughput_runs:
        job, bare = report.backlog_run("job", backlog, max_offsets), report.backlog_run("bare", backlog)
        job_rate = job.updates_per_second if job else None
        rows.append(
            Row(
                f"throughput, backlog {backlog}, max offsets {max_offsets}",
                "updates/s",
                job_rate,
                bare.updates_per_second if bare else None,
                f">= {TARGET_UPDATES_PER_SECOND:g}",
                None if job_rate is None else job_rate >= TARGET_UPDATES_PER_SECOND,
            )
        )
    job_latency, bare_latency = report.latency("job"), report.latency("bare")
    count = len(job_latency.seconds) if job_latency else 0
    for name, fraction in (("p50", 0.5), ("p95", 0.95)):
        job_value = job_latency.percentile(fraction) if job_latency else None
        bare_value = bare_latency.percentile(fraction) if bare_latency else None
        target = f"< {TARGET_P50_LATENCY_SECONDS:g}" if name == "p50" else ""
        met = None if not target or job_value is None else job_value < TARGET_P50_LATENCY_SECONDS
        measure = f"latency {name}, burst of K={settings.buffer_size} ({count} bursts)"
        rows.append(Row(measure, "s", job_value, bare_value, target, met))
    peaks: dict[str, list[float | None]] = {}
    for kind in ("job", "bare"):
        runs = [report.backlog_run(kind, backlog, settings.max_offsets) for backlog in (small, large)]
        peaks[kind] = [run.peak_mib if run else None for run in runs]
    for index, backlog in enumerate((small, large)):
        measure = f"peak RSS, backlog {backlog}, max offsets {settings.max_offsets}"
        rows.append(Row(measure, "MiB", peaks["job"][index], peaks["bare"][index], "", None))
    if settings.extra_max_offsets:
        extra = report.backlog_run("job", small, settings.extra_max_offsets)
        measure = f"peak RSS, backlog {small}, max offsets {settings.extra_max_offsets}"
        rows.append(Row(measure, "MiB", extra.peak_mib if extra else None, peaks["bare"][0], "", None))
    job_rise, bare_rise = _rise(*peaks["job"]), _rise(*peaks["bare"])
    rows.append(
        Row(
            f"peak RSS rise, backlog {large} vs {small}",
            "%",
            job_rise,
            bare_rise,
            f"< {TARGET_PEAK_RISE_PERCENT:g}",
            None if job_rise is None else job_rise < TARGET_PEAK_RISE_PERCENT,
        )
    )
    if report.client is not None:
        measure = f"client process peak RSS (HAPT subject {report.client.subject}, train + publish)"
        rows.append(Row(measure, "MiB", report.client.peak_rss_kib / 1024, None, "", None))
    return rows


def run_rows(report: Report) -> list[dict[str, object]]:
    """One line per runner run: batches, start-up, drain time, rate, and the peak by process."""
    rows: list[dict[str, object]] = []
    for run in report.backlogs:
        by_command = run.peak.by_command if run.peak else {}
        java = sum(size for command, size in by_command.items() if command == "java")
        rows.append(
            {
                "run": f"{run.runner} backlog {run.backlog} max offsets {run.max_offsets}",
                "batches": len(run.batches),
                "messages_per_batch": round(run.backlog / max(1, len(run.batches)), 1),
                "startup_seconds": round(run.startup_seconds, 1),
                "drain_seconds": round(run.seconds, 1),
                "updates_per_second": round(run.updates_per_second, 1),
                "peak_mib": round(run.peak_mib),
                "peak_java_mib": round(java / MIB),
                "peak_other_mib": round(run.peak_mib - java / MIB),
            }
        )
    return rows


def _rise(small: float | None, large: float | None) -> float | None:
    if small is None or large is None or small == 0:
        return None
    return 100.0 * (large - small) / small


def phase_rows(report: Report) -> list[dict[str, object]]:
    """Where each run's time went: seconds per phase summed over its micro-batches, and the rest."""
    rows: list[dict[str, object]] = []
    for run in report.backlogs:
        totals = run.phase_totals()
        label = f"{run.runner} backlog {run.backlog} max offsets {run.max_offsets}"
        for phase, seconds in [*totals.items(), ("outside the handler", run.seconds - sum(totals.values()))]:
            rows.append(
                {
                    "run": label,
                    "batches": len(run.batches),
                    "phase": phase,
                    "seconds": round(seconds, 3),
                    "percent_of_wall": round(100 * seconds / run.seconds, 1),
                    "seconds_per_batch": round(seconds / max(1, len(run.batches)), 3),
                }
            )
    for latency in report.latencies:
        if latency.runner != "job":
            continue  # the bare loop's read_kafka includes its idle wait in poll(); its latency is the total
        batches = latency.batches
        busy: dict[str, float] = {}
        for batch in batches:
            for phase, seconds in batch.seconds.items():
                busy[phase] = busy.get(phase, 0.0) + seconds
        total_latency = sum(latency.seconds)
        label = f"{latency.runner} latency bursts"
        for phase, seconds in [*busy.items(), ("outside the handler", total_latency - sum(busy.values()))]:
            rows.append(
                {
                    "run": label,
                    "batches": len(batches),
                    "phase": phase,
                    "seconds": round(seconds, 3),
                    "percent_of_wall": round(100 * seconds / total_latency, 1) if total_latency else 0.0,
                    "seconds_per_batch": round(seconds / max(1, len(batches)), 3),
                }
            )
    return rows


def _number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def format_summary(rows: Sequence[Row]) -> str:
    """The summary table as text."""
    header = ("measure", "fedstream job", "bare loop", "ratio", "target", "met?")
    lines = [
        (
            f"{row.measure} ({row.unit})",
            _number(row.job, 3 if row.unit == "s" else 1),
            _number(row.bare, 3 if row.unit == "s" else 1),
            _number(row.ratio, 2),
            f"{row.target} {row.unit}" if row.target else "",
            "—" if row.met is None else ("yes" if row.met else "NO"),
        )
        for row in rows
    ]
    return _table(header, lines)


def format_runs(rows: Sequence[dict[str, object]]) -> str:
    """The per-run details as text."""
    header = ("run", "batches", "msgs/batch", "start-up s", "drain s", "updates/s", "peak MiB", "java", "other")
    keys = (
        "run", "batches", "messages_per_batch", "startup_seconds", "drain_seconds", "updates_per_second", "peak_mib",
        "peak_java_mib", "peak_other_mib",
    )  # fmt: skip
    return _table(header, [tuple(f"{row[key]:,}" if key != "run" else str(row[key]) for key in keys) for row in rows])


def format_phases(rows: Sequence[dict[str, object]]) -> str:
    """The phase breakdown as text, one block per run."""
    header = ("run", "batches", "phase", "seconds", "% of wall", "s / batch")
    lines = [
        (
            str(r["run"]),
            str(r["batches"]),
            str(r["phase"]),
            f"{r['seconds']:.2f}",
            f"{r['percent_of_wall']:.1f}",
            f"{r['seconds_per_batch']:.3f}",
        )
        for r in rows
    ]
    return _table(header, lines)


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines, strict=True)]
    numeric = [index > 0 for index in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if right and index else cell.ljust(width)
            for index, (cell, width, right) in enumerate(zip(cells, widths, numeric, strict=True))
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), rule, *(render(line) for line in lines)])


def write_results(
    report: Report, rows: Sequence[Row], runs: Sequence[dict[str, object]], phases: Sequence[dict[str, object]]
) -> list[Path]:
    """Write the summary, run and phase CSVs and the raw measurements (JSON) under ``bench/results/``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    summary_path = RESULTS / f"pipeline-{stamp}.csv"
    with summary_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["measure", "unit", "fedstream_job", "bare_loop", "ratio", "target", "met"])
        for row in rows:
            writer.writerow([row.measure, row.unit, row.job, row.bare, row.ratio, row.target, row.met])
    paths = [summary_path]
    for name, table in (("runs", runs), ("phases", phases)):
        path = RESULTS / f"pipeline-{stamp}-{name}.csv"
        with path.open("w", newline="") as handle:
            dict_writer = csv.DictWriter(handle, fieldnames=list(table[0]) if table else ["run"])
            dict_writer.writeheader()
            dict_writer.writerows(table)
        paths.append(path)
    raw_path = RESULTS / f"pipeline-{stamp}.json"
    raw_path.write_text(json.dumps(_raw(report), indent=1))
    return [*paths, raw_path]


def _raw(report: Report) -> dict[str, object]:
    def batches(items: Sequence[BatchStatus]) -> list[dict[str, object]]:
        return [
            {"batch_id": b.batch_id, "messages": b.messages, "version": b.current_version, "seconds": b.seconds}
            for b in items
        ]

    return {
        "started_at": report.started_at,
        "settings": {**report.settings.__dict__, "aggregation": report.settings.aggregation},
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "backlogs": [
            {
                "runner": run.runner,
                "backlog": run.backlog,
                "max_offsets": run.max_offsets,
                "publish_seconds": run.publish_seconds,
                "startup_seconds": run.startup_seconds,
                "seconds": run.seconds,
                "updates_per_second": run.updates_per_second,
                "peak_rss_bytes": run.peak.total_bytes if run.peak else None,
                "peak_rss_by_command": run.peak.by_command if run.peak else None,
                "batches_seen": len(run.batches),
                "batches_reported": run.reported_batches,
                "batches": batches(run.batches),
            }
            for run in report.backlogs
        ],
        "latencies": [
            {
                "runner": run.runner,
                "seconds": run.seconds,
                "batches_per_burst": run.batches_per_burst,
                "batches": batches(run.batches),
            }
            for run in report.latencies
        ],
        "client": None if report.client is None else report.client.__dict__,
        "notes": report.notes,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="backlogs 100 and 1,000, 10 bursts (a few minutes)")
    parser.add_argument("--backlog", type=int, help="B, the small backlog (default 300; quick 100)")
    parser.add_argument("--backlog-factor", type=int, help="the large backlog is B times this (default 10)")
    parser.add_argument("--latency-repeats", type=int, help="bursts per runner (default 20; quick 10)")
    parser.add_argument("--max-offsets", type=int, help="--max-offsets-per-trigger of the job (default 500)")
    parser.add_argument(
        "--extra-max-offsets", type=int, help="a second value tried on the small backlog (default 100; 0 skips)"
    )
    parser.add_argument("--trigger-seconds", type=float, help="the job's trigger interval (default 1.0, its own)")
    parser.add_argument("--register-every", type=int, help="the job's MLflow registration period (default 10)")
    parser.add_argument("--port", type=int, help="the benchmark broker's port (default 29092)")
    parser.add_argument("--no-client", action="store_true", help="skip the client-process measurement")
    parser.add_argument("--keep-state", action="store_true", help="keep the tables, logs and broker data")
    return parser


def settings_from(args: argparse.Namespace) -> BenchSettings:
    """Benchmark settings from the command line: the preset, then every option given."""
    base = BenchSettings.quick() if args.quick else BenchSettings()
    overrides: dict[str, object] = {
        name: getattr(args, name)
        for name in (
            "backlog",
            "backlog_factor",
            "latency_repeats",
            "max_offsets",
            "trigger_seconds",
            "register_every",
            "port",
        )
        if getattr(args, name) is not None
    }
    if args.extra_max_offsets is not None:
        overrides["extra_max_offsets"] = args.extra_max_offsets or None
    if args.no_client:
        overrides["client_subject"] = None
    if args.keep_state:
        overrides["keep_state"] = True
    return BenchSettings(**{**base.__dict__, **overrides})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the CSVs."""
    settings = settings_from(_parser().parse_args(argv))
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[bench {time.monotonic() - started:6.0f}s] {message}", file=sys.stderr, flush=True)

    report = run_benchmark(settings, say)
    rows, phases = summary_rows(report), phase_rows(report)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"\nfedstream pipeline benchmark: {MODEL_NAME}, K={settings.buffer_size}, {os.cpu_count()} CPUs, "
        f"load average {load}, {time.monotonic() - started:.0f}s\n"
    )
    print(format_summary(rows))
    for note in report.notes:
        print(f"  note: {note}")
    print("\nruns (start-up: process start to first micro-batch; drain: first micro-batch to version B/K):\n")
    print(format_runs(run_rows(report)))
    print("\nwhere the time goes (phases summed over micro-batches; 'outside the handler' = wall − their sum):\n")
    print(format_phases(phases))
    paths = write_results(report, rows, run_rows(report), phases)
    print("\nwritten: " + ", ".join(str(path.relative_to(REPOSITORY)) for path in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
