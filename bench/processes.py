"""Processes under measurement: start and stop them, follow their status files, sample their memory.

A runner (``fedstream job`` or the bare loop) is a child in its own session, so stopping it reaches its Spark
JVM too. Its memory is the RSS of its whole process tree, read from ``/proc`` every half second; its progress
is its status JSON, read every 50 ms and kept per micro-batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class RssSample:
    """The RSS of a process tree at one moment, in total and by command name."""

    at: float
    total_bytes: int
    by_command: dict[str, int]
    load_average: float = 0.0
    """The machine's one-minute load average at that moment."""
    root_bytes: int = 0
    """The RSS of the root process alone (a runner's Python driver, without its JVM or workers)."""


def tree_rss(root: int) -> RssSample:
    """RSS of ``root`` and all its descendants now (processes that vanish mid-read are skipped).

    A child caught between ``fork`` and ``exec`` (the JVM starting a helper) still maps its parent's pages
    and would count them twice; it shows the parent's executable under another name (the forking thread's),
    and is left out.
    """
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    by_command: dict[str, int] = defaultdict(int)
    root_bytes = 0
    waiting: list[tuple[int, tuple[str, str] | None]] = [(root, None)]
    while waiting:
        pid, parent = waiting.pop()
        try:
            resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
            command = Path(f"/proc/{pid}/comm").read_text().strip()
            executable = os.readlink(f"/proc/{pid}/exe")
        except (OSError, IndexError, ValueError):
            continue
        waiting += [(child, (executable, command)) for child in children.get(pid, [])]
        if parent is not None and parent[0] == executable and parent[1] != command:
            continue  # forked, not yet exec'd
        by_command[command] += resident
        if pid == root:
            root_bytes = resident
    return RssSample(time.time(), sum(by_command.values()), dict(by_command), os.getloadavg()[0], root_bytes)


