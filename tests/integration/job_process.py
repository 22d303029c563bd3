"""Run ``fedstream job`` as its own process, as operators do, so tests can SIGKILL and restart it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from producers.transport import GlobalModelSubscriber
from schemas.kafka_settings import KafkaSettings


class JobProcess:
    """One streaming job over a folder of Delta tables, restartable from the same checkpoint."""

    def __init__(
        self,
        folder: Path,
        model_name: str,
        initial_model: Path,
        aggregation: dict[str, Any],
        public_keys: Path | None = None,
    ) -> None:
        self.folder = folder
        self.model_name = model_name
        self.initial_model = initial_model
        self.aggregation = aggregation
        self.public_keys = public_keys
        self.tables = folder / "tables"
        self.status_file = folder / "job-status.json"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, extra_environment: dict[str, str] | None = None) -> None:
        self.starts += 1
        log = (self.folder / f"job-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedstream.cli",
                "job",
                "--model-name",
                self.model_name,
                "--initial-model",
                str(self.initial_model),
                "--tables-root",
                str(self.tables),
                "--checkpoint",
                str(self.folder / "checkpoint"),
                "--status-file",
                str(self.status_file),
                "--aggregation",
                json.dumps(self.aggregation),
                "--register-every",
                "2",
                "--trigger-seconds",
                "0.5",
                "--experiment",
                f"test-{self.model_name}",
                "--registry-refresh-seconds",
                "2",
                *(["--enrol-public-keys", str(self.public_keys)] if self.public_keys else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(extra_environment or {})},
        )

    def kill(self) -> None:
        """SIGKILL the job and its Spark JVM: a crash, not a shutdown."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def wait_for_exit(self, timeout_seconds: float) -> int | None:
        """The exit code once the job has exited (a crash point fired), or None if it still runs."""
        assert self.process is not None
        try:
            return self.process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """SIGTERM: the job finishes its batch and exits."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-4000:] for path in sorted(self.folder.glob("job-*.log")))

    def wait_for_version(self, kafka: KafkaSettings, version: int, timeout_seconds: float = 240) -> None:
        subscriber = GlobalModelSubscriber(kafka, self.model_name)
        try:
            deadline = time.monotonic() + timeout_seconds
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"the job exited with {self.process.returncode}:\n{self.log()}")
                newest = subscriber.poll(1.0)
                if newest is not None and newest >= version:
                    return
            raise AssertionError(f"no version {version} within {timeout_seconds}s:\n{self.log()}")
        finally:
            subscriber.close()

    def status(self) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return loaded
