"""The one event loop of a simulated run: devices train and send, the server judges and publishes.

Devices (:mod:`simulation.fleet`) ask to train, wait for a slot on the machine that drives them, read the
newest *published* version when their training starts, train for real, hold the update for their delay
(:class:`simulation.devices.DeviceCosts`) and send it once a slot lets them. The job
(:class:`simulation.cadence.JobCadence`) judges what arrived in micro-batches and publishes the versions a
batch made ``publish_seconds`` after it began; with no trigger and no publishing delay it judges each update
the moment it arrives and clients see each version at once. Asynchronous strategies keep ``concurrency``
clients busy, replacing each client that sent with one sampled from the idle ones (with every client busy,
the same client asks again). Synchronous strategies run rounds: ``concurrency`` sampled clients train from
one version, and the round ends in one version of all their updates when the last one arrives.

Events that fall on the same virtual instant are handled together, and the job's batch after the devices'
events, before any client is chosen to start again, so with equal delays FedBuff(K = concurrency = all
clients) makes exactly the FedAvg rounds.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from aggregator import AsyncServer, NewVersion
from aggregator.intake import Intake, IntakeMessage
from schemas.messages import ClientMetrics, UpdateHeader
from schemas.wire import DecodedUpdate
from simulation.cadence import JobCadence
from simulation.clients import SimulatedClients, TrainedUpdate
from simulation.devices import DeviceCosts
from simulation.fleet import DeviceQueue, FleetTiming
from simulation.results import SimulationResult, UpdateTiming, Weights

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
"""Virtual time 0 as an aware datetime, for the aggregator's buffer policy."""
SIMULATED_MODEL = "simulated"
"""The model name on every simulated update header (the intake checks it as the job checks its own)."""
UNHASHED = "0" * 64
"""The payload hash of a simulated header: its delta was never encoded (decoding is what checks the hash)."""


class _Kind(enum.Enum):
    ASK = "a device asks to train"
    WAKE = "a device's wait for a newer version ends"
    FREE = "a training is done and frees its slot"
    SEND = "a device's delay is over: its update is ready to send"


@dataclass(frozen=True)
class _Update:
    """An update on its way: who trained it, from which version, in which order the trainings began."""

    client: int
    sequence: int
    asked_at: float
    training_started_at: float
    base_version: int
    trained: TrainedUpdate


@dataclass(frozen=True)
class _Waiting:
    """A device holding its slot while it waits for a newer version."""

    wake: int
    sequence: int
    asked_at: float


@dataclass(order=True)
class _Event:
    at: float
    order: int
    kind: _Kind = field(compare=False)
    client: int = field(compare=False)
    update: _Update | None = field(compare=False, default=None)


