"""Executor-scale benchmark: one version made on Spark executors against model size, with a numpy floor.

``python -m bench.executor_scale [--quick]`` (or ``make bench-executor-scale``) answers, for synthetic models of
1 M, 10 M and 100 M float32 parameters (``--quick``: 1 M and 10 M) and FedBuff K = ``--updates`` with Adam: does
the Spark driver's memory stay flat as the model grows when the version is made by
:func:`streaming_jobs.executor_aggregation.aggregate_on_executors`, how long one version takes, and how its
throughput compares with a numpy floor over the same updates in the same run.

Per size, in a fresh temporary folder, three child processes (``bench.executor_scale_worker``):
``prepare`` writes the K chunked updates to ``update_chunks`` and the parent to ``model_shards`` (not measured);
``aggregate`` times one ``aggregate_on_executors`` call on ``--master`` (default two executor JVMs) with a
1 GiB driver heap; ``numpy`` decodes the same updates and makes the same version whole in one process.

Memory of the aggregate phase is sampled here, every 0.5 s, from ``/proc`` (:func:`bench.processes.tree_rss` of
the child): the driver's Python process, its JVM (the ``java`` child) and everything under that JVM (executor
JVMs and their Python workers), each its own peak over the call's window, which the child prints as
``@window start|end`` lines around the call (the sample just after the end is included, so even a short call
has one). The numpy child reports its own ``ru_maxrss``. It prints a table and a verdict and writes
``bench/results/executor-scale-latest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.executor_scale_worker import WINDOW_MARK, Spec
from bench.processes import tree_rss
from bench.scale_model import DEFAULT_SIZES, FLOAT32_BYTES, QUICK_SIZES, failure_summary, parse_sizes, size_label

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS = REPOSITORY / "bench" / "results"
MIB = 2**20
GIB = 2**30
SAMPLE_SECONDS = 0.5
DRIVER_GROWTH_LIMIT = 0.25
"""The verdict's bound on the driver's peak memory from the smallest to the largest working size."""
MIN_AVAILABLE_BYTES = GIB
"""A phase is stopped (and its size fails) when the machine's available memory falls below this."""


@dataclass
class SizeRow:
    """One size's figures (bytes and seconds; ``None`` where the phase did not get that far)."""

    parameters: int
    updates: int
    update_bytes: int
    chunks_per_update: int = 0
    executor_seconds: float | None = None
    executor_bytes_per_s: float | None = None
    numpy_seconds: float | None = None
    numpy_decode_seconds: float | None = None
    numpy_bytes_per_s: float | None = None
    numpy_streaming: bool | None = None
    ratio: float | None = None
    """Executor throughput / numpy floor throughput."""
    identical: bool | None = None
    """The executors' version has the same shards root as the numpy floor's."""
    driver_python_peak_bytes: int | None = None
    driver_jvm_peak_bytes: int | None = None
    executors_peak_bytes: int | None = None
    numpy_peak_bytes: int | None = None
    executors: int | None = None
    prepare_seconds: float | None = None
    status: str = "ok"
    error: str | None = None


