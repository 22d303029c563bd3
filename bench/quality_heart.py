"""UCI Heart Disease across 4 hospitals: federated vs each hospital alone vs pooled, by ROC AUC.

    .venv/bin/python -m bench.quality_heart [--seeds 5] [--updates 80]

Each hospital is one silo with its own 70/30 stratified split, imputation and standardization
(``producers.data.heart``). Metrics are ROC AUC of ``heart-mlp`` on every hospital's validation rows:
pooled over all four hospitals, and the mean of the per-hospital AUCs. "alone" trains on one hospital and is
scored on all four (the mean over the four hospitals' models is reported). Writes
``bench/results/quality_heart_runs.csv``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from bench.quality import RESULTS

MODEL = "heart-mlp"


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


def _scores(
    weights: Mapping[str, npt.NDArray[np.float32]], features: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    from producers.models import build_model, load_model_weights

    model = build_model(MODEL, 0)
    load_model_weights(model, weights)
    model.eval()
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.from_numpy(features)), dim=1)[:, 1]
    return probabilities.numpy().astype(np.float64)


def _aucs(weights: Mapping[str, npt.NDArray[np.float32]], silos: Mapping[str, object]) -> tuple[float, float]:
    labels, scores, per_silo = [], [], []
    for silo in silos.values():
        silo_scores = _scores(weights, silo.validation_features)  # type: ignore[attr-defined]
        labels.append(silo.validation_labels)  # type: ignore[attr-defined]
        scores.append(silo_scores)
        per_silo.append(roc_auc(silo.validation_labels, silo_scores))  # type: ignore[attr-defined]
    return roc_auc(np.concatenate(labels), np.concatenate(scores)), float(np.nanmean(per_silo))


def run_seed(seed: int, updates: int) -> list[tuple[str, int, float, float]]:
    from aggregator import AggregationConfig
    from fedstream.simulator import Simulator, StrategyConfig
    from producers.client import LocalData
    from producers.data.heart import load_heart_silos
    from producers.fleet import DeviceSpeeds
    from producers.models import build_model, model_weights
    from producers.training import LocalTrainingConfig, train_locally

    silos = load_heart_silos(seed=seed)
    training = LocalTrainingConfig(epochs=1, batch_size=16, learning_rate=0.02, num_threads=1)
    rows = []
    features = np.concatenate([s.train_features for s in silos.values()])
    labels = np.concatenate([s.train_labels for s in silos.values()])
    model = build_model(MODEL, seed)
    train_locally(
        model, features, labels, LocalTrainingConfig(epochs=updates // 4, batch_size=16, learning_rate=0.02, seed=seed)
    )
    rows.append(("pooled", seed, *_aucs(model_weights(model), silos)))
    alone = []
    for index, silo in enumerate(silos.values()):
        model = build_model(MODEL, seed)
        config = LocalTrainingConfig(epochs=updates // 4, batch_size=16, learning_rate=0.02, seed=seed * 10 + index)
        train_locally(model, silo.train_features, silo.train_labels, config)
        alone.append(_aucs(model_weights(model), silos))
    rows.append(("hospital-alone", seed, float(np.mean([a[0] for a in alone])), float(np.mean([a[1] for a in alone]))))
    clients = {
        name: LocalData(s.train_features, s.train_labels, s.validation_features, s.validation_labels)
        for name, s in silos.items()
    }
    strategies = {
        "fedavg-sync": StrategyConfig(
            "fedavg-sync", AggregationConfig(mode="fedavg", max_wait_seconds=None), training, 4
        ),
        "fedprox-sync": StrategyConfig(
            "fedprox-sync",
            AggregationConfig(mode="fedavg", max_wait_seconds=None),
            LocalTrainingConfig(epochs=1, batch_size=16, learning_rate=0.02, proximal_mu=0.1, num_threads=1),
            4,
        ),
        "fedbuff": StrategyConfig(
            "fedbuff", AggregationConfig(mode="fedbuff", buffer_size=2, max_wait_seconds=None), training, 4
        ),
    }
    for name, strategy in strategies.items():
        simulator = Simulator(MODEL, clients, strategy, speeds=DeviceSpeeds(seed=seed), seed=seed)
        result = simulator.run(updates)
        rows.append((name, seed, *_aucs(result.final_weights, silos)))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--updates", type=int, default=80, help="client updates per federated run (default 80)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = [row for seed in range(args.seeds) for row in run_seed(seed, args.updates)]
    print(f"{'setting':<16} {'pooled AUC':>12} {'mean per-hospital AUC':>22}")
    for name in dict.fromkeys(row[0] for row in rows):
        group = [row for row in rows if row[0] == name]
        pooled = [row[2] for row in group]
        mean = [row[3] for row in group]
        print(
            f"{name:<16} {statistics.fmean(pooled):.3f}±{statistics.pstdev(pooled):.3f} "
            f"{statistics.fmean(mean):>16.3f}±{statistics.pstdev(mean):.3f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "quality_heart_runs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["setting", "seed", "pooled_auc", "mean_hospital_auc"])
        writer.writerows(rows)
    print(f"\nwall time {time.perf_counter() - started:.0f} s ({args.seeds} seeds, {args.updates} updates per run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