class EventLoop:
    """One run's state: the virtual clock, the devices' events and queue, and the job's inbox and publications."""

    def __init__(
        self,
        server: AsyncServer,
        clients: SimulatedClients,
        costs: DeviceCosts,
        *,
        fleet: FleetTiming,
        cadence: JobCadence,
        synchronous: bool,
        concurrency: int,
        sampler: np.random.Generator,
        message_bytes: int,
        record: Callable[[SimulationResult, float], None],
        result: SimulationResult,
        total_updates: int,
    ) -> None:
        """Fill ``result`` until ``total_updates`` updates arrived; ``record(result, now)`` adds a curve point."""
        self.server = server
        self.intake = Intake(server, SIMULATED_MODEL)
        """The job's intake step: every update is judged here, as the job judges a decoded message."""
        self.clients = clients
        self.costs = costs
        self.fleet = fleet
        self.cadence = cadence
        self.synchronous = synchronous
        self.concurrency = concurrency
        self.sampler = sampler
        self.message_bytes = message_bytes
        self.record = record
        self.result = result
        self.total_updates = total_updates
        self.events: list[_Event] = []
        self.queue: DeviceQueue[_Event] = DeviceQueue(fleet.training_slots)
        self.published: tuple[int, Weights] = (server.version, server.parameters)
        """The newest version clients can fetch, and its shared weights."""
        self.publications: deque[tuple[float, int, Weights]] = deque()
        """Versions made but not yet on ``fl.models``: (when clients see it, version, weights)."""
        self.inbox: list[tuple[float, _Update]] = []
        """Updates arrived at the job and not yet judged, with their arrival times, in arrival order."""
        self.job_free_at = 0.0
        self.spent_deadline: datetime | None = None
        self.busy: set[int] = set()
        self.waiting: dict[int, _Waiting] = {}
        """Devices waiting for a newer version before training, by client."""
        self.finished: list[int] = []
        self.started = 0
        self.order = 0
        self.round_updates: list[tuple[float, _Update]] = []
        self.round_size = 0
        self.round_started_at = 0.0

    # ------------------------------------------------------------------ the loop

    def run(self, eval_every: int) -> None:
        """Simulate until ``total_updates`` updates arrived (whole rounds when synchronous), then drain.

        Each pass handles one virtual instant: versions due on ``fl.models``, the devices' events, the job's
        batch, a curve point every ``eval_every`` updates, then the clients that start again.
        """
        result = self.result
        next_eval = eval_every
        first = self._sample(range(len(self.clients)), self.concurrency)
        if self.synchronous:
            self._start_round(first, 0.0, stagger=self.fleet.start_stagger_seconds)
        else:
            self._ask(first, 0.0, stagger=self.fleet.start_stagger_seconds)
        while True:
            now = min(
                self.events[0].at if self.events else math.inf,
                self.publications[0][0] if self.publications else math.inf,
                self._next_batch_at(),
            )
            if now == math.inf:
                break
            self._publish_due(now)
            while self.events and self.events[0].at <= now:
                self._handle(heapq.heappop(self.events), now)
            if self._next_batch_at() <= now:
                self._judge(now)
            if result.updates >= next_eval:
                self.record(result, now)
                next_eval = result.updates + eval_every
            self._restart(now)
        self._made(self.server.drain())  # the final model uses every accepted update

    def _handle(self, event: _Event, now: float) -> None:
        if event.kind is _Kind.ASK or event.kind is _Kind.SEND:
            self.queue.submit(event.at, event)
        elif event.kind is _Kind.FREE:
            self.queue.release()
        elif event.client in self.waiting and self.waiting[event.client].wake == event.order:
            waiting = self.waiting.pop(event.client)  # no version came during the wait
            self._train(event.client, waiting.sequence, waiting.asked_at, now)
        self._dispatch(now)

    def _push(self, at: float, kind: _Kind, client: int, update: _Update | None = None) -> int:
        self.order += 1
        heapq.heappush(self.events, _Event(at, self.order, kind, client, update))
        return self.order

    def _sample(self, pool: Sequence[int], count: int) -> list[int]:
        chosen = self.sampler.choice(len(pool), size=count, replace=False)
        return [pool[int(index)] for index in sorted(chosen)]

    # ------------------------------------------------------------------ devices

    def _ask(self, clients: Sequence[int], at: float, *, stagger: float = 0.0) -> None:
        """``clients`` ask to train at ``at``, ``stagger`` seconds apart, in order."""
        for position, client in enumerate(clients):
            self.busy.add(client)
            self._push(at + position * stagger, _Kind.ASK, client)

    def _may_start(self) -> bool:
        return self.started < self.total_updates and not self.result.privacy_budget_exhausted

    def _dispatch(self, now: float) -> None:
        """Give free slots to due work, longest due first: a send goes out, a training begins."""
        while (job := self.queue.next_job()) is not None:
            if job.update is not None:
                self._arrive(job.update, now)
            elif not self.synchronous and not self._may_start():
                self.busy.discard(job.client)
            else:
                self.queue.hold()
                sequence = self.started
                self.started += 1
                if self.fleet.version_wait_seconds > 0:
                    wake = self._push(now + self.fleet.version_wait_seconds, _Kind.WAKE, job.client)
                    self.waiting[job.client] = _Waiting(wake, sequence, job.at)
                else:
                    self._train(job.client, sequence, job.at, now)

    def _train(self, client: int, sequence: int, asked_at: float, now: float) -> None:
        """Train ``client`` now from the newest published version; its update is due after delay and upload."""
        base_version, base = self.published
        trained = self.clients.train(client, base, base_version)
        if self.fleet.training_slots is not None:
            self._push(now + self.costs.training_seconds(trained.training_steps), _Kind.FREE, client)
        update = _Update(client, sequence, asked_at, now, base_version, trained)
        self._push(now + self.costs.update_seconds(client, trained.training_steps), _Kind.SEND, client, update)

    def _restart(self, now: float) -> None:
        """After an instant: clients that sent are replaced (asynchronous) or the next round begins."""
        finished, self.finished = self.finished, []
        if self.synchronous:
            round_over = self.round_size == 0 and bool(finished)
            if round_over and self.result.updates < self.total_updates and not self._budget_refuses():
                self._start_round(self._sample(range(len(self.clients)), self.concurrency), now)
            return
        if finished and self._may_start():
            idle = [client for client in range(len(self.clients)) if client not in self.busy]
            self._ask(self._sample(idle, min(len(finished), len(idle))), now + self.fleet.restart_seconds)

    # ------------------------------------------------------------------ the server

    def _arrive(self, update: _Update, now: float) -> None:
        self.busy.discard(update.client)
        self.finished.append(update.client)
        self.result.virtual_seconds = now
        self.result.update_timings.append(
            UpdateTiming(
                self.clients.client_ids[update.client],
                update.asked_at,
                update.training_started_at,
                update.base_version,
                now,
            )
        )
        if self.synchronous:
            self.round_updates.append((now, update))
            if len(self.round_updates) == self.round_size:
                self._close_round(now)
            return
        self.result.updates += 1
        self.result.bytes_sent += self.message_bytes
        self.inbox.append((now, update))
        if self.cadence.judges_on_arrival and self.job_free_at <= now:
            self._judge(now)

    def _deadline_at(self) -> float | None:
        """Virtual seconds of the buffer's wait deadline; None without one, once it made nothing, or out of budget."""
        deadline = self.server.deadline()
        if deadline is None or deadline == self.spent_deadline or self.result.privacy_budget_exhausted:
            return None
        return (deadline - EPOCH).total_seconds()

    def _next_batch_at(self) -> float:
        """When the job's next batch begins: for the oldest waiting update or the buffer's deadline."""
        if self.synchronous:
            return math.inf
        waiting = [self.inbox[0][0]] if self.inbox else []
        deadline = self._deadline_at()
        if deadline is not None:
            waiting.append(deadline)
        return self.cadence.next_batch_at(min(waiting), self.job_free_at) if waiting else math.inf

    def _judge(self, now: float) -> None:
        """One micro-batch as the job's intake runs it: in order, a full buffer aggregates at once; then deadlines.

        The batch takes the updates that arrived before it began (at its start too, without a trigger).
        """
        on_arrival = self.cadence.judges_on_arrival
        batch = [update for at, update in self.inbox if at < now or (on_arrival and at <= now)]
        self.inbox = self.inbox[len(batch) :]
        server = self.server
        moment = EPOCH + timedelta(seconds=now)
        self._take(batch, moment)
        self._made(server.ready_versions(moment))
        deadline = self._deadline_at()
        if deadline is not None and deadline <= now:
            self.spent_deadline = server.deadline()  # nothing was made at it (say, the budget refused)
        self.job_free_at = now + self.cadence.publish_seconds
        self.result.virtual_seconds = now
        self._announce(self.job_free_at, now)

    def _take(self, updates: Sequence[_Update], moment: datetime) -> None:
        """Judge ``updates`` in order through the job's intake step; note rejections and the versions made."""
        messages = [IntakeMessage(update, self._decoded(update, moment), moment) for update in updates]
        outcome = self.intake.step(messages, lambda message, decoded, pending: None, now=moment)
        self.result.rejected += len(outcome.rejected)
        self._made(outcome.versions)

    def _decoded(self, update: _Update, moment: datetime) -> DecodedUpdate:
        """The update as the job would have decoded it from ``fl.updates`` (unsigned: the intake checks no key)."""
        header = UpdateHeader(
            update_id=f"{update.sequence:032x}",
            client_id=self.clients.client_ids[update.client],
            model_name=SIMULATED_MODEL,
            base_version=update.base_version,
            sample_count=int(update.trained.sample_count),
            created_at=moment,
            payload_sha256=UNHASHED,
            metrics=ClientMetrics(training_steps=int(update.trained.training_steps)),
        )
        return DecodedUpdate(header, update.trained.delta)

    def _made(self, versions: Sequence[NewVersion]) -> None:
        """Note the server's new versions in the result, and a budget refusal."""
        self.result.version_stalenesses += [version.stalenesses for version in versions]
        if versions:
            self.result.versions = versions[-1].version
        if self.server.privacy_refusal is not None:
            self.result.privacy_budget_exhausted = True

    def _budget_refuses(self) -> bool:
        """Whether ``dp_epsilon_budget`` refuses the next version (and if so, say so in the result)."""
        check = self.server.budget_check()
        if check is None or check.allows_next:
            return False
        self.result.privacy_budget_exhausted = True
        return True

    def _announce(self, at: float, now: float) -> None:
        """The server's newest version reaches clients at ``at`` (at once when that is now)."""
        version = self.server.version
        newest_coming = self.publications[-1][1] if self.publications else self.published[0]
        if version > newest_coming:
            self.publications.append((at, version, self.server.parameters))
        self._publish_due(now)

    def _publish_due(self, now: float) -> None:
        """Versions due on ``fl.models`` by ``now`` become what clients read; waiting devices read them now."""
        if not self.publications or self.publications[0][0] > now:
            return
        while self.publications and self.publications[0][0] <= now:
            _, version, weights = self.publications.popleft()
            self.published = (version, weights)
            self.result.version_published_at[version] = now
        self.result.virtual_seconds = now
        for client, waiting in sorted(self.waiting.items(), key=lambda item: item[1].sequence):
            del self.waiting[client]
            self._train(client, waiting.sequence, waiting.asked_at, now)

    # ------------------------------------------------------------------ synchronous rounds

    def _start_round(self, cohort: Sequence[int], now: float, *, stagger: float = 0.0) -> None:
        self.round_size = len(cohort)
        self.round_started_at = now
        self.round_updates = []
        self._ask(cohort, now, stagger=stagger)

    def _close_round(self, now: float) -> None:
        """Every sampled client reported: one version of all their updates, received in the order they began."""
        for at, update in sorted(self.round_updates, key=lambda item: item[1].sequence):
            self._take([update], EPOCH + timedelta(seconds=at))
        self.result.round_seconds.append(now - self.round_started_at)
        self.result.updates += self.round_size
        self.result.bytes_sent += self.message_bytes * self.round_size
        self.round_size = 0
        version = self.server.close_round()
        self._made([] if version is None else [version])
        self._announce(now, now)
