"""Run ``fedstream job`` as its own process, as operators do.

The demo, the fault benchmark and the tests start, SIGKILL, restart and stop the job through
:class:`JobProcess`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producers.transport import GlobalModelSubscriber
from schemas.kafka_settings import KafkaSettings


@dataclass(frozen=True)
class JobOptions:
    """The ``fedstream job`` flags a supervisor chooses; the folder layout is :class:`JobProcess`'s."""

    model_name: str
    initial_model: Path
    aggregation: dict[str, Any] = field(default_factory=dict)
    public_keys: Path | None = None
    experiment: str = "fedstream"
    register_every: int = 10
    trigger_seconds: float = 1.0
    registry_refresh_seconds: float = 10.0
    extra_arguments: tuple[str, ...] = ()
    """Further ``fedstream job`` flags, e.g. ``("--batch-bytes-budget", "33554432")``."""


class JobProcess:
    """One streaming job over ``folder`` (tables, checkpoint, status file, logs), restartable.

    Each start resumes from the same checkpoint and writes ``job-<n>.log``; the job runs in its own session,
    so a kill takes its Spark JVM with it.
    """

    def __init__(self, folder: Path, options: JobOptions) -> None:
        self.folder = folder
        self.options = options
        self.tables = folder / "tables"
        self.checkpoint = folder / "checkpoint"
        self.status_file = folder / "job-status.json"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self) -> list[str]:
        """The command line of one start."""
        options = self.options
        command = [
            sys.executable, "-m", "fedstream.cli", "job",
            "--model-name", options.model_name,
            "--initial-model", str(options.initial_model),
            "--tables-root", str(self.tables),
            "--checkpoint", str(self.checkpoint),
            "--status-file", str(self.status_file),
            "--aggregation", json.dumps(options.aggregation),
            "--register-every", str(options.register_every),
            "--trigger-seconds", str(options.trigger_seconds),
            "--experiment", options.experiment,
            "--registry-refresh-seconds", str(options.registry_refresh_seconds),
        ]  # fmt: skip
        if options.public_keys is not None:
            command += ["--enrol-public-keys", str(options.public_keys)]
        return [*command, *options.extra_arguments]

    @property
    def log_path(self) -> Path:
        """The log of the newest start."""
        return self.folder / f"job-{self.starts}.log"

    def start(self, extra_environment: dict[str, str] | None = None) -> None:
        """Start the job (again); ``extra_environment`` adds variables, e.g. a crash point."""
        self.starts += 1
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(extra_environment or {})},
            )

    def running(self) -> bool:
        """Whether the newest start is still alive."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the job and its Spark JVM: a crash, not a shutdown."""
        process = self._started()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def wait_for_exit(self, timeout_seconds: float) -> int | None:
        """The exit code once the job has exited (a crash point fired), or None if it still runs."""
        try:
            return self._started().wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_seconds: float = 90.0) -> None:
        """SIGTERM to the job: it finishes its batch and exits; then SIGKILL whatever is left of its group.

        Only the job's own process gets SIGTERM: Spark's JVM (in the same process group) would die at once on
        it, cancelling the batch's writes half-way. After ``timeout_seconds`` the whole group is SIGKILLed.
        """
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout_seconds)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def log(self, tail_characters: int = 4000) -> str:
        """The tail of every start's log, oldest first."""
        logs = sorted(self.folder.glob("job-*.log"), key=lambda path: int(path.stem.partition("-")[2]))
        return "\n".join(path.read_text(errors="replace")[-tail_characters:] for path in logs)

    def wait_for_version(self, kafka: KafkaSettings, version: int, timeout_seconds: float = 240) -> None:
        """Block until ``fl.models`` holds ``version`` (or newer) of this model; raise if the job exits first."""
        wait_for_version(
            kafka,
            self.options.model_name,
            version,
            timeout_seconds,
            running=self.running,
            exit_reason=lambda: f"the job exited with {self._started().returncode}",
            log=self.log,
        )

    def status(self) -> dict[str, Any]:
        """The job's progress file (counts of messages, accepted, rejected, pending, ...); empty before the first."""
        try:
            loaded: dict[str, Any] = json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return loaded

    def _started(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError("the job has not been started")
        return self.process


def wait_for_version(
    kafka: KafkaSettings,
    model_name: str,
    version: int,
    timeout_seconds: float,
    *,
    running: Callable[[], bool],
    exit_reason: Callable[[], str],
    log: Callable[[], str],
) -> None:
    """Block until ``fl.models`` holds ``version`` (or newer) of ``model_name``, whole or in chunks.

    It reads as a client does (:class:`GlobalModelSubscriber`): only a complete version signed by the job's key
    counts. Raises once the job is not ``running`` (with ``exit_reason`` and its ``log``) or after
    ``timeout_seconds``.
    """
    subscriber = GlobalModelSubscriber(kafka, model_name)
    try:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if not running():
                raise RuntimeError(f"{exit_reason()}:\n{log()}")
            newest = subscriber.poll(1.0)
            if newest is not None and newest >= version:
                return
        raise TimeoutError(f"no version {version} within {timeout_seconds:.0f} s:\n{log()}")
    finally:
        subscriber.close()
