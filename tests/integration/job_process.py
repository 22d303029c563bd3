"""The streaming job as the integration tests run it: quick triggers and key refreshes, in its own process or
in a thread of the test process on the tests' Spark session."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedstream.cli import job_settings, parse_job_arguments
from fedstream.job_process import JobOptions, JobProcess, wait_for_version
from schemas.kafka_settings import KafkaSettings


def test_job(
    folder: Path, model_name: str, initial_model: Path, aggregation: dict[str, Any], public_keys: Path | None = None
) -> JobProcess:
    """A :class:`JobProcess` over ``folder`` that triggers every 0.5 s and re-reads enrolled keys every 2 s."""
    return JobProcess(folder, quick_job_options(model_name, initial_model, aggregation, public_keys))


test_job.__test__ = False  # type: ignore[attr-defined]  # a factory, not a test


def quick_job_options(
    model_name: str,
    initial_model: Path,
    aggregation: dict[str, Any],
    public_keys: Path | None,
    extra_arguments: tuple[str, ...] = (),
) -> JobOptions:
    """:class:`JobOptions` of a test's job: 0.5 s triggers, keys re-read every 2 s, MLflow registration every 2."""
    return JobOptions(
        model_name,
        initial_model,
        aggregation,
        public_keys,
        experiment=f"test-{model_name}",
        register_every=2,
        trigger_seconds=0.5,
        registry_refresh_seconds=2.0,
        extra_arguments=extra_arguments,
    )


class JobThread:
    """``run_job`` with the settings ``fedstream job`` would parse from :class:`JobProcess`'s command line, in a
    thread of the test process on the tests' Spark session.

    For tests of what the job does with messages, not of its process: no crash or kill, and no JVM start of
    its own (about half a minute of CI each). Same folder layout and methods as :class:`JobProcess`.
    """

    def __init__(self, spark: Any, folder: Path, options: JobOptions) -> None:
        self.spark = spark
        self.layout = JobProcess(folder, options)
        self.tables, self.checkpoint = self.layout.tables, self.layout.checkpoint
        self.options = options
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the job in a thread (once)."""
        from streaming_jobs.job import run_job

        command = self.layout.command()
        args = parse_job_arguments(command[command.index("job") + 1 :])
        settings = job_settings(args)

        def run() -> None:
            try:
                run_job(settings, spark=self.spark, stop=self._stop, status_file=self.layout.status_file)
            except BaseException:  # the test reads it through running() and log()
                self.failure = traceback.format_exc()

        self._thread = threading.Thread(target=run, name=f"job-{self.options.model_name}", daemon=True)
        self._thread.start()

    def running(self) -> bool:
        """Whether the job's thread is still alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_seconds: float = 90.0) -> None:
        """Ask the job to finish its batch and return, as SIGTERM does to ``fedstream job``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_seconds)
            assert not self._thread.is_alive(), f"the job did not stop within {timeout_seconds:.0f} s"

    def log(self) -> str:
        """The job's failure, if it ended with one (its log lines go to pytest's captured logging)."""
        return self.failure or ""

    def status(self) -> dict[str, Any]:
        """The job's progress file, as :meth:`JobProcess.status`."""
        return self.layout.status()

    def wait_for_version(self, kafka: KafkaSettings, version: int, timeout_seconds: float = 240) -> None:
        """Block until ``fl.models`` holds ``version`` (or newer) of this model; raise if the job ends first."""
        wait_for_version(
            kafka,
            self.options.model_name,
            version,
            timeout_seconds,
            running=self.running,
            exit_reason=lambda: "the job ended",
            log=self.log,
        )


def test_job_thread(
    spark: Any,
    folder: Path,
    model_name: str,
    initial_model: Path,
    aggregation: dict[str, Any],
    public_keys: Path | None = None,
) -> JobThread:
    """A :class:`JobThread` with :func:`test_job`'s options."""
    return JobThread(spark, folder, quick_job_options(model_name, initial_model, aggregation, public_keys))


test_job_thread.__test__ = False  # type: ignore[attr-defined]  # a factory, not a test


def wait_until(condition: Callable[[], bool], timeout_seconds: float, what: str) -> None:
    """Poll ``condition`` every second; fail the test if it is not true within ``timeout_seconds``."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")
