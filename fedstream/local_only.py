"""The demo's local-only comparison: each training client alone against the global model, per held-out subject."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedstream.demo_data import DemoData


@dataclass(frozen=True)
class LocalTrainingSettings:
    """How the run's devices trained: what a client trained alone repeats."""

    epochs: int
    learning_rate: float
    seed: int


LOCAL_ONLY_MAX_EPOCHS = 50
"""A client trained alone gets as many epochs as it trained in the run, up to this many (time on two cores)."""


@dataclass(frozen=True)
class LocalOnlyComparison:
    """Held-out accuracy per subject of the final global model and of training clients' models trained alone."""

    version: int
    subjects: tuple[str, ...]
    sample_counts: tuple[int, ...]
    global_accuracy: tuple[float, ...]
    local_clients: tuple[str, ...]
    local_epochs: tuple[int, ...]
    local_accuracy: tuple[tuple[float, ...], ...]
    """[subject][client]."""
    training_clients: int
    seconds: float

    def lines(self) -> list[str]:
        """The summary's table: one row per held-out subject, one column per client trained alone."""
        sampled = len(self.local_clients) < self.training_clients
        lines = [
            f"per held-out subject: global model v{self.version} vs each client trained alone on its own data "
            f"(L1..L{len(self.local_clients)}, as many epochs as it trained in the run, at most "
            f"{LOCAL_ONLY_MAX_EPOCHS}"
            + (f"; a seeded sample of {len(self.local_clients)} of {self.training_clients} clients" if sampled else "")
            + f"; {self.seconds:.0f} s)",
            "  "
            + ", ".join(
                f"L{i + 1} {client} ({epochs} ep)"
                for i, (client, epochs) in enumerate(zip(self.local_clients, self.local_epochs, strict=True))
            ),
            f"{'subject':>12} {'samples':>8} {'global':>7} "
            + " ".join(f"{f'L{i + 1}':>6}" for i in range(len(self.local_clients)))
            + f" {'mean L':>7} {'global beats':>12}",
        ]
        for row in range(len(self.subjects)):
            local = self.local_accuracy[row]
            beats = sum(self.global_accuracy[row] > accuracy for accuracy in local)
            lines.append(
                f"{self.subjects[row][:12]:>12} {self.sample_counts[row]:8d} {self.global_accuracy[row]:7.1%} "
                + " ".join(f"{accuracy:6.1%}" for accuracy in local)
                + f" {sum(local) / len(local):7.1%} {f'{beats}/{len(local)}':>12}"
            )
        return lines

    def write_csv(self, path: Path) -> None:
        """Every held-out subject × (global model, each client trained alone), as accuracies."""
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["subject", "samples", f"global_v{self.version}", *self.local_clients])
            for row, subject in enumerate(self.subjects):
                writer.writerow(
                    [subject, self.sample_counts[row], self.global_accuracy[row], *self.local_accuracy[row]]
                )


def local_only_comparison(
    data: DemoData,
    parameters: Any,
    version: int,
    rounds: dict[str, int],
    *,
    training: LocalTrainingSettings,
    max_clients: int,
    say: Callable[[str], None] = print,
) -> LocalOnlyComparison:
    """Train (a seeded sample of) the training clients alone and evaluate them and ``parameters`` per subject.

    ``rounds`` is how many updates each client sent in the run: trained alone, it gets that many times the
    run's local epochs (at least one), up to :data:`LOCAL_ONLY_MAX_EPOCHS`. At most ``max_clients`` (a seeded
    sample) train alone.
    """
    import numpy as np

    from producers.models import load_model_weights
    from producers.training import LocalTrainingConfig, evaluate, train_locally

    started = time.monotonic()
    names = list(data.training)
    if len(names) > max_clients:
        picks = np.random.default_rng(training.seed).choice(len(names), size=max_clients, replace=False)
        names = [names[index] for index in sorted(picks)]
    say(f"training {len(names)} clients alone for the local-only comparison ...")
    global_model = data.build(training.seed)
    load_model_weights(global_model, parameters)
    epochs = [min(LOCAL_ONLY_MAX_EPOCHS, max(1, rounds.get(name, 0)) * training.epochs) for name in names]
    local_models = []
    for name, count in zip(names, epochs, strict=True):
        model = data.build(training.seed)
        config = LocalTrainingConfig(epochs=count, learning_rate=training.learning_rate, seed=training.seed)
        train_locally(model, data.training[name].train_features, data.training[name].train_labels, config)
        local_models.append(model)
    subjects = tuple(data.held_out)
    return LocalOnlyComparison(
        version=version,
        subjects=subjects,
        sample_counts=tuple(len(data.held_out[subject][1]) for subject in subjects),
        global_accuracy=tuple(evaluate(global_model, *data.held_out[subject]).accuracy for subject in subjects),
        local_clients=tuple(names),
        local_epochs=tuple(epochs),
        local_accuracy=tuple(
            tuple(evaluate(model, *data.held_out[subject]).accuracy for model in local_models) for subject in subjects
        ),
        training_clients=len(data.training),
        seconds=time.monotonic() - started,
    )
