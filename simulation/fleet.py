"""When simulated devices train and send: on their own hardware, or queued on the machine that drives them.

:class:`producers.fleet.SimulatedFleet` (what ``fedstream demo`` runs) drives every device from one thread:
in order of due time it either trains a device (asking ``fl.models`` for the newest version first) or sends
an update whose device delay has passed. A device that waits for the thread waits to train and to send, and
a device reads its base version when the thread reaches it, not when it asked. :class:`FleetTiming`
describes such a driver; :class:`DeviceQueue` is its queue of due work.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Generic, TypeVar

JobT = TypeVar("JobT")


@dataclass(frozen=True)
class FleetTiming:
    """How a fleet of simulated devices spends its time between updates.

    ``training_slots``: devices that can train at once (threads of the machine that drives the fleet);
    while every slot is busy, due sends wait too. ``None``: every device has its own hardware.
    ``version_wait_seconds``: before training, a device waits this long for a version newer than it has
    read, holding its slot; a version published meanwhile ends the wait early.
    ``restart_seconds``: pause between a device sending its update and asking to train again.
    ``start_stagger_seconds``: gap between the devices' first requests.
    """

    training_slots: int | None = None
    version_wait_seconds: float = 0.0
    restart_seconds: float = 0.0
    start_stagger_seconds: float = 0.0

    def __post_init__(self) -> None:
        """Reject a slot count below one and negative times."""
        slots = self.training_slots
        if slots is not None and (isinstance(slots, bool) or not isinstance(slots, int) or slots < 1):
            raise ValueError(f"training_slots must be None or an int >= 1, got {slots!r}")
        for name in ("version_wait_seconds", "restart_seconds", "start_stagger_seconds"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


OWN_DEVICES = FleetTiming()
"""Every device trains on its own hardware, asks again the moment it has sent: the simulator's default."""

SIMULATED_FLEET = FleetTiming(
    training_slots=1, version_wait_seconds=0.2, restart_seconds=0.1, start_stagger_seconds=0.05
)
"""What :class:`producers.fleet.SimulatedFleet` does: one thread for all devices (``fedstream demo`` trains
with one torch thread); :meth:`producers.transport.GlobalModelSubscriber.newest` polls ``fl.models`` for
0.2 s before training; a device asks again 0.1 s after publishing; first requests are 0.05 s apart."""


@dataclass(order=True)
class _Due(Generic[JobT]):
    due: float
    sequence: int
    job: JobT = field(compare=False)


class DeviceQueue(Generic[JobT]):
    """Work that is due, taken in order of due time whenever a slot is free; ``slots=None``: never waits.

    A training holds its slot until :meth:`release`; a send takes a free slot's turn but no time.
    """

    def __init__(self, slots: int | None) -> None:
        """Start with every slot free."""
        self.free: float = math.inf if slots is None else slots
        self._waiting: list[_Due[JobT]] = []
        self._sequence = 0

    def submit(self, due: float, job: JobT) -> None:
        """Queue ``job``, due at ``due`` (ties keep the order of submission)."""
        heapq.heappush(self._waiting, _Due(due, self._sequence, job))
        self._sequence += 1

    def next_job(self) -> JobT | None:
        """The longest-due job if a slot is free, else (or when nothing waits) ``None``."""
        if self.free < 1 or not self._waiting:
            return None
        return heapq.heappop(self._waiting).job

    def hold(self) -> None:
        """A training takes the free slot :meth:`next_job` found."""
        self.free -= 1

    def release(self) -> None:
        """A training is done: its slot is free again."""
        self.free += 1
