"""Event-driven federated simulator with a virtual clock: real training and aggregation, simulated time.

It drives the same client code as a device (``producers.training.train_locally``, FedProx included, and
``producers.personalization``) and the same server as the streaming job (:class:`aggregator.AsyncServer`:
its staleness gate, buffer policy, contribution bounds, strategy, server optimizer and epsilon budget), but
no Kafka and no Spark: a client's update "takes" a compute time drawn from
:class:`producers.fleet.DeviceSpeeds` (log-normal with a straggler tail, times per-update jitter) plus an
upload time (message size over the device's uplink), and a heap of events advances a virtual clock.
Many configurations and seeds therefore run in seconds of real time per hundred updates.

Strategies:

- synchronous (a synchronous strategy such as ``fedavg``, or any with ``synchronous=True``): each round
  samples ``concurrency`` clients, all train from the same version, the round lasts as long as its slowest
  client and ends in one version of all their updates (:meth:`aggregator.AsyncServer.close_round`); FedProx
  is the same with ``training.proximal_mu > 0``.
- asynchronous: ``concurrency`` clients train at once; when one finishes, its update goes to the server
  (refused if its staleness gate says so) and a client is sampled from the idle ones to start on the newest
  version. The server makes versions when its buffer policy says so (``K`` updates or the wait limit,
  checked on every arrival and at the wait deadline), as in the streaming job: with DP at most one update
  per client per version, a client's later update waiting for the next one.

With DP, ``dp_participation="random_check_in"`` without ``dp_population`` takes the simulated clients as the
population, and ``dp_epsilon_budget`` stops making versions (and starting clients) once the next version
would pass it (``SimulationResult.privacy_budget_exhausted``).

Events that fall on the same virtual instant are handled together before any client starts again, so
with equal delays FedBuff(K = concurrency = all clients) makes exactly the FedAvg rounds.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from aggregator import AggregationConfig, AsyncServer, NewVersion, PendingUpdate, PrivateServerOptimizer, strategy_class
from producers.client import LocalData
from producers.fleet import DeviceSpeeds
from producers.models import build_model, load_model_weights, model_weights
from producers.personalization import check_prefixes, evaluate_client, merge_weights, split_weights
from producers.training import Evaluation, LocalTrainingConfig, train_locally
from producers.updates import build_update, model_delta

__all__ = [
    "CurvePoint",
    "JobCadence",
    "NetworkSpeeds",
    "SimulationResult",
    "Simulator",
    "StrategyConfig",
    "update_message_bytes",
]

Weights = dict[str, npt.NDArray[np.float32]]
Evaluator = Callable[[Mapping[str, npt.NDArray[np.float32]]], Evaluation]
UpdateTransform = Callable[[str, Weights], Weights]
"""``(client_id, honest delta) -> delta actually sent``: simulates poisoning clients (identity for honest ones)."""

_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
"""Virtual time 0 as an aware datetime, for the aggregator's buffer policy."""


@dataclass(frozen=True)
class NetworkSpeeds:
    """Per-device uplink speed in bytes per second: log-normal around ``median_bytes_per_second``.

    ``median_bytes_per_second=None`` means uploads take no time.
    """

    median_bytes_per_second: float | None = 1_000_000.0
    sigma: float = 0.5

    def __post_init__(self) -> None:
        """Reject a non-positive median or a negative spread."""
        if self.median_bytes_per_second is not None and not self.median_bytes_per_second > 0:
            raise ValueError(f"median_bytes_per_second must be > 0 or None, got {self.median_bytes_per_second!r}")
        if not self.sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma!r}")


@dataclass(frozen=True)
class JobCadence:
    """How the streaming job sees updates, for a simulation that predicts the pipeline.

    The job reads ``fl.updates`` in micro-batches every ``trigger_seconds``: every update that arrived since
    the last batch is judged in one go, in arrival order, against the version current at that moment, so a
    burst can make several versions from updates that were all computed from the same base. A version
    reaches clients only when the batch that made it has been written and published, ``publish_seconds``
    after the batch began; until then clients keep training from the last published version. A batch that
    overruns delays the next one (Spark starts it as soon as the previous ends).
    """

    trigger_seconds: float = 0.5
    """The job's default trigger interval."""
    publish_seconds: float = 1.0

    def __post_init__(self) -> None:
        """Reject a non-positive trigger or a negative publishing time."""
        if not self.trigger_seconds > 0:
            raise ValueError(f"trigger_seconds must be > 0, got {self.trigger_seconds!r}")
        if not self.publish_seconds >= 0:
            raise ValueError(f"publish_seconds must be >= 0, got {self.publish_seconds!r}")

    def next_batch_at(self, arrived_at: float, job_free_at: float) -> float:
        """When the batch that takes an update arrived at ``arrived_at`` begins."""
        return max(math.floor(arrived_at / self.trigger_seconds + 1) * self.trigger_seconds, job_free_at)


