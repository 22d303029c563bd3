"""A simulated fleet of devices in one process: real local training, real Kafka, heterogeneous speeds.

Each device cycles: take the newest global version, train on its own data (real compute), then hold the
update for a device-specific delay (slow phones, poor networks, a heavy straggler tail) before publishing.
Updates therefore arrive stale by different amounts, which is what asynchronous aggregation is for.
With ``synchronous=True`` a device starts again only once a newer global version exists (FedAvg rounds):
it trains on a version only when the round's cohort draw picks it (``FederatedClient.in_cohort``), and an
update whose round closed while the device was still busy is not sent (the job would refuse it as stale),
so a late device spends no upload on it and goes straight to the next round.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from producers.client import FederatedClient, PreparedUpdate

if TYPE_CHECKING:  # the caller brings its transport: ``DeviceSpeeds`` serves the simulator without kafka
    from producers.transport import GlobalModelSubscriber, UpdatePublisher


@dataclass(frozen=True)
class DeviceSpeeds:
    """Per-device delay between training and publishing: log-normal, plus a straggler tail."""

    median_seconds: float = 1.5
    sigma: float = 0.8
    straggler_fraction: float = 0.1
    straggler_factor: float = 6.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.median_seconds < 0 or self.sigma < 0 or self.straggler_factor < 1:
            raise ValueError(f"invalid device speeds {self!r}")
        if not 0 <= self.straggler_fraction <= 1:
            raise ValueError(f"straggler_fraction must be in [0, 1], got {self.straggler_fraction!r}")

    def draw(self, device_count: int) -> list[float]:
        """One typical delay per device (seconds); stragglers are the slowest ``straggler_fraction``."""
        rng = np.random.default_rng(self.seed)
        delays = self.median_seconds * np.exp(self.sigma * rng.standard_normal(device_count))
        stragglers = rng.permutation(device_count)[: math.ceil(self.straggler_fraction * device_count)]
        delays[stragglers] *= self.straggler_factor
        return [float(delay) for delay in delays]


@dataclass(frozen=True)
class FleetEvent:
    """One published update, for progress reporting."""

    client_id: str
    base_version: int
    at_seconds: float
    prepared: PreparedUpdate


@dataclass
class FleetReport:
    """What the fleet did."""

    published: int = 0
    bytes_sent: int = 0
    per_client: dict[str, int] = field(default_factory=dict)
    late_unsent: int = 0
    """Synchronous rounds: updates not sent because their round had closed (a newer version was out)."""
    rounds_sat_out: int = 0
    """Synchronous rounds: versions a device did not train on because the cohort draw left it out."""


class SimulatedFleet:
    """Drives many :class:`FederatedClient` objects against one broker from a single thread."""

    def __init__(
        self,
        clients: Sequence[FederatedClient],
        subscriber: GlobalModelSubscriber,
        publisher: UpdatePublisher,
        speeds: DeviceSpeeds,
        *,
        synchronous: bool = False,
        on_publish: Callable[[FleetEvent], None] | None = None,
    ) -> None:
        self.clients = list(clients)
        self.subscriber = subscriber
        self.publisher = publisher
        self.delays = speeds.draw(len(self.clients))
        self.synchronous = synchronous
        self.on_publish = on_publish
        self._jitter = np.random.default_rng(speeds.seed + 1)

    def run(self, duration_seconds: float, stop: threading.Event | None = None) -> FleetReport:
        """Run until ``duration_seconds`` pass or ``stop`` is set; every started update is published."""
        stop = stop or threading.Event()
        started = time.monotonic()
        deadline = started + duration_seconds
        report = FleetReport()
        # (due time, sequence, client index, update to publish or None = time to start training)
        events: list[tuple[float, int, int, PreparedUpdate | None]] = []
        last_base: dict[int, int] = {}
        for index in range(len(self.clients)):
            heapq.heappush(events, (started + 0.05 * index, index, index, None))
        sequence = len(self.clients)
        while events:
            due, _, index, prepared = heapq.heappop(events)
            if prepared is None and (stop.is_set() or time.monotonic() >= deadline):
                continue  # no new training after the end; pending publishes still go out
            pause = due - time.monotonic()
            if pause > 0 and not stop.is_set():
                if stop.wait(min(pause, 0.5)) and prepared is None:
                    continue
                if due - time.monotonic() > 0:
                    heapq.heappush(events, (due, sequence, index, prepared))
                    sequence += 1
                    continue
            client = self.clients[index]
            if prepared is not None and self.synchronous and self._round_closed(prepared):
                report.late_unsent += 1
                heapq.heappush(events, (time.monotonic(), sequence, index, None))
            elif prepared is not None:
                self.publisher.publish_chunks(
                    client.client_id, list(prepared.values), model_name=prepared.header.model_name, wait=False
                )
                report.published += 1
                report.bytes_sent += prepared.size_bytes
                report.per_client[client.client_id] = report.per_client.get(client.client_id, 0) + 1
                if self.on_publish is not None:
                    self.on_publish(
                        FleetEvent(client.client_id, prepared.header.base_version, time.monotonic() - started, prepared)
                    )
                heapq.heappush(events, (time.monotonic() + 0.1, sequence, index, None))
            else:
                newest = self.subscriber.poll(0)
                if self.synchronous and newest is not None and newest <= last_base.get(index, -1):
                    heapq.heappush(events, (time.monotonic() + 0.5, sequence, index, None))
                    sequence += 1
                    continue
                model = self.subscriber.newest()
                if self.synchronous and not client.in_cohort(model):
                    report.rounds_sat_out += 1
                    last_base[index] = model.header.version
                    heapq.heappush(events, (time.monotonic() + 0.5, sequence, index, None))
                    sequence += 1
                    continue
                update = client.prepare_update(model, max_message_bytes=self.publisher.max_message_bytes)
                last_base[index] = update.header.base_version
                delay = self.delays[index] * float(np.exp(0.3 * self._jitter.standard_normal()))
                heapq.heappush(events, (time.monotonic() + delay, sequence, index, update))
            sequence += 1
        self.publisher.flush()
        return report

    def _round_closed(self, prepared: PreparedUpdate) -> bool:
        """Whether a version newer than the update's base is out: its synchronous round is over."""
        newest = self.subscriber.poll(0)
        return newest is not None and newest > prepared.header.base_version
