"""Scale benchmark, the measuring: the real job (as a process) on the benchmark broker, one model size at a time.

For each size :meth:`ScaleBench.run_size` starts ``fedstream job`` for a synthetic model of that size, warms it
up with one message of another model (a batch that loads the state and writes nothing), then times versions:
the K updates of each are encoded and signed beforehand into a spool file (so encoding is outside the window),
then sent from it chunk by chunk; the window runs from the first send to the version being readable through a
:class:`~producers.transport.GlobalModelSubscriber` (every chunk checked against the job's key). The numpy floor
decodes and sums the same spooled updates in this process while the job is idle.
"""

from __future__ import annotations

import os
import shutil
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from bench.pipeline_measure import REPOSITORY
from bench.pipeline_report import RESULTS
from bench.processes import BatchStatus, Runner
from bench.scale_model import (
    FLOAT32_BYTES,
    GIB,
    ScaleSettings,
    disk_bytes_needed,
    driver_memory_gib,
    failure_summary,
    model_layout,
    model_name,
    random_delta,
    size_label,
    zeros,
)
from bench.scale_report import FIRST_BATCH_WAIT, STATUS_WALL, EncodingRun, SizeResult
from bench.workload import client_id, client_signers
from producers.transport import GlobalModelSubscriber, UpdatePublisher
from producers.updates import build_chunked_update
from schemas.chunks import decode_chunk_body, decode_update_chunk
from schemas.kafka_settings import KafkaSettings
from schemas.messages import Encoding
from schemas.rejections import Rejection
from schemas.tensors import encode_tensors
from streaming_jobs.intake_limits import DEFAULT_BATCH_BYTES_BUDGET

_U32 = struct.Struct(">I")
WARM_UP_MODEL = "scale-warm-up"
"""The warm-up message names this model in its ``fedstream-model`` header, so the job reads past it."""


class SizeFailedError(RuntimeError):
    """A size cannot go on (the job died or stalled, memory ran low); the message is the row's error."""


def sample_count(index: int) -> int:
    """The sample count the ``index``-th update reports (its FedBuff weight), 100 to 399."""
    return 100 + (index * 37) % 300


# --- the spool: a version's updates encoded beforehand, sent from disk ---------------------------------------


def write_spool(path: Path, updates: Iterator[tuple[str, list[bytes]]]) -> list[int]:
    """Write ``(client_id, chunk values)`` per update to ``path``; return each update's chunk bytes."""
    sizes = []
    with path.open("wb") as spool:
        for owner, chunks in updates:
            name = owner.encode()
            spool.write(_U32.pack(len(name)) + name + _U32.pack(len(chunks)))
            for chunk in chunks:
                spool.write(_U32.pack(len(chunk)))
                spool.write(chunk)
            sizes.append(sum(len(chunk) for chunk in chunks))
    return sizes


def read_spool(path: Path) -> Iterator[tuple[str, list[bytes]]]:
    """The updates of a spool, one at a time (one update's chunks in memory)."""
    with path.open("rb") as spool:
        while header := spool.read(_U32.size):
            name = spool.read(_U32.unpack(header)[0]).decode()
            (count,) = _U32.unpack(spool.read(_U32.size))
            chunks = [spool.read(_U32.unpack(spool.read(_U32.size))[0]) for _ in range(count)]
            yield name, chunks