@dataclass(frozen=True)
class StrategyConfig:
    """One federated configuration to simulate.

    ``concurrency``: clients training at once (asynchronous) or sampled per round (synchronous).
    ``synchronous``: rounds that wait for every sampled client (implied by a synchronous strategy such as
    ``fedavg``); with ``fedbuff`` a synchronous round is one FedBuff version (a server optimizer).
    ``personal_prefixes``: parameter-name prefixes that stay on each client (see
    :mod:`producers.personalization`). ``fine_tuning``: local steps a client takes on the final global
    model before it is evaluated on the client's own data (``None``: no fine-tuning).
    """

    name: str
    aggregation: AggregationConfig
    training: LocalTrainingConfig
    concurrency: int = 10
    synchronous: bool = False
    personal_prefixes: tuple[str, ...] = ()
    fine_tuning: LocalTrainingConfig | None = None

    def __post_init__(self) -> None:
        """Check that the fields fit together."""
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {self.concurrency!r}")

    @property
    def is_synchronous(self) -> bool:
        """Whether rounds wait for every sampled client."""
        return self.synchronous or strategy_class(self.aggregation.mode).synchronous


@dataclass(frozen=True)
class CurvePoint:
    """The global model's held-out quality at one virtual instant."""

    virtual_seconds: float
    updates: int
    version: int
    accuracy: float
    macro_f1: float


@dataclass
class SimulationResult:
    """What one simulated run did and reached."""

    strategy: str
    curve: list[CurvePoint] = field(default_factory=list)
    final_weights: Weights = field(default_factory=dict)
    personal_weights: dict[str, Weights] = field(default_factory=dict)
    updates: int = 0
    rejected: int = 0
    versions: int = 0
    bytes_sent: int = 0
    virtual_seconds: float = 0.0
    round_seconds: list[float] = field(default_factory=list)
    client_updates: dict[str, int] = field(default_factory=dict)
    epsilon: float | None = None
    """With DP: epsilon spent by the versions made (the server's ledger); None without DP."""
    epsilon_assumption: str | None = None
    """What ``epsilon`` rests on (see ``schemas.rows.ModelVersionRow.epsilon_assumption``)."""
    privacy_budget_exhausted: bool = False
    """True when ``dp_epsilon_budget`` refused a version: the run stopped making versions there."""
    version_stalenesses: list[tuple[int, ...]] = field(default_factory=list)
    """Per version made, the staleness of each update in it (what ``model_versions.update_staleness`` holds)."""

    def time_to_accuracy(self, target: float) -> tuple[float, int] | None:
        """First ``(virtual seconds, updates)`` at which held-out accuracy reached ``target``, else None."""
        for point in self.curve:
            if point.accuracy >= target:
                return point.virtual_seconds, point.updates
        return None


def update_message_bytes(model_name: str, shared: Mapping[str, npt.NDArray[np.float32]]) -> int:
    """Size of one encoded ``fl.updates`` message carrying a delta over ``shared`` (header included)."""
    zeros = {name: np.zeros_like(value) for name, value in shared.items()}
    _, value = build_update(
        client_id="client-000", model_name=model_name, base_version=0, sample_count=1, delta=zeros, update_id="0" * 32
    )
    return len(value)


@dataclass(order=True)
class _Arrival:
    at: float
    sequence: int
    client: int = field(compare=False)
    base_version: int = field(compare=False)
    delta: Weights = field(compare=False)
    sample_count: int = field(compare=False)
    training_steps: int = field(compare=False)