class RssSampler:
    """Samples one process tree's RSS in a thread until stopped."""

    def __init__(self, root: int, interval_seconds: float = 0.5) -> None:
        self.root = root
        self.interval_seconds = interval_seconds
        self.samples: list[RssSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{root}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = tree_rss(self.root)
            if sample.total_bytes:
                self.samples.append(sample)
            self._stop.wait(self.interval_seconds)

    def peak(self, since: float = 0.0, until: float = float("inf")) -> RssSample | None:
        """The sample with the largest total within ``[since, until]``."""
        window = [sample for sample in self.samples if since <= sample.at <= until]
        return max(window, key=lambda sample: sample.total_bytes, default=None)

    def highest_load(self, since: float = 0.0, until: float = float("inf")) -> float:
        """The highest one-minute load average sampled within ``[since, until]``."""
        return max((s.load_average for s in self.samples if since <= s.at <= until), default=os.getloadavg()[0])

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class BatchStatus:
    """One micro-batch as the runner's status file described it (its ``recent_batches`` entry)."""

    sequence: int
    """1, 2, ... since the runner started (the job's deadline flushes included)."""
    batch_id: int
    started_at: float
    """When the runner's handler began the batch, epoch seconds."""
    finished_at: float
    """When the batch's status was written, epoch seconds."""
    messages: int
    accepted: int
    current_version: int
    pending: int
    seconds: dict[str, float]

    @property
    def busy_seconds(self) -> float:
        """Sum of the batch's measured phases."""
        return sum(self.seconds.values())


class StatusFollower:
    """Reads a runner's status file every ``interval_seconds`` and keeps every micro-batch once.

    The file lists the runner's recent batches by ``sequence``; a sequence number that is never seen (the
    runner ran more batches between two reads than the file keeps) is recorded in :attr:`missed`.
    """

    def __init__(self, status_file: Path, interval_seconds: float = 0.05) -> None:
        self.status_file = status_file
        self.interval_seconds = interval_seconds
        self.batches: dict[int, BatchStatus] = {}
        self.missed: set[int] = set()
        self.latest: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.read()
            self._stop.wait(self.interval_seconds)

    def read(self) -> None:
        """Read the status file once (a missing or half-written file is skipped)."""
        try:
            document: dict[str, Any] = json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return
        self.latest = document
        for entry in document.get("recent_batches") or []:
            sequence = int(entry["sequence"])
            if sequence in self.batches:
                continue
            self.missed.discard(sequence)
            self.batches[sequence] = BatchStatus(
                sequence=sequence,
                batch_id=int(entry["batch_id"]),
                started_at=float(entry.get("started_at") or entry["finished_at"]),
                finished_at=float(entry["finished_at"]),
                messages=int(entry.get("messages", 0)),
                accepted=int(entry.get("accepted", 0)),
                current_version=int(entry["current_version"]),
                pending=int(entry.get("pending", 0)),
                seconds={name: float(value) for name, value in (entry.get("seconds") or {}).items()},
            )
        recorded = int(document.get("batches_recorded", 0))
        self.missed.update(set(range(1, recorded + 1)) - set(self.batches))

    def ordered(self, since: float = 0.0, until: float = float("inf")) -> list[BatchStatus]:
        """Batches that finished within ``[since, until]``, in the order they ran."""
        return [self.batches[key] for key in sorted(self.batches) if since <= self.batches[key].finished_at <= until]

    @property
    def reported_batches(self) -> int:
        """How many batches the runner says it has run (to check that none was missed)."""
        return int(self.latest.get("batches_recorded", 0))

    def stop(self) -> None:
        """Stop following."""
        self._stop.set()
        self._thread.join()


class RunnerFailedError(RuntimeError):
    """A runner exited or did not progress in time; the message holds the end of its log."""


@dataclass
class Runner:
    """One runner process (``fedstream job`` or the bare loop) over its own folder."""

    name: str
    command: list[str]
    folder: Path
    env: dict[str, str]
    status_file: Path
    cwd: Path
    started_at: float = 0.0
    process: subprocess.Popen[bytes] | None = None
    sampler: RssSampler | None = None
    follower: StatusFollower | None = None
    log_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_file = self.folder / f"{self.name}.log"

    def start(self) -> None:
        """Start the process in its own session, its sampler and its status follower."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("wb") as log:
            self.started_at = time.time()
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env, cwd=self.cwd
            )
        self.sampler = RssSampler(self.process.pid)
        self.follower = StatusFollower(self.status_file)

    def wait_for_version(self, version: int, timeout_seconds: float) -> BatchStatus:
        """The first batch after which ``current_version >= version``; raises if the runner dies or stalls."""
        if self.process is None or self.follower is None:
            raise RuntimeError(f"{self.name}: start() first")
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            done = [batch for batch in self.follower.ordered() if batch.current_version >= version]
            if done:
                return done[0]
            if self.process.poll() is not None:
                raise RunnerFailedError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            time.sleep(0.05)
        raise RunnerFailedError(f"{self.name}: no version {version} within {timeout_seconds:.0f}s:\n{self.log_tail()}")

    def wait_until_idle(self, version: int, timeout_seconds: float = 60.0) -> None:
        """Wait until the status shows ``version`` with an empty buffer."""
        if self.follower is None:
            raise RuntimeError(f"{self.name}: start() first")
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            latest = self.follower.latest
            if latest.get("current_version") == version and latest.get("pending") == 0:
                return
            time.sleep(0.05)
        raise RunnerFailedError(f"{self.name} did not settle at version {version}: {self.follower.latest}")

    def stop(self) -> None:
        """SIGTERM the runner (the job ends after its batch), then SIGKILL what is left of its session."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the runner itself: the job stops its query, then Spark
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(90)
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):  # whatever is left of its session (an orphaned JVM)
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self.sampler is not None:
            self.sampler.stop()
        if self.follower is not None:
            self.follower.read()
            self.follower.stop()

    def log_tail(self, characters: int = 4000) -> str:
        """The end of the runner's log."""
        try:
            return self.log_file.read_text(errors="replace")[-characters:]
        except FileNotFoundError:
            return ""