def numpy_floor(path: Path, parameters: int) -> tuple[float, float]:
    """Seconds to decode every spooled update and sum them weighted as FedBuff does; of those, the sum's alone.

    Decoding is ``decode_update_chunk`` (framing, header, body SHA-256) and ``decode_chunk_body``; the sum is
    ``Σ w_i Δ_i`` with ``w_i`` the sample-count shares, accumulated in float64 chunk by chunk (as
    ``aggregator.weighted_sum`` accumulates) and cast to float32.
    """
    updates = list(_spooled_weights(path))
    total = sum(count for count in updates)
    accumulator = np.zeros(parameters, dtype=np.float64)
    decode_seconds = sum_seconds = 0.0
    for (_, chunks), count in zip(read_spool(path), updates, strict=True):
        weight = count / total
        for value in chunks:
            started = time.perf_counter()
            chunk = decode_update_chunk(value)
            if isinstance(chunk, Rejection):
                raise RuntimeError(f"a spooled chunk does not decode: {chunk}")
            values = decode_chunk_body(chunk.layout, chunk.index, chunk.body)
            if isinstance(values, Rejection):
                raise RuntimeError(f"a spooled chunk body does not decode: {values}")
            decoded = time.perf_counter()
            start, stop = chunk.layout.chunk_bounds(chunk.index)
            accumulator[start:stop] += values.astype(np.float64) * weight
            sum_seconds += time.perf_counter() - decoded
            decode_seconds += decoded - started
    started = time.perf_counter()
    accumulator.astype(np.float32)
    sum_seconds += time.perf_counter() - started
    return decode_seconds + sum_seconds, sum_seconds


def _spooled_weights(path: Path) -> Iterator[int]:
    for _, chunks in read_spool(path):
        chunk = decode_update_chunk(chunks[0])
        if isinstance(chunk, Rejection):
            raise RuntimeError(f"a spooled chunk does not decode: {chunk}")
        yield chunk.header.sample_count


