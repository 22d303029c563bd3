"""When the job re-reads ``client_keys``: in the background while keys are fresh enough, waiting past twice that.

The read itself (a Delta table through Spark) is exercised on the real stack in
``tests/integration/test_client_identity.py``; here it is replaced by a function whose answers and timing the
test controls, and the registry's clock by one the test moves, so only the refresh policy is under test.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from streaming_jobs import client_registry
from streaming_jobs.client_registry import ClientRegistry, KeyState

REFRESH_SECONDS = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedReads:
    """Stands in for ``load_keys``: read N returns ``{"client-N"}``, once its gate (if the test set one) opens."""

    def __init__(self) -> None:
        self.reads = 0
        self.gates: dict[int, threading.Event] = {}
        self.fail_with: Exception | None = None
        self._count = threading.Lock()

    def hold(self, read: int) -> threading.Event:
        self.gates[read] = threading.Event()
        return self.gates[read]

    def __call__(self, spark: object, locations: object) -> dict[str, KeyState]:
        with self._count:
            self.reads += 1
            read = self.reads
        gate = self.gates.get(read)
        if gate is not None and not gate.wait(timeout=30):
            raise TimeoutError(f"the test never released read {read}")
        if self.fail_with is not None:
            raise self.fail_with
        return {f"client-{read}": KeyState(public_key=bytes(32), revoked=False)}


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedReads]:
    scripted = ScriptedReads()
    monkeypatch.setattr(client_registry, "load_keys", scripted)
    yield scripted
    for gate in scripted.gates.values():
        gate.set()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def registry(clock: Clock) -> ClientRegistry:
    return ClientRegistry(spark=None, locations=None, refresh_seconds=REFRESH_SECONDS, clock=clock)  # type: ignore[arg-type]


def known(registry: ClientRegistry) -> set[str]:
    return set(registry._keys)


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition never held")
        time.sleep(0.005)


def test_the_first_batch_waits_for_the_keys(reads: ScriptedReads, clock: Clock) -> None:
    keys = registry(clock)
    keys.refresh_if_due()
    assert known(keys) == {"client-1"}
    clock.now += REFRESH_SECONDS * 0.9
    keys.refresh_if_due()  # fresh: no read
    assert reads.reads == 1


def test_keys_past_the_refresh_period_are_re_read_without_holding_the_batch(reads: ScriptedReads, clock: Clock) -> None:
    keys = registry(clock)
    keys.refresh_if_due()
    gate = reads.hold(2)
    clock.now += REFRESH_SECONDS * 1.5
    keys.refresh_if_due()  # returns although read 2 is held
    wait_for(lambda: reads.reads == 2)
    assert known(keys) == {"client-1"}, "the batch judges by the keys it has while the read runs"
    keys.refresh_if_due()  # a read is under way: no second one
    gate.set()
    wait_for(lambda: known(keys) == {"client-2"})
    assert reads.reads == 2


def test_keys_older_than_twice_the_period_are_read_before_judging(reads: ScriptedReads, clock: Clock) -> None:
    keys = registry(clock)
    keys.refresh_if_due()
    clock.now += REFRESH_SECONDS * 2
    keys.refresh_if_due()
    assert known(keys) == {"client-2"}  # read within the call, not after it


def test_a_failed_background_read_is_logged_and_a_late_batch_reads_and_fails_itself(
    reads: ScriptedReads, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    keys = registry(clock)
    keys.refresh_if_due()
    reads.fail_with = OSError("the table cannot be read")
    clock.now += REFRESH_SECONDS * 1.5
    with caplog.at_level(logging.WARNING, logger=client_registry.__name__):
        keys.refresh_if_due()
        wait_for(lambda: any("client_keys" in record.getMessage() for record in caplog.records))
    assert known(keys) == {"client-1"}
    clock.now += REFRESH_SECONDS * 0.5  # now twice the period since the last good read
    with pytest.raises(OSError, match="cannot be read"):
        keys.refresh_if_due()


def test_an_older_read_that_ends_last_does_not_replace_newer_keys(reads: ScriptedReads, clock: Clock) -> None:
    keys = registry(clock)
    keys.refresh_if_due()
    older = reads.hold(2)
    clock.now += REFRESH_SECONDS * 1.5
    keys.refresh_if_due()  # read 2 begins in the background and is held
    wait_for(lambda: reads.reads == 2)
    clock.now += REFRESH_SECONDS  # past twice the period: this batch reads the keys itself (read 3)
    keys.refresh_if_due()
    assert known(keys) == {"client-3"}
    older.set()  # read 2, which began before read 3, ends last
    wait_for(lambda: keys._reading is not None and keys._reading.done())
    assert known(keys) == {"client-3"}
