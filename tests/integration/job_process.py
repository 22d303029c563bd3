"""The streaming job as the integration tests run it: its own process, quick triggers and key refreshes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedstream.job_process import JobOptions, JobProcess


def test_job(
    folder: Path, model_name: str, initial_model: Path, aggregation: dict[str, Any], public_keys: Path | None = None
) -> JobProcess:
    """A :class:`JobProcess` over ``folder`` that triggers every 0.5 s and re-reads enrolled keys every 2 s."""
    options = JobOptions(
        model_name,
        initial_model,
        aggregation,
        public_keys,
        experiment=f"test-{model_name}",
        register_every=2,
        trigger_seconds=0.5,
        registry_refresh_seconds=2.0,
    )
    return JobProcess(folder, options)


test_job.__test__ = False  # type: ignore[attr-defined]  # a factory, not a test


def wait_until(condition: Callable[[], bool], timeout_seconds: float, what: str) -> None:
    """Poll ``condition`` every second; fail the test if it is not true within ``timeout_seconds``."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")
