"""Pipeline benchmark, the measuring: one stack, the job and the bare loop each draining backlogs and bursts.

:func:`run_benchmark` starts a broker in a temporary ``FEDSTREAM_HOME``, runs every measurement described in
:mod:`bench.pipeline` and returns a :class:`Report` of raw figures; :mod:`bench.pipeline_report` turns it
into tables and files.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.processes import BatchStatus, RssSample, Runner, RunnerFailedError
from bench.workload import UpdateFactory, initial_parameters, publish_backlog, publish_model, signing_supported
from schemas.kafka_settings import KafkaSettings
from schemas.tensors import Tensors, encode_tensors

REPOSITORY = Path(__file__).resolve().parents[1]
MODEL_NAME = "har-cnn"
MIB = 2**20


@dataclass(frozen=True)
class BenchSettings:
    """What to run; the defaults are the issue's workload, ``quick()`` a smaller one."""

    backlog: int = 500
    backlog_factor: int = 10
    latency_repeats: int = 20
    buffer_size: int = 10
    max_offsets: int = 100
    extra_max_offsets: int | None = 250
    """A second ``--max-offsets-per-trigger`` tried on the small backlog (job only); None skips it."""
    trigger_seconds: float = 0.5
    register_every: int = 10
    port: int = 29092
    client_subject: int | None = 1
    keep_state: bool = False

    @classmethod
    def quick(cls) -> BenchSettings:
        """A run of a few minutes: smaller backlogs, fewer bursts, no second trigger size."""
        return cls(backlog=200, latency_repeats=10, extra_max_offsets=None)

    def warmup(self, max_offsets: int) -> int:
        """Updates pre-loaded ahead of the measured backlog: one full batch, drained before timing starts."""
        return max_offsets

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
        for name in ("backlog", "max_offsets", "extra_max_offsets"):
            value = getattr(self, name)
            if value and value % self.buffer_size:
                raise ValueError(f"{name} {value} must be a multiple of buffer_size {self.buffer_size}")
        if self.backlog < 2 * self.max_offsets:
            raise ValueError(f"backlog {self.backlog} must span at least two batches of {self.max_offsets}")


@dataclass
class BacklogRun:
    """One runner draining one pre-loaded backlog."""

    runner: str
    max_offsets: int
    backlog: int
    warmup: int
    publish_seconds: float
    startup_seconds: float
    """Process start to the end of the warm-up batch (JVM, Spark session, tables, the first cold batch)."""
    seconds: float
    """End of the warm-up batch to the status that shows the last version: every second the backlog waited."""
    measured_updates: int
    """Updates drained within ``seconds`` (the backlog less what the warm-up batch took beyond its share)."""
    batches: list[BatchStatus]
    peak: RssSample | None
    reported_batches: int
    highest_load: float
    """The highest one-minute load average sampled during the drain."""

    @property
    def updates_per_second(self) -> float:
        """Updates accepted per second after warm-up, everything the user waits for included."""
        return self.measured_updates / self.seconds

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
        """Pre-load a warm-up batch and ``backlog`` updates, start the runner, time the drain after warm-up.

        The window runs from the status of the batch that completed the warm-up to the status that shows the
        last version, so Spark's planning, the trigger waits and every phase in between are inside it.
        """
        label = f"{kind}-b{backlog}-m{max_offsets}"
        warmup = self.settings.warmup(max_offsets)
        self.reset()
        size = (warmup + backlog) * self.factory.message_bytes / MIB
        self.say(f"{label}: publishing {warmup} warm-up and {backlog} measured updates ({size:,.0f} MiB) ...")
        publish_seconds = publish_backlog(self.kafka, self.factory, warmup + backlog)
        self.say(f"{label}: backlog on fl.updates in {publish_seconds:.1f}s; starting the {kind} ...")
        runner = self.runner(kind, max_offsets, label)
        runner.start()
        try:
            target = (warmup + backlog) // self.settings.buffer_size
            done = runner.wait_for_version(target, timeout_seconds=300 + 0.5 * backlog)
            follower, sampler = runner.follower, runner.sampler
            if follower is None or sampler is None:
                raise RuntimeError("runner not started")
            follower.read()
            if follower.missed:
                raise RunnerFailedError(f"{label}: the status of batches {sorted(follower.missed)} was never seen")
            if follower.latest.get("rejected"):
                raise RunnerFailedError(f"{label} rejected updates: {follower.latest.get('rejected_by_reason')}")
            batches = follower.ordered(until=done.finished_at)
            warm, taken = warm_up_batch(batches, warmup)
            measured = [batch for batch in batches if batch.sequence > warm.sequence]
            run = BacklogRun(
                runner=kind,
                max_offsets=max_offsets,
                backlog=backlog,
                warmup=warmup,
                publish_seconds=publish_seconds,
                startup_seconds=warm.finished_at - runner.started_at,
                seconds=done.finished_at - warm.finished_at,
                measured_updates=warmup + backlog - taken,
                batches=measured,
                peak=sampler.peak(until=done.finished_at),
                reported_batches=done.sequence - warm.sequence,
                highest_load=sampler.highest_load(warm.finished_at, done.finished_at),
            )
            self.say(
                f"{label}: {run.measured_updates} updates in {run.seconds:.1f}s = {run.updates_per_second:.1f}/s "
                f"({len(measured)} batches after warm-up, start-up {run.startup_seconds:.1f}s, "
                f"peak RSS {run.peak_mib:,.0f} MiB)"
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


def warm_up_batch(batches: list[BatchStatus], warmup: int) -> tuple[BatchStatus, int]:
    """The batch whose updates completed the warm-up, and how many updates had been accepted by then."""
    accepted = 0
    for batch in batches:
        accepted += batch.accepted
        if accepted >= warmup:
            return batch, accepted
    raise RunnerFailedError(f"the runner never accepted its {warmup} warm-up updates")


@contextmanager
def benchmark_stack(port: int, keep_state: bool, say: Callable[[str], None]) -> Iterator[Path]:
    """A broker on ``port`` in a temporary ``FEDSTREAM_HOME`` (yielded); the broker is always stopped after.

    This process's environment points at it (and at the folder's own MLflow store), so the runners it starts
    inherit the same stack.
    """
    home = Path(tempfile.mkdtemp(prefix="fedstream-bench-"))
    os.environ.update(
        FEDSTREAM_HOME=str(home),
        FEDSTREAM_KAFKA_PORT=str(port),
        FEDSTREAM_KAFKA_BOOTSTRAP_SERVERS=f"localhost:{port}",
    )
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)
    from devstack.local_stack import stack_down, stack_up

    say(f"state folder {home}; broker on port {port}")
    try:
        status = stack_up()
        if not status.healthy:
            raise RuntimeError(status.describe())
        yield home
    finally:
        stack_down()
        if keep_state:
            say(f"state kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def run_benchmark(settings: BenchSettings, say: Callable[[str], None]) -> Report:
    """Run every measurement on a fresh stack in a temporary ``FEDSTREAM_HOME``; always stop the broker."""
    settings.check()
    report = Report(settings=settings, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    with benchmark_stack(settings.port, settings.keep_state, say) as home:
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
    return report
