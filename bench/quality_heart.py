"""UCI Heart Disease across 4 hospitals: federated vs each hospital alone vs pooled, by ROC AUC.

    .venv/bin/python -m bench.quality_heart [--seeds 5] [--updates 80]

Each hospital is one silo with its own 70/30 stratified split, imputation and standardization
(``producers.data.heart``). Metrics are ROC AUC of ``heart-mlp`` on every hospital's validation rows:
pooled over all four hospitals, and the mean of the per-hospital AUCs. Those validation rows are only ever
scored, never used to choose anything.

"pooled" (the centralized ceiling) trains one model on all four hospitals' training rows. Its learning rate
and epochs are chosen per seed by 4-fold cross-validation on those training rows (:data:`TUNING_FOLDS`,
stratified within each hospital; a single split of a few hundred rows gives too noisy an AUC to choose by):
for each rate of :data:`POOLED_GRID` the four fold models train together, one epoch at a time, until
``patience`` epochs in a row fail to beat the best mean held-out-fold AUC (:mod:`bench.tuning`); the model
is then trained again on all the training rows with the chosen rate and epochs. The choices print under the
table and go to the CSVs. "alone" trains on one hospital for ``updates / 4`` epochs at lr 0.02 and is scored
on all four (the mean over the four hospitals' models is reported).

Federated strategies run in the simulator with the cost model of ``bench.quality`` (the same device speeds
per seed, jitter, uplinks, and :data:`SECONDS_PER_STEP` per local step), 4 clients per synchronous round or
training at once, the same local training (1 epoch of SGD, lr 0.02, batch 16; FedProx adds mu 0.1) and the
same budget of client updates (``--updates``, a multiple of 4); "v-time" is the simulator's virtual time. Writes
``bench/results/quality_heart_runs.csv`` and ``quality_heart_pooled_grid.csv``.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from bench.quality import JITTER_SIGMA, RESULTS
from bench.tuning import GridPoint, describe_choices, stratified_folds, tune_rate_and_epochs, write_grid_csv

MODEL = "heart-mlp"
CONCURRENCY = 4
"""Clients per synchronous round, and clients training at once for asynchronous strategies: every hospital."""
BATCH_SIZE = 16
SECONDS_PER_STEP = 0.002
"""Device seconds per local training step of the small ``heart-mlp`` (a batch of 16 rows)."""
POOLED_GRID: tuple[tuple[float, ...], int, int] = ((0.005, 0.01, 0.02, 0.05), 60, 10)
"""(learning rates, most epochs, patience) of the pooled baseline's grid."""
TUNING_FOLDS = 4
"""Folds of the pooled baseline's cross-validation over the training rows (stratified within each hospital)."""


@dataclass
class HeartRow:
    """One setting on one seed."""

    setting: str
    seed: int
    pooled_auc: float
    mean_hospital_auc: float
    updates: int = 0
    virtual_seconds: float = math.nan
    tuned: GridPoint | None = None
    """Pooled only: the learning rate and epochs chosen by cross-validation, with the mean held-out-fold AUC."""
    grid: list[GridPoint] = field(default_factory=list)


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN when one class is missing."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    positives, negatives = s[y == 1], s[y == 0]
    if positives.size == 0 or negatives.size == 0:
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (positives.size * negatives.size))