def memory_available_bytes() -> int:
    """The machine's ``MemAvailable``."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


class ScaleBench:
    """Runs the job once per size on the benchmark's broker (already up, ``home`` its ``FEDSTREAM_HOME``)."""

    def __init__(self, settings: ScaleSettings, home: Path, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.home = home
        self.say = say
        self.kafka = KafkaSettings(bootstrap_servers=f"localhost:{settings.port}")
        self.keys_dir = home / "client-keys"
        self.signers = client_signers(self.keys_dir)
        self.made = 0
        self.env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}

    # --- per size ---------------------------------------------------------------------------------------------

    def run_size(self, parameters: int) -> SizeResult:
        """Every figure of one size; a failure is recorded in the result, never raised."""
        layout = model_layout(parameters)
        result = SizeResult(
            parameters=parameters,
            tensors=len(layout),
            buffer_size=self.settings.buffer_size,
            update_bytes=FLOAT32_BYTES * parameters,
            aggregated_on=self.settings.aggregated_on(parameters),
        )
        label = size_label(parameters)
        try:
            self._encoding_bytes(result, layout)
        except (ValueError, MemoryError) as error:
            result.fail(f"encoding an update: {type(error).__name__}: {error}")
            return result
        problem = self._disk_problem(result)
        if problem:
            result.fail(problem)
            self.say(f"{label}: {problem}")
            return result
        try:
            self._run_job(result, layout)
        except Exception as error:  # one size's failure is its row's, and the next size still runs
            result.fail(str(error) if isinstance(error, SizeFailedError) else f"{type(error).__name__}: {error}")
            self.say(f"{label}: failed: {result.error}")
        return result

    def _encoding_bytes(self, result: SizeResult, layout: dict[str, tuple[int, ...]]) -> None:
        """Chunks and Kafka bytes of one update in every encoding, from the real encoder."""
        delta = random_delta(layout, seed=0)
        for encoding in Encoding:
            _, chunks = build_chunked_update(
                client_id=client_id(0),
                model_name=model_name(result.parameters),
                base_version=0,
                sample_count=sample_count(0),
                delta=delta,
                max_message_bytes=self.kafka.max_message_bytes,
                encoding=encoding,
                signer=self.signers[client_id(0)],
            )
            result.encodings[encoding.value] = EncodingRun(
                encoding=encoding.value,
                chunks_per_update=len(chunks),
                kafka_bytes_per_update=sum(len(chunk) for chunk in chunks),
                buffer_size=self.settings.buffer_size,
            )
            del chunks
        self.say(
            f"{size_label(result.parameters)}: update {result.update_bytes:,} bytes float32; Kafka bytes per update "
            + ", ".join(
                f"{name} {run.kafka_bytes_per_update:,} ({run.chunks_per_update} chunks)"
                for name, run in result.encodings.items()
            )
        )

    def _disk_problem(self, result: SizeResult) -> str | None:
        runs = len(self.settings.encodings_run_at(result.parameters)) * self.settings.versions
        float32 = result.encodings["float32"]
        needed = disk_bytes_needed(float32.kafka_bytes_per_update, self.settings.buffer_size, runs)
        free = shutil.disk_usage(self.home).free
        if needed + 2 * GIB > free:
            return f"needs about {needed / GIB:.1f} GiB of disk (Kafka, Delta, spool), {free / GIB:.1f} GiB free"
        return None

    def _runner(self, parameters: int, folder: Path, initial: Path, heap_gib: int) -> Runner:
        settings = self.settings
        aggregation = f'{{"buffer_size": {settings.buffer_size}, "max_staleness": null, "max_wait_seconds": null}}'
        budget = settings.batch_bytes_budget
        job_options = [] if budget is None else ["--batch-bytes-budget", str(budget)]
        threshold = settings.executor_aggregation_min_parameters
        if threshold is not None:
            job_options += ["--executor-aggregation-min-parameters", str(threshold)]
        command = [
            sys.executable, "-m", "fedstream.cli", "job",
            "--model-name", model_name(parameters),
            "--initial-model", str(initial),
            "--tables-root", str(folder / "tables"),
            "--checkpoint", str(folder / "checkpoint"),
            "--status-file", str(folder / "status.json"),
            "--aggregation", aggregation,
            "--max-offsets-per-trigger", "100000",  # the byte budget is what bounds a batch
            *job_options,
            "--trigger-seconds", str(settings.trigger_seconds),
            "--register-every", "0",  # a registry copy of every version is not what is measured
            "--chunk-deadline-seconds", str(settings.chunk_deadline_seconds),
            "--experiment", f"bench-{model_name(parameters)}",
            "--enrol-public-keys", str(self.keys_dir),
        ]  # fmt: skip
        env = {**self.env, "FEDSTREAM_SPARK_DRIVER_MEMORY": f"{heap_gib}g"}
        return Runner("job", command, folder, env, folder / "status.json", cwd=folder)

    def _run_job(self, result: SizeResult, layout: dict[str, tuple[int, ...]]) -> None:
        from devstack.topics import reset_topics

        parameters, label = result.parameters, size_label(result.parameters)
        folder = self.home / "runs" / model_name(parameters)
        folder.mkdir(parents=True)
        initial = folder / "initial-model.safetensors"
        initial.write_bytes(encode_tensors(zeros(layout)))
        heap = self.settings.driver_memory_gib or driver_memory_gib(result.update_bytes)
        result.driver_memory_gib = heap
        result.batch_bytes_budget = self.settings.batch_bytes_budget or DEFAULT_BATCH_BYTES_BUDGET
        reset_topics(self.kafka)
        runner = self._runner(parameters, folder, initial, heap)
        publisher = UpdatePublisher(self.kafka)
        subscriber = None
        float32_end = float("inf")
        self.say(f"{label}: starting the job (driver heap {heap}g) ...")
        runner.start()
        finished = False
        try:
            result.startup_seconds = self._warm_up(runner, publisher)
            subscriber = GlobalModelSubscriber(self.kafka, model_name(parameters))
            subscriber.newest(timeout_seconds=300)
            self.say(f"{label}: job ready after {result.startup_seconds:.0f}s; version 0 on fl.models")
            current = 0
            for encoding in self.settings.encodings_run_at(parameters):
                run = result.encodings[encoding.value]
                run.status = "running"
                try:
                    current = self._time_versions(result, run, encoding, layout, runner, publisher, subscriber, current)
                    run.status = "ok"
                except Exception as error:
                    run.status, run.error = "failed", str(error)[:2000]
                    if encoding is Encoding.FLOAT32:
                        raise
                    break  # the job's state after a failure is unknown: the later encodings are not run
                finally:
                    if encoding is Encoding.FLOAT32:
                        float32_end = time.time()
            finished = all(result.encodings[e.value].status == "ok" for e in self.settings.encodings_run_at(parameters))
        finally:
            self._record_memory(result, runner, float32_end)
            runner.stop()
            publisher.close()
            if subscriber is not None:
                subscriber.close()
            if not finished and runner.log_file.exists():  # the failure's evidence outlives the folder
                RESULTS.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(runner.log_file, RESULTS / f"scale-{model_name(parameters)}-job.log")
            if not self.settings.keep_state:
                shutil.rmtree(folder, ignore_errors=True)

    def _warm_up(self, runner: Runner, publisher: UpdatePublisher) -> float:
        """One message of another model: the job's first batch (state loaded, nothing written); its start-up seconds."""
        publisher.publish("bench-warm-up", b"warm-up", model_name=WARM_UP_MODEL)
        follower, process = runner.follower, runner.process
        assert follower is not None and process is not None
        deadline = time.monotonic() + self.settings.stall_seconds
        while not follower.batches:
            if process.poll() is not None:
                raise SizeFailedError(failure_summary(runner.log_tail(20000), process.returncode, "starting"))
            if time.monotonic() > deadline:
                raise SizeFailedError(f"the job ran no batch within {self.settings.stall_seconds:.0f}s of starting")
            time.sleep(0.1)
        return follower.ordered()[0].finished_at - runner.started_at

    def _time_versions(
        self,
        result: SizeResult,
        run: EncodingRun,
        encoding: Encoding,
        layout: dict[str, tuple[int, ...]],
        runner: Runner,
        publisher: UpdatePublisher,
        subscriber: GlobalModelSubscriber,
        current: int,
    ) -> int:
        """Time ``versions`` versions made from updates in ``encoding``; return the newest version."""
        label = f"{size_label(result.parameters)} {encoding.value}"
        spool = self.home / "spool.bin"
        phases: list[dict[str, float]] = []
        batch_counts: list[int] = []
        try:
            for _ in range(self.settings.versions):
                started = time.perf_counter()
                write_spool(spool, self._updates(result.parameters, layout, encoding, current))
                self.say(
                    f"{label}: version {current + 1}: {result.buffer_size} updates spooled in "
                    f"{time.perf_counter() - started:.1f}s"
                )
                if encoding is Encoding.FLOAT32 and result.numpy_seconds is None:
                    result.numpy_seconds, result.numpy_sum_seconds = numpy_floor(spool, result.parameters)
                    self.say(
                        f"{label}: numpy floor {result.numpy_seconds:.2f}s (sum alone {result.numpy_sum_seconds:.2f}s)"
                    )
                runner.wait_until_idle(current, timeout_seconds=self.settings.stall_seconds)
                window_start = time.time()
                started = time.perf_counter()
                for owner, chunks in read_spool(spool):
                    publisher.publish_chunks(owner, chunks, model_name=model_name(result.parameters), wait=False)
                publisher.flush()
                published = time.perf_counter()
                self._await_version(runner, subscriber, current + 1, window_start)
                seen = time.perf_counter()
                current += 1
                run.seconds.append(seen - started)
                run.publish_seconds.append(published - started)
                assert runner.follower is not None
                # The version's own batch writes its status after its updates' append, so after the version is out.
                done = runner.wait_for_version(current, timeout_seconds=self.settings.stall_seconds)
                batches = runner.follower.ordered(since=window_start, until=done.finished_at)
                batch_counts.append(len(batches))
                phases.append(
                    {
                        **_phase_totals(batches),
                        STATUS_WALL: done.finished_at - window_start,
                        FIRST_BATCH_WAIT: batches[0].started_at - window_start,
                    }
                )
                self.say(
                    f"{label}: version {current} in {seen - started:.2f}s (sent in {published - started:.2f}s, "
                    f"{len(batches)} batches)"
                )
        finally:
            spool.unlink(missing_ok=True)
        if encoding is Encoding.FLOAT32 and phases:
            names = sorted({name for totals in phases for name in totals})
            result.phases = {name: statistics.fmean(t.get(name, 0.0) for t in phases) for name in names}
            result.batches_per_version = statistics.fmean(batch_counts)
        return current

    def _updates(
        self, parameters: int, layout: dict[str, tuple[int, ...]], encoding: Encoding, base_version: int
    ) -> Iterator[tuple[str, list[bytes]]]:
        """The K chunked, signed updates of one version, made one at a time (one delta in memory)."""
        for _ in range(self.settings.buffer_size):
            index, self.made = self.made, self.made + 1
            owner = client_id(index)
            _, chunks = build_chunked_update(
                client_id=owner,
                model_name=model_name(parameters),
                base_version=base_version,
                sample_count=sample_count(index),
                delta=random_delta(layout, seed=index),
                max_message_bytes=self.kafka.max_message_bytes,
                encoding=encoding,
                signer=self.signers[owner],
            )
            yield owner, chunks

    def _await_version(self, runner: Runner, subscriber: GlobalModelSubscriber, version: int, since: float) -> None:
        """Wait until ``version`` is readable; fail when the job exits, stalls, or the machine runs out of memory."""
        follower, process = runner.follower, runner.process
        assert follower is not None and process is not None
        progress = time.time()
        while True:
            newest = subscriber.wait_for_version_after(version - 1, 1.0)
            if newest is not None and newest >= version:
                return
            batches = follower.ordered(since=since)
            reached = f"{_progress(batches)} for version {version}"
            if process.poll() is not None:
                raise SizeFailedError(failure_summary(runner.log_tail(20000), process.returncode, reached))
            if batches:
                progress = max(progress, batches[-1].finished_at)
            if time.time() - progress > self.settings.stall_seconds:
                raise SizeFailedError(f"timeout: no batch status for {self.settings.stall_seconds:.0f}s, {reached}")
            available = memory_available_bytes()
            if available < self.settings.min_available_bytes:
                raise SizeFailedError(
                    f"out of memory: the machine had {available / GIB:.1f} GiB available, {reached}; the job was "
                    "stopped before the kernel's OOM killer picks a process"
                )

    def _record_memory(self, result: SizeResult, runner: Runner, until: float) -> None:
        sampler = runner.sampler
        if sampler is None:
            return
        samples = [sample for sample in sampler.samples if sample.at <= until]
        if not samples:
            return
        result.driver_peak_rss_bytes = max(sample.root_bytes for sample in samples)
        result.jvm_peak_rss_bytes = max(sample.by_command.get("java", 0) for sample in samples)
        result.tree_peak_rss_bytes = max(sample.total_bytes for sample in samples)


def _progress(batches: list[BatchStatus]) -> str:
    """How far the job got since a version's chunks were sent, as its status file says."""
    if not batches:
        return "no batch yet"
    accepted = sum(batch.accepted for batch in batches)
    return f"{len(batches)} batches, {accepted} updates accepted ({batches[-1].pending} pending)"


def _phase_totals(batches: list[BatchStatus]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for batch in batches:
        for phase, seconds in batch.seconds.items():
            totals[phase] = totals.get(phase, 0.0) + seconds
    return totals


def run_sizes(settings: ScaleSettings, home: Path, say: Callable[[str], None]) -> list[SizeResult]:
    """Every size in ``settings.sizes`` in order, on the broker already up in ``home``."""
    bench = ScaleBench(settings, home, say)
    results = []
    for parameters in settings.sizes:
        results.append(bench.run_size(parameters))
    return results
