"""Tuning a centralized baseline on validation data: a learning-rate grid with early stopping on epochs.

A federated strategy is only "within 2 points of centralized" in a meaningful sense if the centralized model
was given a fair chance. :func:`tune_rate_and_epochs` trains one fresh model per learning rate, scores it on
validation data after every epoch, stops a learning rate once ``patience`` epochs in a row failed to beat its
best score, and keeps the best (learning rate, epochs) of the whole grid together with that epoch's weights.

The training itself is the caller's: ``epochs_at(learning_rate)`` yields, one per epoch trained, the
validation score (higher is better: accuracy, ROC AUC), the validation loss and a snapshot of the weights;
for cross-validation (:func:`stratified_folds`) it trains every fold's model one epoch and yields the mean.
It must never look at the data the benchmark reports on. Everything here is pure and needs no torch.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

Snapshot = TypeVar("Snapshot")

__all__ = [
    "GridPoint",
    "Tuning",
    "describe_choices",
    "pick_best",
    "stop_early",
    "stratified_folds",
    "tune_rate_and_epochs",
    "write_grid_csv",
]


@dataclass(frozen=True)
class GridPoint:
    """One (learning rate, epochs trained) with the model's score and loss on the validation split."""

    learning_rate: float
    epochs: int
    validation_score: float
    validation_loss: float

    def describe(self) -> str:
        """``lr 0.02, 7 ep`` as the benchmark tables print it."""
        return f"lr {self.learning_rate:g}, {self.epochs} ep"


@dataclass(frozen=True)
class Tuning(Generic[Snapshot]):
    """The best grid point, its weights and every point evaluated (in the order trained)."""

    best: GridPoint
    weights: Snapshot
    grid: tuple[GridPoint, ...]


def _rank(point: GridPoint) -> tuple[float, float, int, float]:
    loss = point.validation_loss if math.isfinite(point.validation_loss) else math.inf
    return (-point.validation_score, loss, point.epochs, point.learning_rate)


def pick_best(points: Iterable[GridPoint]) -> GridPoint:
    """The point with the highest validation score; ties go to the lower loss, then fewer epochs, then lower rate.

    Points whose score is NaN or infinite (a diverged run) are never picked; a ValueError when none is left.
    """
    finite = [point for point in points if math.isfinite(point.validation_score)]
    if not finite:
        raise ValueError("no grid point has a finite validation score")
    return min(finite, key=_rank)


def stop_early(scores: Sequence[float], patience: int) -> bool:
    """Whether the last ``patience`` epochs' scores all failed to beat the best score before them.

    A NaN or infinite score (a diverged run) stops at once: later epochs cannot recover it.
    """
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"patience must be an int >= 1, got {patience!r}")
    if scores and not math.isfinite(scores[-1]):
        return True
    if len(scores) <= patience:
        return False
    best_before = max(scores[:-patience])
    return all(score <= best_before for score in scores[-patience:])


def tune_rate_and_epochs(
    learning_rates: Sequence[float],
    max_epochs: int,
    epochs_at: Callable[[float], Iterable[tuple[float, float, Snapshot]]],
    *,
    patience: int,
) -> Tuning[Snapshot]:
    """Train each learning rate for up to ``max_epochs`` epochs, stopping early; the best (rate, epochs) wins.

    ``epochs_at(learning_rate)`` is iterated lazily, one item per epoch trained, so an early stop trains no
    further. Ties are broken as :func:`pick_best` does.
    """
    if not learning_rates:
        raise ValueError("learning_rates is empty")
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"max_epochs must be an int >= 1, got {max_epochs!r}")
    stop_early([], patience)  # checks patience before any training
    grid: list[GridPoint] = []
    chosen: tuple[GridPoint, Snapshot] | None = None
    for learning_rate in learning_rates:
        scores: list[float] = []
        for epoch, (score, loss, snapshot) in enumerate(epochs_at(learning_rate), start=1):
            point = GridPoint(learning_rate, epoch, float(score), float(loss))
            grid.append(point)
            scores.append(point.validation_score)
            if math.isfinite(point.validation_score) and (chosen is None or _rank(point) < _rank(chosen[0])):
                chosen = (point, snapshot)
            if epoch >= max_epochs or stop_early(scores, patience):
                break
    if chosen is None:
        raise ValueError(f"no learning rate in {list(learning_rates)} reached a finite validation score")
    return Tuning(chosen[0], chosen[1], tuple(grid))


def describe_choices(points: Iterable[GridPoint]) -> str:
    """The choices of several seeds in one cell: ``lr 0.02, 7 ep`` when all agree, else ``0.01x9; 0.02x7``."""
    chosen = list(points)
    described = {point.describe() for point in chosen}
    if len(described) <= 1:
        return described.pop() if described else ""
    return "; ".join(sorted({f"{point.learning_rate:g}x{point.epochs}" for point in chosen}))


def stratified_folds(labels: Sequence[int], folds: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """``folds`` (fit positions, held-out positions) pairs for cross-validation, stratified by label and seeded.

    Each label's rows are shuffled and dealt to the folds in turn, so every row is held out exactly once and
    each fold holds about ``1 / folds`` of every label.
    """
    import numpy as np

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    array = np.asarray(labels)
    if len(array) < folds:
        raise ValueError(f"{len(array)} rows cannot make {folds} folds")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(array), dtype=np.int64)
    start = 0
    for label in np.unique(array):
        positions = rng.permutation(np.flatnonzero(array == label))
        fold_of[positions] = (start + np.arange(len(positions))) % folds
        start += len(positions)  # the next label continues the deal, so small labels do not all land in fold 0
    return [
        ([int(p) for p in np.flatnonzero(fold_of != fold)], [int(p) for p in np.flatnonzero(fold_of == fold)])
        for fold in range(folds)
    ]


def write_grid_csv(
    path: Path, grids: Iterable[tuple[int, Sequence[GridPoint], GridPoint | None]], score: str, loss: str
) -> None:
    """Every grid point of every seed as CSV, ``chosen`` marking each seed's pick; ``score``/``loss``: column names.

    ``grids``: ``(seed, points, chosen point)`` per seed.
    """
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seed", "learning_rate", "epochs", score, loss, "chosen"])
        for seed, points, chosen in grids:
            for point in points:
                writer.writerow(
                    [seed, point.learning_rate, point.epochs, point.validation_score, point.validation_loss,
                     point == chosen]
                )  # fmt: skip