class Simulator:
    """Runs one :class:`StrategyConfig` over a set of clients with real training and a virtual clock."""

    def __init__(
        self,
        model_name: str,
        clients: Mapping[str, LocalData],
        strategy: StrategyConfig,
        *,
        speeds: DeviceSpeeds,
        network: NetworkSpeeds | None = None,
        evaluator: Evaluator | None = None,
        jitter_sigma: float = 0.3,
        seed: int = 0,
        update_transform: UpdateTransform | None = None,
        cadence: JobCadence | None = None,
        seconds_per_step: float = 0.0,
        training_slots: int | None = None,
    ) -> None:
        """``update_transform`` rewrites each client's delta before it is sent (attacks); ``None``: honest.

        ``cadence``: deliver updates and versions as the streaming job does (asynchronous strategies only);
        ``None``: each arrival is judged and each version published at once. ``seconds_per_step``: compute
        time of one local training step, added to a device's delay, so a client's work grows with its samples
        and epochs (0: the delay alone). ``training_slots`` (with a cadence): how many clients can compute
        at once, as when one machine drives a simulated fleet (the demo trains its devices one at a time:
        1); ``None``: every client has its own device.
        """
        if not clients:
            raise ValueError("the simulator needs at least one client")
        if strategy.concurrency > len(clients):
            raise ValueError(f"concurrency {strategy.concurrency} exceeds the {len(clients)} clients")
        if jitter_sigma < 0:
            raise ValueError(f"jitter_sigma must be >= 0, got {jitter_sigma!r}")
        if not seconds_per_step >= 0:
            raise ValueError(f"seconds_per_step must be >= 0, got {seconds_per_step!r}")
        if training_slots is not None and (cadence is None or training_slots < 1):
            raise ValueError(f"training_slots must be >= 1 and needs a cadence, got {training_slots!r}")
        self.model_name = model_name
        self.client_ids = sorted(clients)
        self.clients = [clients[client_id] for client_id in self.client_ids]
        self.strategy = strategy
        self.evaluator = evaluator
        self.seed = seed
        self.model = build_model(model_name, seed)
        initial = model_weights(self.model)
        check_prefixes(initial, strategy.personal_prefixes)
        self.shared, initial_personal = split_weights(initial, strategy.personal_prefixes)
        self.personal: list[Weights] = [
            {name: value.copy() for name, value in initial_personal.items()} for _ in self.clients
        ]
        self.compute_seconds = speeds.draw(len(self.clients))
        network = network or NetworkSpeeds()
        self.message_bytes = update_message_bytes(model_name, self.shared)
        rng = np.random.default_rng([seed, 1])
        if network.median_bytes_per_second is None:
            self.upload_seconds = [0.0] * len(self.clients)
        else:
            uplinks = network.median_bytes_per_second * np.exp(network.sigma * rng.standard_normal(len(self.clients)))
            self.upload_seconds = [float(self.message_bytes / uplink) for uplink in uplinks]
        self.jitter_sigma = jitter_sigma
        self._jitter = np.random.default_rng([seed, 2])
        self._sampler = np.random.default_rng([seed, 3])
        self._client_update_counts = [0] * len(self.clients)
        self.aggregation = strategy.aggregation.with_enrolled_population(len(self.clients)).with_secret_dp_seed()
        self.server = AsyncServer(self.aggregation, self.shared)
        self.update_transform = update_transform
        self.cadence = cadence
        self.seconds_per_step = seconds_per_step
        self.training_slots = training_slots
        self._published: tuple[int, Weights] = (0, self.shared)
        """The version clients can fetch, and its shared weights (newest made, without a cadence)."""

    # ------------------------------------------------------------------ client side

    def _duration(self, client: int, steps: int) -> float:
        return self._delay(client) + steps * self.seconds_per_step

    def _delay(self, client: int) -> float:
        """The device's own delay and its upload: everything but the training steps."""
        jitter = math.exp(self.jitter_sigma * float(self._jitter.standard_normal())) if self.jitter_sigma else 1.0
        return self.compute_seconds[client] * jitter + self.upload_seconds[client]

    def _train(self, client: int) -> tuple[Weights, int, int]:
        """Train ``client`` from the current shared global plus its personal layers: Δ_shared, samples, steps."""
        data = self.clients[client]
        count = self._client_update_counts[client]
        self._client_update_counts[client] += 1
        config = self.strategy.training
        training = LocalTrainingConfig(
            epochs=config.epochs,
            max_steps=config.max_steps,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            optimizer=config.optimizer,
            momentum=config.momentum,
            proximal_mu=config.proximal_mu,
            seed=(config.seed * 1_000_003 + self.seed * 10_007 + client * 101 + count) % (2**31),
            num_threads=config.num_threads,
        )
        base = self._published[1]
        start = merge_weights(base, self.personal[client])
        load_model_weights(self.model, start)
        report = train_locally(self.model, data.train_features, data.train_labels, training, start)
        local = model_weights(self.model)
        local_shared, local_personal = split_weights(local, self.strategy.personal_prefixes)
        self.personal[client] = local_personal
        delta = model_delta(local_shared, base)
        if self.update_transform is not None:
            delta = self.update_transform(self.client_ids[client], delta)
        return delta, report.sample_count, report.steps

    # ------------------------------------------------------------------ running

    def run(self, total_updates: int, *, eval_every_updates: int = 10) -> SimulationResult:
        """Simulate until ``total_updates`` client updates have arrived; evaluate every ``eval_every_updates``."""
        if total_updates < 1 or eval_every_updates < 1:
            raise ValueError(
                f"total_updates and eval_every_updates must be >= 1, got {total_updates}, {eval_every_updates}"
            )
        result = SimulationResult(strategy=self.strategy.name)
        self._record(result, 0.0, 0, 0)
        if self.strategy.is_synchronous:
            if self.cadence is not None:
                raise ValueError("a job cadence applies to asynchronous strategies; synchronous rounds wait anyway")
            self._run_synchronous(result, total_updates, eval_every_updates)
        elif self.cadence is not None:
            self._run_micro_batches(result, total_updates, eval_every_updates, self.cadence)
        else:
            self._run_asynchronous(result, total_updates, eval_every_updates)
        self._record(result, result.virtual_seconds, result.updates, result.versions)
        result.final_weights = {name: value.copy() for name, value in self.shared.items()}
        result.personal_weights = {
            client_id: personal for client_id, personal in zip(self.client_ids, self.personal, strict=True) if personal
        }
        result.client_updates = {
            client_id: count for client_id, count in zip(self.client_ids, self._client_update_counts, strict=True)
        }
        optimizer = self.server.optimizer
        if isinstance(optimizer, PrivateServerOptimizer):
            result.epsilon = optimizer.epsilon_spent()
            result.epsilon_assumption = optimizer.ledger.assumption()
        return result

    def _budget_refuses(self, result: SimulationResult) -> bool:
        """Whether ``dp_epsilon_budget`` refuses the next version (and if so, say so in ``result``)."""
        check = self.server.budget_check()
        if check is None or check.allows_next:
            return False
        result.privacy_budget_exhausted = True
        return True

    def _made(self, result: SimulationResult, versions: Sequence[NewVersion]) -> None:
        """Take the server's new versions as the global model; note a budget refusal in ``result``."""
        result.version_stalenesses += [version.stalenesses for version in versions]
        if versions:
            self.shared = versions[-1].parameters
            result.versions = versions[-1].version
            if self.cadence is None:
                self._published = (versions[-1].version, self.shared)
        if self.server.privacy_refusal is not None:
            result.privacy_budget_exhausted = True

    def _record(self, result: SimulationResult, now: float, updates: int, version: int) -> None:
        """Append a curve point; a version already evaluated is not evaluated again."""
        if self.evaluator is None:
            return
        last = result.curve[-1] if result.curve else None
        if last is not None and last.version == version:
            if last.updates != updates:
                result.curve.append(CurvePoint(now, updates, version, last.accuracy, last.macro_f1))
            return
        evaluation = self.evaluator(self._evaluation_weights())
        result.curve.append(CurvePoint(now, updates, version, evaluation.accuracy, evaluation.macro_f1))

    def _evaluation_weights(self) -> Weights:
        """The global model for unseen subjects: shared layers plus, if any, the mean of the personal ones.

        Personal layers have no global value; their client average is the nearest thing a new user could get.
        """
        if not self.strategy.personal_prefixes:
            return dict(self.shared)
        mean_personal = {
            name: np.mean([personal[name] for personal in self.personal], axis=0).astype(np.float32)
            for name in self.personal[0]
        }
        return merge_weights(self.shared, mean_personal)

    def _sample(self, pool: Sequence[int], count: int) -> list[int]:
        chosen = self._sampler.choice(len(pool), size=count, replace=False)
        return [pool[int(index)] for index in sorted(chosen)]

    def _run_synchronous(self, result: SimulationResult, total_updates: int, eval_every: int) -> None:
        server = self.server
        next_eval = eval_every
        while result.updates < total_updates and not self._budget_refuses(result):
            cohort = self._sample(range(len(self.clients)), self.strategy.concurrency)
            durations = []
            for position, client in enumerate(cohort):
                delta, sample_count, steps = self._train(client)
                durations.append(self._duration(client, steps))
                server.receive(
                    PendingUpdate(
                        update_id=f"{self.client_ids[client]}-{result.updates + position}",
                        delta=delta,
                        base_version=server.version,
                        sample_count=sample_count,
                        received_at=_EPOCH + timedelta(seconds=result.virtual_seconds + durations[-1]),
                        client_id=self.client_ids[client],
                        training_steps=steps,
                    )
                )
            round_seconds = max(durations)
            result.round_seconds.append(round_seconds)
            result.virtual_seconds += round_seconds
            result.updates += len(cohort)
            result.bytes_sent += self.message_bytes * len(cohort)
            version = server.close_round()
            self._made(result, [] if version is None else [version])
            if result.updates >= next_eval:
                self._record(result, result.virtual_seconds, result.updates, result.versions)
                next_eval = result.updates + eval_every

    def _run_asynchronous(self, result: SimulationResult, total_updates: int, eval_every: int) -> None:
        server = self.server
        arrivals: list[_Arrival] = []
        sequence = 0
        busy: set[int] = set()
        spent_deadline: datetime | None = None
        started = 0
        next_eval = eval_every
        now = 0.0

        def start(clients: Sequence[int]) -> None:
            nonlocal sequence, started
            for client in clients:
                if started >= total_updates or result.privacy_budget_exhausted:
                    return
                delta, sample_count, steps = self._train(client)
                busy.add(client)
                started += 1
                heapq.heappush(
                    arrivals,
                    _Arrival(
                        now + self._duration(client, steps),
                        sequence,
                        client,
                        server.version,
                        delta,
                        sample_count,
                        steps,
                    ),
                )
                sequence += 1

        def next_deadline() -> float:
            """Virtual seconds of the buffer's wait deadline; inf without one, or once it made nothing."""
            deadline = server.deadline()
            if deadline is None or deadline == spent_deadline or result.privacy_budget_exhausted:
                return math.inf
            return (deadline - _EPOCH).total_seconds()

        start(self._sample(range(len(self.clients)), self.strategy.concurrency))
        while arrivals or next_deadline() < math.inf:
            deadline_at = next_deadline()
            now = min(arrivals[0].at if arrivals else math.inf, deadline_at)
            moment = _EPOCH + timedelta(seconds=now)
            finished: list[int] = []
            while arrivals and arrivals[0].at <= now:
                arrival = heapq.heappop(arrivals)
                busy.discard(arrival.client)
                finished.append(arrival.client)
                result.updates += 1
                result.bytes_sent += self.message_bytes
                if not server.admits(arrival.base_version):
                    result.rejected += 1
                else:
                    server.receive(self._pending_update(arrival, moment))
                self._made(result, server.ready_versions(moment))
            if deadline_at <= now:
                self._made(result, server.ready_versions(moment))
                if next_deadline() <= now:
                    spent_deadline = server.deadline()  # nothing was made at it (say, the budget refused)
            result.virtual_seconds = now
            if result.updates >= next_eval:
                self._record(result, now, result.updates, result.versions)
                next_eval = result.updates + eval_every
            if finished:
                idle = [client for client in range(len(self.clients)) if client not in busy]
                start(self._sample(idle, min(len(finished), len(idle))))
        self._made(result, server.drain())  # the final model uses every accepted update

    def _run_micro_batches(
        self, result: SimulationResult, total_updates: int, eval_every: int, cadence: JobCadence
    ) -> None:
        """The asynchronous loop with the job's cadence: updates judged per micro-batch, versions seen late.

        A client that finishes starts again at once from the version published at that moment (as a device
        fetches ``fl.models`` after sending), while its update waits for the next micro-batch.
        """
        server = self.server
        arrivals: list[_Arrival] = []
        inbox: list[_Arrival] = []
        publications: list[tuple[float, int, Weights]] = []
        sequence = started = 0
        job_free_at = 0.0
        next_eval = eval_every
        now = 0.0
        slots_free_at = [0.0] * (self.training_slots or 0)

        def start(clients: Sequence[int]) -> None:
            nonlocal sequence, started
            for client in clients:
                if started >= total_updates or result.privacy_budget_exhausted:
                    return
                delta, sample_count, steps = self._train(client)
                started += 1
                if slots_free_at:  # the client waits for a free slot, then computes, then its own delay
                    computed = max(now, heapq.heappop(slots_free_at)) + steps * self.seconds_per_step
                    heapq.heappush(slots_free_at, computed)
                    at = computed + self._delay(client)
                else:
                    at = now + self._duration(client, steps)
                base = self._published[0]
                heapq.heappush(arrivals, _Arrival(at, sequence, client, base, delta, sample_count, steps))
                sequence += 1

        def next_batch() -> float:
            deadline = server.deadline()
            waiting = [inbox[0].at] if inbox else []
            if deadline is not None and not result.privacy_budget_exhausted:
                waiting.append((deadline - _EPOCH).total_seconds())
            return cadence.next_batch_at(min(waiting), job_free_at) if waiting else math.inf

        start(self._sample(range(len(self.clients)), self.strategy.concurrency))
        while arrivals or inbox or publications or next_batch() < math.inf:
            batch_at = next_batch()
            now = min(arrivals[0].at if arrivals else math.inf, publications[0][0] if publications else math.inf)
            now = min(now, batch_at)
            while publications and publications[0][0] <= now:
                _, version, weights = publications.pop(0)
                self._published = (version, weights)
            finished = []
            while arrivals and arrivals[0].at <= now and arrivals[0].at < batch_at:
                arrival = heapq.heappop(arrivals)
                inbox.append(arrival)
                finished.append(arrival.client)
                result.updates += 1
                result.bytes_sent += self.message_bytes
            if batch_at <= now:
                self._judge_batch(result, inbox, _EPOCH + timedelta(seconds=batch_at))
                inbox.clear()
                job_free_at = batch_at + cadence.publish_seconds
                if server.version > self._published[0] and (not publications or publications[-1][1] < server.version):
                    publications.append((job_free_at, server.version, self.shared))
            result.virtual_seconds = now
            if result.updates >= next_eval:
                self._record(result, now, result.updates, result.versions)
                next_eval = result.updates + eval_every
            start(finished)
        self._made(result, server.drain())  # the final model uses every accepted update

    def _pending_update(self, arrival: _Arrival, moment: datetime) -> PendingUpdate:
        return PendingUpdate(
            update_id=f"{self.client_ids[arrival.client]}-{arrival.sequence}",
            delta=arrival.delta,
            base_version=arrival.base_version,
            sample_count=arrival.sample_count,
            received_at=moment,
            client_id=self.client_ids[arrival.client],
            training_steps=arrival.training_steps,
        )

    def _judge_batch(self, result: SimulationResult, batch: Sequence[_Arrival], moment: datetime) -> None:
        """One micro-batch as the job's intake runs it: in order, a full buffer aggregates at once; then deadlines."""
        server = self.server
        for arrival in batch:
            if not server.admits(arrival.base_version):
                result.rejected += 1
                continue
            server.receive(self._pending_update(arrival, moment))
            self._made(result, server.ready_versions(moment, deadline=False))
        self._made(result, server.ready_versions(moment))

    # ------------------------------------------------------------------ per-client evaluation

    def evaluate_clients(
        self, result: SimulationResult, fine_tuning: LocalTrainingConfig | None = None
    ) -> dict[str, tuple[Evaluation, Evaluation]]:
        """Per client: (global model, personalized model) on the client's own validation windows.

        Global: the final shared layers (with the initial personal layers if the strategy keeps any, which
        is why that number means little for such strategies). Personalized: the client's own personal
        layers swapped in, then ``fine_tuning`` (or the strategy's own) on its training windows.
        """
        fine_tuning = fine_tuning or self.strategy.fine_tuning
        initial_personal = split_weights(
            model_weights(build_model(self.model_name, self.seed)), self.strategy.personal_prefixes
        )[1]
        evaluations: dict[str, tuple[Evaluation, Evaluation]] = {}
        for index, client_id in enumerate(self.client_ids):
            data = self.clients[index]
            if len(data.validation_labels) == 0:
                continue
            comparison = evaluate_client(
                self.model,
                client_id,
                merge_weights(result.final_weights, initial_personal),
                data,
                personal_weights=self.personal[index] or None,
                fine_tuning=fine_tuning,
            )
            evaluations[client_id] = (comparison.global_evaluation, comparison.personalized_evaluation)
        return evaluations
