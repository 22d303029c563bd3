"""Crash points for fault-injection tests: inert unless ``FEDSTREAM_FAULT_INJECTION`` names one.

``FEDSTREAM_FAULT_INJECTION=after_updates_write@2`` makes the job SIGKILL itself (and its Spark JVM) the
second time it passes that point, exactly as a power cut would. Points: ``during_aggregation`` (versions
computed, nothing written), ``after_updates_write`` (updates and rejections in Delta, versions not),
``after_versions_write`` (versions in Delta, not yet on Kafka or MLflow).
"""

from __future__ import annotations

import os
import signal

FAULT_VARIABLE = "FEDSTREAM_FAULT_INJECTION"
CRASH_POINTS = ("during_aggregation", "after_updates_write", "after_versions_write")
_passes: dict[str, int] = {}


def crash_point(point: str) -> None:
    """SIGKILL this process group at the configured pass of ``point``; do nothing otherwise."""
    configured = os.environ.get(FAULT_VARIABLE)
    if not configured:
        return
    name, _, count = configured.partition("@")
    if name not in CRASH_POINTS:
        raise ValueError(f"{FAULT_VARIABLE}={configured!r}: unknown crash point; known: {CRASH_POINTS}")
    if name != point:
        return
    _passes[point] = _passes.get(point, 0) + 1
    if _passes[point] == int(count or "1"):
        if os.getsid(0) == os.getpid():  # a session leader: take the Spark JVM down with us
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
