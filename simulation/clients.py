"""The simulated clients' side: real local training from a global version, personal layers, own-data checks.

It drives the same client code as a device (``producers.training.train_locally``, FedProx included, and
``producers.personalization``); only time is simulated, elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from producers.client import LocalData
from producers.models import build_model, load_model_weights, model_weights
from producers.personalization import check_prefixes, evaluate_client, merge_weights, split_weights
from producers.training import Evaluation, LocalTrainingConfig, TrainingReport, train_locally
from producers.updates import model_delta
from schemas.messages import Encoding
from simulation.encoding import decoded_by_job, training_metrics, update_header
from simulation.results import Weights
from simulation.strategy import StrategyConfig

UpdateTransform = Callable[[str, Weights], Weights]
"""``(client_id, honest delta) -> delta actually sent``: simulates poisoning clients (identity for honest ones)."""


@dataclass(frozen=True)
class TrainedUpdate:
    """What one round of local training produced: the shared layers' delta, samples seen, steps taken."""

    delta: Weights
    sample_count: int
    training_steps: int


class SimulatedClients:
    """The clients of one simulation, in client-id order, with one model they take turns training."""

    def __init__(
        self,
        model_name: str,
        clients: Mapping[str, LocalData],
        strategy: StrategyConfig,
        *,
        seed: int,
        update_transform: UpdateTransform | None = None,
    ) -> None:
        """Build the model from ``seed``; each client starts with the model's initial personal layers."""
        if not clients:
            raise ValueError("the simulator needs at least one client")
        self.model_name = model_name
        self.client_ids = sorted(clients)
        self.data = [clients[client_id] for client_id in self.client_ids]
        self.strategy = strategy
        self.seed = seed
        self.update_transform = update_transform
        self.model = build_model(model_name, seed)
        initial = model_weights(self.model)
        check_prefixes(initial, strategy.personal_prefixes)
        self.initial_shared, initial_personal = split_weights(initial, strategy.personal_prefixes)
        self.personal: list[Weights] = [
            {name: value.copy() for name, value in initial_personal.items()} for _ in self.data
        ]
        self.update_counts = [0] * len(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def train(self, client: int, base: Weights, base_version: int = 0) -> TrainedUpdate:
        """Train ``client`` from the shared weights ``base`` plus its personal layers; keep its new personal ones.

        The delta is the one the server gets: in the strategy's ``update_encoding``, as the job decodes it.
        """
        data = self.data[client]
        count = self.update_counts[client]
        self.update_counts[client] += 1
        config = self.strategy.training
        seed = (config.seed * 1_000_003 + self.seed * 10_007 + client * 101 + count) % (2**31)
        training = dataclasses.replace(config, seed=seed)
        start = merge_weights(base, self.personal[client])
        load_model_weights(self.model, start)
        report = train_locally(self.model, data.train_features, data.train_labels, training, start)
        local_shared, local_personal = split_weights(model_weights(self.model), self.strategy.personal_prefixes)
        self.personal[client] = local_personal
        delta = model_delta(local_shared, base)
        if self.update_transform is not None:
            delta = self.update_transform(self.client_ids[client], delta)
        if self.strategy.update_encoding is not Encoding.FLOAT32:  # float32 reaches the job exactly: left as is
            delta = self._as_job_decodes(client, delta, base_version, report)
        return TrainedUpdate(delta, report.sample_count, report.steps)

    def _as_job_decodes(self, client: int, delta: Weights, base_version: int, report: TrainingReport) -> Weights:
        """``delta`` sent in the strategy's encoding with the client's header, decoded as the job decodes it."""
        header = update_header(
            self.client_ids[client],
            self.model_name,
            sequence=self.update_counts[client] - 1,
            base_version=base_version,
            sample_count=report.sample_count,
            metrics=training_metrics(report.mean_loss, report.steps),
        )
        return decoded_by_job(delta, header, self.strategy.update_encoding)

    def evaluation_weights(self, shared: Weights) -> Weights:
        """The global model for unseen subjects: ``shared`` plus, if any, the mean of the personal layers.

        Personal layers have no global value; their client average is the nearest thing a new user could get.
        """
        if not self.strategy.personal_prefixes:
            return dict(shared)
        mean_personal = {
            name: np.mean([personal[name] for personal in self.personal], axis=0).astype(np.float32)
            for name in self.personal[0]
        }
        return merge_weights(shared, mean_personal)

    def personal_weights(self) -> dict[str, Weights]:
        """Each client's personal layers (none when the strategy keeps none)."""
        return {
            client_id: personal for client_id, personal in zip(self.client_ids, self.personal, strict=True) if personal
        }

    def evaluate_on_own_data(
        self, final_shared: Weights, fine_tuning: LocalTrainingConfig | None
    ) -> dict[str, tuple[Evaluation, Evaluation]]:
        """Per client with validation data: (global model, personalized model) on its own validation windows."""
        initial_personal = split_weights(
            model_weights(build_model(self.model_name, self.seed)), self.strategy.personal_prefixes
        )[1]
        evaluations: dict[str, tuple[Evaluation, Evaluation]] = {}
        for index, client_id in enumerate(self.client_ids):
            data = self.data[index]
            if len(data.validation_labels) == 0:
                continue
            comparison = evaluate_client(
                self.model,
                client_id,
                merge_weights(final_shared, initial_personal),
                data,
                personal_weights=self.personal[index] or None,
                fine_tuning=fine_tuning,
            )
            evaluations[client_id] = (comparison.global_evaluation, comparison.personalized_evaluation)
        return evaluations
