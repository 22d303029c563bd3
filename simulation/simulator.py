"""Event-driven federated simulator with a virtual clock: real training and aggregation, simulated time.

It drives the same client code as a device (:mod:`simulation.clients`), the job's intake step
(:class:`aggregator.intake.Intake`: content checks, duplicates, the staleness gate) and the same server as the
streaming job (:class:`aggregator.AsyncServer`: buffer policy, contribution bounds, strategy, server optimizer
and epsilon budget), but no Kafka, no signatures and no Spark: an update "takes" its device's time
(:class:`simulation.devices.DeviceCosts`: training steps, delay with a straggler tail, upload) and one event
loop (:mod:`simulation.event_loop`) advances a virtual clock. Many configurations and seeds therefore run in
seconds of real time per hundred updates.

Strategies:

- synchronous (a synchronous strategy such as ``fedavg``, or any with ``synchronous=True``): each round
  samples ``concurrency`` clients, all train from the same version, the round lasts until its last update
  arrives and ends in one version of all their updates (:meth:`aggregator.AsyncServer.close_round`); FedProx
  is the same with ``training.proximal_mu > 0``.
- asynchronous: ``concurrency`` clients train at once; each update goes to the server (refused if its
  staleness gate says so) and a client sampled from the idle ones starts on the newest published version.
  The server makes versions when its buffer policy says so (``K`` updates or the wait limit), as in the
  streaming job: with DP at most one update per client per version, a client's later update waiting for the
  next one. By default each update is judged the moment it arrives and each version is seen at once; a
  :class:`simulation.cadence.JobCadence` judges them in the job's micro-batches and publishes late, and a
  :class:`simulation.fleet.FleetTiming` queues devices on the machine that drives them, as the demo does.

With DP, ``dp_participation="random_check_in"`` without ``dp_population`` takes the simulated clients as the
population, and ``dp_epsilon_budget`` stops making versions (and starting clients) once the next version
would pass it (``SimulationResult.privacy_budget_exhausted``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt

from aggregator import AsyncServer, PrivateServerOptimizer
from producers.client import LocalData
from producers.fleet import DeviceSpeeds
from producers.training import Evaluation, LocalTrainingConfig
from schemas.messages import IDENTIFIER_PATTERN
from simulation.cadence import PER_ARRIVAL, JobCadence
from simulation.clients import SimulatedClients, UpdateTransform
from simulation.devices import DeviceCosts, NetworkSpeeds, update_message_bytes
from simulation.event_loop import EventLoop
from simulation.fleet import OWN_DEVICES, FleetTiming
from simulation.results import CurvePoint, SimulationResult
from simulation.strategy import StrategyConfig

Evaluator = Callable[[Mapping[str, npt.NDArray[np.float32]]], Evaluation]


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
        fleet: FleetTiming | None = None,
    ) -> None:
        """``update_transform`` rewrites each client's delta before it is sent (attacks); ``None``: honest.

        ``seconds_per_step``: compute time of one local training step, charged before a device's delay in
        every strategy, so a client's work grows with its samples and epochs (0: the delay alone).
        ``cadence``: deliver updates and versions as the streaming job does (asynchronous strategies only);
        ``None``: each arrival is judged and each version published at once. ``fleet``: how the devices'
        training is scheduled (one slot, as in the demo: :data:`simulation.fleet.SIMULATED_FLEET`);
        ``None``: every client has its own device and asks again the moment it has sent.
        """
        invalid = sorted(client_id for client_id in clients if not re.fullmatch(IDENTIFIER_PATTERN, client_id))
        if invalid:
            raise ValueError(
                f"client ids {invalid[:5]} are not ids the job takes: lower-case letters, digits, '.', '_' and '-', "
                "starting with a letter or digit, at most 64 characters"
            )
        self.clients = SimulatedClients(model_name, clients, strategy, seed=seed, update_transform=update_transform)
        if strategy.concurrency > len(clients):
            raise ValueError(f"concurrency {strategy.concurrency} exceeds the {len(clients)} clients")
        self.model_name = model_name
        self.client_ids = self.clients.client_ids
        self.strategy = strategy
        self.evaluator = evaluator
        self.seed = seed
        self.message_bytes = update_message_bytes(model_name, self.clients.initial_shared)
        self.costs = DeviceCosts(
            len(self.clients),
            self.message_bytes,
            speeds=speeds,
            network=network or NetworkSpeeds(),
            jitter_sigma=jitter_sigma,
            seconds_per_step=seconds_per_step,
            seed=seed,
        )
        self._sampler = np.random.default_rng([seed, 3])
        aggregation = strategy.aggregation.with_enrolled_population(len(self.clients)).with_secret_dp_seed()
        self.server = AsyncServer(aggregation, self.clients.initial_shared)
        self.synchronous = strategy.synchronous or self.server.strategy.synchronous
        if aggregation.cohort_fraction is not None:
            raise ValueError(
                "the simulator samples each round's clients itself (concurrency) and waits for all of them; the job's "
                "drawn cohorts (cohort_fraction) are not simulated: leave cohort_fraction unset here"
            )
        if self.synchronous and cadence not in (None, PER_ARRIVAL):
            raise ValueError("a job cadence applies to asynchronous strategies; synchronous rounds wait anyway")
        self.cadence = cadence or PER_ARRIVAL
        self.fleet = fleet or OWN_DEVICES

    @property
    def compute_seconds(self) -> list[float]:
        """Each device's typical delay between training and sending, before jitter."""
        return self.costs.compute_seconds

    def run(self, total_updates: int, *, eval_every_updates: int = 10) -> SimulationResult:
        """Simulate until ``total_updates`` client updates have arrived; evaluate every ``eval_every_updates``."""
        if total_updates < 1 or eval_every_updates < 1:
            raise ValueError(
                f"total_updates and eval_every_updates must be >= 1, got {total_updates}, {eval_every_updates}"
            )
        result = SimulationResult(strategy=self.strategy.name)
        self._record(result, 0.0)
        loop = EventLoop(
            self.server,
            self.clients,
            self.costs,
            fleet=self.fleet,
            cadence=self.cadence,
            synchronous=self.synchronous,
            concurrency=self.strategy.concurrency,
            sampler=self._sampler,
            message_bytes=self.message_bytes,
            record=self._record,
            result=result,
            total_updates=total_updates,
        )
        loop.run(eval_every_updates)
        self._record(result, result.virtual_seconds)
        result.final_weights = {name: value.copy() for name, value in self.server.parameters.items()}
        result.personal_weights = self.clients.personal_weights()
        result.client_updates = dict(zip(self.client_ids, self.clients.update_counts, strict=True))
        optimizer = self.server.optimizer
        if isinstance(optimizer, PrivateServerOptimizer):
            result.epsilon = optimizer.epsilon_spent()
            result.epsilon_assumption = optimizer.ledger.assumption()
        return result

    def _record(self, result: SimulationResult, now: float) -> None:
        """Append a curve point; a version already evaluated is not evaluated again."""
        if self.evaluator is None:
            return
        updates, version = result.updates, result.versions
        last = result.curve[-1] if result.curve else None
        if last is not None and last.version == version:
            if last.updates != updates:
                result.curve.append(CurvePoint(now, updates, version, last.accuracy, last.macro_f1))
            return
        evaluation = self.evaluator(self.clients.evaluation_weights(self.server.parameters))
        result.curve.append(CurvePoint(now, updates, version, evaluation.accuracy, evaluation.macro_f1))

    def evaluate_clients(
        self, result: SimulationResult, fine_tuning: LocalTrainingConfig | None = None
    ) -> dict[str, tuple[Evaluation, Evaluation]]:
        """Per client: (global model, personalized model) on the client's own validation windows.

        Global: the final shared layers (with the initial personal layers if the strategy keeps any, which
        is why that number means little for such strategies). Personalized: the client's own personal
        layers swapped in, then ``fine_tuning`` (or the strategy's own) on its training windows.
        """
        return self.clients.evaluate_on_own_data(result.final_weights, fine_tuning or self.strategy.fine_tuning)