@dataclass
class Phase:
    """A child process running one phase: its marks, its result line, its memory samples (aggregate only)."""

    command: list[str]
    env: dict[str, str]
    log: Path
    sample: bool = False
    marks: dict[str, float] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    """``(time, driver python, driver JVM, under the JVM)`` RSS bytes."""
    stopped_for: str | None = None

    def run(self, timeout_seconds: float) -> int:
        """Run to the end (or the timeout, or low memory); return its exit status."""
        with self.log.open("wb") as log:
            process = subprocess.Popen(
                self.command,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                env=self.env,
                cwd=REPOSITORY,
            )
        done = threading.Event()
        reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        reader.start()
        sampler = threading.Thread(target=self._sample, args=(process, done), daemon=True)
        sampler.start()
        try:
            process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            self.stopped_for = f"timeout after {timeout_seconds:.0f}s"
        finally:
            done.set()
            with contextlib.suppress(ProcessLookupError):  # the child and whatever it left (JVMs)
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            sampler.join()
            reader.join(10)
        return process.returncode

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith(WINDOW_MARK):
                _, edge, at = line.split()
                self.marks[edge] = float(at)
            elif line.startswith("{"):
                self.result = json.loads(line)

    def _sample(self, process: subprocess.Popen[bytes], done: threading.Event) -> None:
        jvm: int | None = None
        while not done.is_set():
            if _memory_available_bytes() < MIN_AVAILABLE_BYTES and process.poll() is None:
                self.stopped_for = (
                    f"out of memory: the machine had under {MIN_AVAILABLE_BYTES / GIB:.0f} GiB available; "
                    "the phase was stopped before the kernel's OOM killer picks a process"
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                return
            if self.sample:
                jvm = jvm or _java_child(process.pid)
                tree = tree_rss(process.pid)
                jvm_bytes = _rss(jvm) if jvm else 0
                under_jvm = tree.total_bytes - tree.root_bytes - jvm_bytes if jvm else 0
                self.samples.append((tree.at, tree.root_bytes, jvm_bytes, max(0, under_jvm)))
            done.wait(SAMPLE_SECONDS)

    def peaks(self) -> tuple[int, int, int] | None:
        """Peak driver Python, driver JVM and under-JVM RSS over the marked window (and the sample after it)."""
        if "start" not in self.marks or "end" not in self.marks:
            return None
        start, end = self.marks["start"], self.marks["end"]
        window = [sample for sample in self.samples if start <= sample[0] <= end]
        after = [sample for sample in self.samples if sample[0] > end][:1]
        window += after
        if not window:
            return None
        return tuple(max(sample[column] for sample in window) for column in (1, 2, 3))  # type: ignore[return-value]

    def failure(self, returncode: int, while_doing: str) -> str:
        """One line on why the phase failed."""
        if self.stopped_for:
            return f"{self.stopped_for} while {while_doing}"
        log = self.log.read_text(errors="replace")
        return failure_summary(log, returncode, while_doing).replace("the job exited", "the child exited")


def _java_child(pid: int) -> int | None:
    """The ``java`` process whose parent is ``pid`` (pyspark's driver JVM), if it is up."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and command == "java":
            return int(entry.name)
    return None


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _memory_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


class SizeFailedError(RuntimeError):
    """A phase of a size failed; the message is the row's one-line error."""


@dataclass(frozen=True)
class Settings:
    """What to run."""

    sizes: tuple[int, ...]
    updates: int
    master: str
    executor_memory: str
    spark_conf: tuple[str, ...]
    """Extra ``KEY=VALUE`` Spark settings of the aggregate phase (``--conf``, under what ``get_spark`` sets)."""
    prepare_driver_memory: str
    phase_timeout_seconds: float
    keep_state: bool


def run_size(settings: Settings, parameters: int, say: Callable[[str], None]) -> SizeRow:
    """Prepare, aggregate on executors, numpy floor: one size in a temporary folder."""
    row = SizeRow(parameters, settings.updates, FLOAT32_BYTES * parameters)
    folder = Path(tempfile.mkdtemp(prefix=f"fedstream-executor-scale-{size_label(parameters)}-"))
    spec = folder / "spec.json"
    worker = [sys.executable, "-m", "bench.executor_scale_worker"]
    base_env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    try:
        say(f"{size_label(parameters)}: prepare ({settings.updates} updates) in {folder}")
        started = time.monotonic()
        prepare = Phase(
            [*worker, "prepare", str(folder), str(spec), str(parameters), str(settings.updates)],
            {**base_env, "FEDSTREAM_SPARK_DRIVER_MEMORY": settings.prepare_driver_memory},
            folder / "prepare.log",
        )
        _check(prepare, prepare.run(settings.phase_timeout_seconds), "preparing the tables")
        row.prepare_seconds = time.monotonic() - started
        row.chunks_per_update = Spec.load(spec).chunks_per_update
        say(f"{size_label(parameters)}: prepared in {row.prepare_seconds:.0f}s; aggregate on {settings.master}")
        aggregate = Phase(
            [*worker, "aggregate", str(folder), str(spec)],
            {
                **base_env,
                "FEDSTREAM_SPARK_MASTER": settings.master,
                "FEDSTREAM_SPARK_DRIVER_MEMORY": "1g",
                "PYSPARK_SUBMIT_ARGS": _submit_args(settings),
            },
            folder / "aggregate.log",
            sample=True,
        )
        _check(aggregate, aggregate.run(settings.phase_timeout_seconds), "aggregating on the executors")
        row.executor_seconds = float(aggregate.result["seconds"])
        row.executors = int(aggregate.result["executors"])
        row.executor_bytes_per_s = settings.updates * row.update_bytes / row.executor_seconds
        peaks = aggregate.peaks()
        if peaks is not None:
            row.driver_python_peak_bytes, row.driver_jvm_peak_bytes, row.executors_peak_bytes = peaks
        say(f"{size_label(parameters)}: executors made the version in {row.executor_seconds:.1f}s; numpy floor")
        floor = Phase([*worker, "numpy", str(folder), str(spec)], base_env, folder / "numpy.log")
        _check(floor, floor.run(settings.phase_timeout_seconds), "computing the numpy floor")
        row.numpy_seconds = float(floor.result["seconds"])
        row.numpy_decode_seconds = float(floor.result["decode_seconds"])
        row.numpy_bytes_per_s = settings.updates * row.update_bytes / row.numpy_seconds
        row.numpy_streaming = bool(floor.result["streaming"])
        row.numpy_peak_bytes = int(floor.result["peak_rss_bytes"])
        row.ratio = row.executor_bytes_per_s / row.numpy_bytes_per_s
        row.identical = floor.result["root"] == aggregate.result["root"]
        say(f"{size_label(parameters)}: numpy floor {row.numpy_seconds:.1f}s")
    except SizeFailedError as error:
        row.status, row.error = "failed", str(error)
        say(f"{size_label(parameters)}: failed: {error}")
        _keep_log(folder, parameters)
    finally:
        if settings.keep_state:
            say(f"{size_label(parameters)}: kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return row


def _submit_args(settings: Settings) -> str:
    """``PYSPARK_SUBMIT_ARGS`` of the aggregate phase: the executors' heap and any ``--spark-conf``."""
    confs = [f"spark.executor.memory={settings.executor_memory}", *settings.spark_conf]
    return " ".join(f"--conf {conf}" for conf in confs) + " pyspark-shell"


def _check(phase: Phase, returncode: int, while_doing: str) -> None:
    if returncode != 0 or phase.stopped_for or (phase.command[3] != "prepare" and not phase.result):
        raise SizeFailedError(phase.failure(returncode, while_doing))


def _keep_log(folder: Path, parameters: int) -> None:
    """Copy a failed size's phase logs to ``bench/results/executor-scale-<size>-<phase>.log``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    for log in folder.glob("*.log"):
        shutil.copyfile(log, RESULTS / f"executor-scale-{size_label(parameters)}-{log.name}")


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:,.0f}"


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_rows(rows: Sequence[SizeRow]) -> str:
    """The table: one line per size."""
    header = (
        "params", "MB/upd", "K", "exec s", "exec MB/s", "numpy s", "numpy MB/s", "ratio", "same",
        "driver py MiB", "driver JVM MiB", "executors MiB", "numpy MiB", "status",
    )  # fmt: skip
    lines = [header]
    for row in rows:
        status = row.status if row.error is None else f"{row.status}: {row.error}"
        numpy_label = _number(row.numpy_seconds, 2) + (" (streamed)" if row.numpy_streaming else "")
        lines.append(
            (
                size_label(row.parameters),
                f"{row.update_bytes / 1e6:,.0f}",
                str(row.updates),
                _number(row.executor_seconds),
                _number(None if row.executor_bytes_per_s is None else row.executor_bytes_per_s / 1e6),
                numpy_label,
                _number(None if row.numpy_bytes_per_s is None else row.numpy_bytes_per_s / 1e6),
                _number(row.ratio, 3),
                "-" if row.identical is None else ("yes" if row.identical else "NO"),
                _mib(row.driver_python_peak_bytes),
                _mib(row.driver_jvm_peak_bytes),
                _mib(row.executors_peak_bytes),
                _mib(row.numpy_peak_bytes),
                status,
            )
        )
    widths = [max(len(line[column]) for line in lines[:]) for column in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in lines
    )


def verdict(rows: Sequence[SizeRow]) -> str:
    """Largest size that worked; whether the driver's peaks stayed within +25 % from the smallest to it."""
    working = [row for row in rows if row.status == "ok" and row.driver_jvm_peak_bytes and row.driver_python_peak_bytes]
    if not working:
        return "verdict: no size worked"
    smallest, largest = working[0], working[-1]
    text = f"verdict: largest size that worked {size_label(largest.parameters)}"
    if smallest is largest:
        return text + " (one working size: no growth to judge)"
    growths = []
    for name, attribute in (("driver Python", "driver_python_peak_bytes"), ("driver JVM", "driver_jvm_peak_bytes")):
        low, high = getattr(smallest, attribute), getattr(largest, attribute)
        growths.append((name, low, high, high / low - 1))
    flat = all(growth <= DRIVER_GROWTH_LIMIT for *_, growth in growths)
    figures = ", ".join(
        f"{name} {low / MIB:,.0f}→{high / MIB:,.0f} MiB ({growth:+.0%})" for name, low, high, growth in growths
    )
    judged = "stayed flat" if flat else "grew"
    limit = f"{DRIVER_GROWTH_LIMIT:+.0%}"
    return (
        f"{text}; the driver's peak memory {judged} (within {limit}) from {size_label(smallest.parameters)} "
        f"to {size_label(largest.parameters)}: {figures}"
        if flat
        else f"{text}; the driver's peak memory {judged} beyond {limit} from {size_label(smallest.parameters)} to "
        f"{size_label(largest.parameters)}: {figures}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.executor_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 1M and 10M only")
    parser.add_argument("--sizes", type=parse_sizes, help="comma-separated parameter counts, e.g. 1M,10M,100M")
    parser.add_argument("--updates", type=int, default=10, help="K: updates in the version (default 10)")
    parser.add_argument(
        "--master", default="local-cluster[2,1,4096]", help="Spark master of the aggregate phase (default %(default)s)"
    )
    parser.add_argument("--executor-memory", default="2g", help="spark.executor.memory (default %(default)s)")
    parser.add_argument(
        "--spark-conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another Spark setting of the aggregate phase (repeatable), e.g. "
        "spark.sql.inMemoryColumnarStorage.batchSize=8",
    )
    parser.add_argument(
        "--prepare-driver-memory", default="4g", help="driver heap of the (unmeasured) prepare phase (%(default)s)"
    )
    parser.add_argument("--phase-timeout", type=float, default=3600.0, help="seconds before a phase fails (3600)")
    parser.add_argument("--keep-state", action="store_true", help="keep each size's folder (tables, logs)")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the command line; ``ValueError`` for ones that cannot run."""
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if not sizes or any(size < 1 for size in sizes) or args.updates < 1:
        raise ValueError(f"sizes and --updates must be positive, got {sizes} and {args.updates}")
    malformed = [conf for conf in args.spark_conf if "=" not in conf or " " in conf]
    if malformed:
        raise ValueError(f"--spark-conf takes KEY=VALUE without spaces, got {malformed}")
    return Settings(
        sizes=tuple(sizes),
        updates=args.updates,
        master=args.master,
        executor_memory=args.executor_memory,
        spark_conf=tuple(args.spark_conf),
        prepare_driver_memory=args.prepare_driver_memory,
        phase_timeout_seconds=args.phase_timeout,
        keep_state=args.keep_state,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run every size, print the table and the verdict, write ``executor-scale-latest.json``."""
    settings = settings_from(_parser().parse_args(argv))
    started, started_at = time.monotonic(), datetime.now(UTC).isoformat(timespec="seconds")

    def say(message: str) -> None:
        print(f"[bench {time.monotonic() - started:6.0f}s] {message}", file=sys.stderr, flush=True)

    rows = [run_size(settings, parameters, say) for parameters in settings.sizes]
    load = os.getloadavg()
    extra = "".join(f", {conf}" for conf in settings.spark_conf)
    print(
        f"\nfedstream executor-scale benchmark: FedBuff K={settings.updates} + Adam, master {settings.master}, "
        f"executor memory {settings.executor_memory}{extra}, driver heap 1g, {os.cpu_count()} CPUs, load average "
        f"{', '.join(f'{value:.1f}' for value in load)}, {time.monotonic() - started:.0f}s\n"
    )
    print(format_rows(rows))
    print(f"\n{verdict(rows)}")
    print(
        "\nexec s: one aggregate_on_executors call (driver and executors warm). MB/s: K × float32 update bytes / s. "
        "numpy: decode_update_chunk + decode_chunk_body of every chunk, then Strategy.aggregate (float64 Σ w·Δ, Adam) "
        "in one process; ratio = exec MB/s / numpy MB/s; same: both versions have the same shards root. driver py / "
        "driver JVM / executors: peak RSS over the call of the driver's Python, its JVM, and every process under that "
        "JVM (executor JVMs and their Python workers), sampled every 0.5 s; numpy MiB: the floor process's ru_maxrss."
    )
    payload = {
        "benchmark": "executor-scale",
        "started_at": started_at,
        "updates": settings.updates,
        "master": settings.master,
        "executor_memory": settings.executor_memory,
        "spark_conf": list(settings.spark_conf),
        "driver_memory": "1g",
        "cpu_count": os.cpu_count(),
        "load_average": list(load),
        "verdict": verdict(rows),
        "rows": [asdict(row) for row in rows],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "executor-scale-latest.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwritten: {path.relative_to(REPOSITORY)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
