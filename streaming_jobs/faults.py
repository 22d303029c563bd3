"""Crash points for fault-injection tests: inert unless ``FEDSTREAM_FAULT_INJECTION`` names one.

``FEDSTREAM_FAULT_INJECTION=after_updates_write@2`` makes the job SIGKILL itself (and its Spark JVM) the
second time it passes that point, exactly as a power cut would. Points, in the order a batch passes them:
``during_aggregation`` (versions computed, nothing written), ``after_versions_write`` (versions in Delta, not
yet on Kafka, MLflow, or in ``updates``), ``after_updates_write`` (versions published, updates in Delta,
rejections not).
``FEDSTREAM_FAIL_UPDATE_ID=<update_id>`` makes the processing of that one update raise instead.
"""

from __future__ import annotations

import os
import signal

FAULT_VARIABLE = "FEDSTREAM_FAULT_INJECTION"
FAILING_UPDATE_VARIABLE = "FEDSTREAM_FAIL_UPDATE_ID"
"""Names an ``update_id`` whose processing raises, to show that one message's failure ends no batch."""
CRASH_POINTS = ("during_aggregation", "after_versions_write", "after_updates_write")
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


class InjectedMessageError(RuntimeError):
    """Raised while processing the update named by ``FEDSTREAM_FAIL_UPDATE_ID``."""


def inject_message_failure(update_id: str) -> None:
    """Raise while processing ``update_id`` when ``FEDSTREAM_FAIL_UPDATE_ID`` names it; do nothing otherwise."""
    if os.environ.get(FAILING_UPDATE_VARIABLE) == update_id:
        raise InjectedMessageError(f"injected failure while processing update {update_id}")