def _probabilities(model: torch.nn.Module, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probabilities = torch.softmax(model(torch.from_numpy(features)), dim=1)[:, 1]
    finally:
        model.train(was_training)
    return probabilities.numpy().astype(np.float64)


def _scores(
    weights: Mapping[str, npt.NDArray[np.float32]], features: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    from producers.models import build_model, load_model_weights

    model = build_model(MODEL, 0)
    load_model_weights(model, weights)
    return _probabilities(model, features)


def _aucs(weights: Mapping[str, npt.NDArray[np.float32]], silos: Mapping[str, Any]) -> tuple[float, float]:
    labels, scores, per_silo = [], [], []
    for silo in silos.values():
        silo_scores = _scores(weights, silo.validation_features)
        labels.append(silo.validation_labels)
        scores.append(silo_scores)
        per_silo.append(roc_auc(silo.validation_labels, silo_scores))
    return roc_auc(np.concatenate(labels), np.concatenate(scores)), float(np.nanmean(per_silo))


def _epoch_config(learning_rate: float, seed: int, epoch: int) -> Any:
    from producers.training import LocalTrainingConfig

    return LocalTrainingConfig(
        epochs=1, batch_size=BATCH_SIZE, learning_rate=learning_rate, seed=seed * 1000 + epoch, num_threads=1
    )


def pooled_baseline(silos: Mapping[str, Any], seed: int) -> HeartRow:
    """The pooled model, its learning rate and epochs cross-validated on the training rows, then refitted on them."""
    from producers.models import build_model, model_weights
    from producers.training import evaluate, train_locally

    per_silo = [
        stratified_folds(silo.train_labels, TUNING_FOLDS, seed=seed * 10 + index)
        for index, silo in enumerate(silos.values())
    ]
    folds = []
    for fold in range(TUNING_FOLDS):
        parts = [
            (silo.train_features[split[fold][0]], silo.train_labels[split[fold][0]],
             silo.train_features[split[fold][1]], silo.train_labels[split[fold][1]])
            for silo, split in zip(silos.values(), per_silo, strict=True)
        ]  # fmt: skip
        folds.append(tuple(np.concatenate([part[column] for part in parts]) for column in range(4)))
    learning_rates, max_epochs, patience = POOLED_GRID

    def epochs_at(learning_rate: float) -> Iterator[tuple[float, float, None]]:
        models = [build_model(MODEL, seed) for _ in folds]
        for epoch in range(max_epochs):  # every fold's model one epoch further; score the mean over folds
            aucs, losses = [], []
            for model, (fit_features, fit_labels, held_features, held_labels) in zip(models, folds, strict=True):
                train_locally(model, fit_features, fit_labels, _epoch_config(learning_rate, seed, epoch))
                aucs.append(roc_auc(held_labels, _probabilities(model, held_features)))
                losses.append(evaluate(model, held_features, held_labels).loss)
            yield float(np.mean(aucs)), float(np.mean(losses)), None

    tuning = tune_rate_and_epochs(learning_rates, max_epochs, epochs_at, patience=patience)
    features = np.concatenate([silo.train_features for silo in silos.values()])
    labels = np.concatenate([silo.train_labels for silo in silos.values()])
    model = build_model(MODEL, seed)
    for epoch in range(tuning.best.epochs):  # the same epochs and shuffle seeds, on every training row
        train_locally(model, features, labels, _epoch_config(tuning.best.learning_rate, seed, epoch))
    return HeartRow("pooled", seed, *_aucs(model_weights(model), silos), tuned=tuning.best, grid=list(tuning.grid))


def run_seed(seed: int, updates: int) -> list[HeartRow]:
    from aggregator import AggregationConfig
    from producers.client import LocalData
    from producers.data.heart import load_heart_silos
    from producers.fleet import DeviceSpeeds
    from producers.models import build_model, model_weights
    from producers.training import LocalTrainingConfig, train_locally
    from simulation import NetworkSpeeds, Simulator, StrategyConfig

    silos = load_heart_silos(seed=seed)
    rows = [pooled_baseline(silos, seed)]
    alone = []
    for index, silo in enumerate(silos.values()):
        model = build_model(MODEL, seed)
        config = LocalTrainingConfig(
            epochs=updates // 4, batch_size=BATCH_SIZE, learning_rate=0.02, seed=seed * 10 + index
        )
        train_locally(model, silo.train_features, silo.train_labels, config)
        alone.append(_aucs(model_weights(model), silos))
    rows.append(
        HeartRow("hospital-alone", seed, float(np.mean([a[0] for a in alone])), float(np.mean([a[1] for a in alone])))
    )
    clients = {  # client ids as the job takes them: "VA Long Beach" -> "va-long-beach"
        name.lower().replace(" ", "-"): LocalData(
            s.train_features, s.train_labels, s.validation_features, s.validation_labels
        )
        for name, s in silos.items()
    }
    training = LocalTrainingConfig(epochs=1, batch_size=BATCH_SIZE, learning_rate=0.02, num_threads=1)
    sync = AggregationConfig.from_dict({"mode": "fedavg", "max_wait_seconds": None})
    fedbuff = AggregationConfig.from_dict({"mode": "fedbuff", "buffer_size": 2, "max_wait_seconds": None})
    strategies = [
        StrategyConfig("fedavg-sync", sync, training, CONCURRENCY),
        StrategyConfig(
            "fedprox-sync",
            sync,
            LocalTrainingConfig(epochs=1, batch_size=BATCH_SIZE, learning_rate=0.02, proximal_mu=0.1, num_threads=1),
            CONCURRENCY,
        ),
        StrategyConfig("fedbuff", fedbuff, training, CONCURRENCY),
    ]
    for strategy in strategies:
        simulator = Simulator(
            MODEL,
            clients,
            strategy,
            speeds=DeviceSpeeds(seed=seed),
            network=NetworkSpeeds(),
            jitter_sigma=JITTER_SIGMA,
            seconds_per_step=SECONDS_PER_STEP,
            seed=seed,
        )
        result = simulator.run(updates)
        rows.append(
            HeartRow(
                strategy.name,
                seed,
                *_aucs(result.final_weights, silos),
                updates=result.updates,
                virtual_seconds=result.virtual_seconds,
            )
        )
    return rows


def _mean_sd(values: Sequence[float]) -> str:
    if all(math.isnan(value) for value in values):
        return "n/a"
    return f"{statistics.fmean(values):.3f}±{statistics.pstdev(values):.3f}"


def summarize(rows: Sequence[HeartRow], out: Path) -> None:
    """Print the table and the pooled model's choices; write the per-run and grid CSVs."""
    header = f"{'setting':<16} {'pooled AUC':>12} {'mean per-hospital AUC':>22} {'v-time (s)':>10}  tuned"
    print(header)
    print("-" * len(header))
    for name in dict.fromkeys(row.setting for row in rows):
        group = [row for row in rows if row.setting == name]
        vtime = [row.virtual_seconds for row in group]
        vtime_cell = "—" if all(math.isnan(v) for v in vtime) else f"{statistics.fmean(vtime):.0f}"
        chosen = describe_choices(row.tuned for row in group if row.tuned is not None)
        print(
            f"{name:<16} {_mean_sd([row.pooled_auc for row in group]):>12} "
            f"{_mean_sd([row.mean_hospital_auc for row in group]):>22} {vtime_cell:>10}  {chosen}"
        )
    for row in rows:
        if row.tuned is not None:
            print(
                f"pooled seed {row.seed}: {row.tuned.describe()} chosen by {TUNING_FOLDS}-fold cross-validation on the "
                f"training rows (mean fold AUC {row.tuned.validation_score:.3f}, {len(row.grid)} grid epochs)"
            )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "quality_heart_runs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["setting", "seed", "pooled_auc", "mean_hospital_auc", "updates", "virtual_seconds", "learning_rate",
             "epochs", "cross_validation_auc"]
        )  # fmt: skip
        for row in rows:
            tuned = [row.tuned.learning_rate, row.tuned.epochs, row.tuned.validation_score] if row.tuned else [""] * 3
            writer.writerow(
                [row.setting, row.seed, row.pooled_auc, row.mean_hospital_auc, row.updates, row.virtual_seconds,
                 *tuned]
            )  # fmt: skip
    write_grid_csv(
        out / "quality_heart_pooled_grid.csv",
        ((row.seed, row.grid, row.tuned) for row in rows),
        "cross_validation_auc",
        "cross_validation_loss",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--updates",
        type=int,
        default=80,
        help=f"client updates per federated run, a multiple of {CONCURRENCY} (default 80)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.updates < CONCURRENCY or args.updates % CONCURRENCY:
        parser.error(
            f"--updates must be a positive multiple of {CONCURRENCY} (the clients of a synchronous round), so every "
            f"strategy gets the same budget; got {args.updates}"
        )
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = [row for seed in range(args.seeds) for row in run_seed(seed, args.updates)]
    summarize(rows, args.out)
    print(f"\nwall time {time.perf_counter() - started:.0f} s ({args.seeds} seeds, {args.updates} updates per run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
