"""Learning quality on UCI HAPT by subject: centralized vs local-only vs sync/async federated strategies.

    .venv/bin/python -m bench.quality [--quick] [--seeds 3] [--updates 120] [--workers 2]

Six subjects (5, 10, 15, 20, 25, 30) never train; the other 24 are clients. Every federated strategy runs in
the event-driven simulator (``fedstream.simulator``) with the same budget of client updates, the same
local training (1 epoch of SGD, lr 0.02) and the same device speeds (log-normal, 10 % stragglers 6x
slower). Centralized training on the pooled 24 subjects is the ceiling; "95 % target" is 95 % of that
seed's centralized accuracy on the unseen subjects. A table goes to stdout; CSVs and PNG plots to
``bench/results/``.
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

Job = TypeVar("Job")
Result = TypeVar("Result")
RESULTS = Path(__file__).resolve().parent / "results"
HELD_OUT = (5, 10, 15, 20, 25, 30)
MODEL = "har-cnn"

_STATE: dict[str, Any] = {}


@dataclass
class RunRow:
    """One strategy on one seed."""

    strategy: str
    seed: int
    unseen_accuracy: float
    unseen_macro_f1: float
    own_global_accuracy: float = math.nan
    own_personalized_accuracy: float = math.nan
    updates: int = 0
    virtual_seconds: float = math.nan
    bytes_sent: int = 0
    curve: list[tuple[float, int, float]] = field(default_factory=list)
    wall_seconds: float = 0.0


def strategies(quick: bool) -> dict[str, Any]:
    """Name -> StrategyConfig of every federated variant compared."""
    from aggregator import AggregationConfig
    from fedstream.simulator import StrategyConfig
    from producers.personalization import HAR_CNN_HEAD
    from producers.training import LocalTrainingConfig

    training = LocalTrainingConfig(epochs=1, learning_rate=0.02, num_threads=1)
    fine_tuning = LocalTrainingConfig(epochs=1, max_steps=5, learning_rate=0.01, num_threads=1)

    def buff(**kwargs: Any) -> AggregationConfig:
        base: dict[str, Any] = {"mode": "fedbuff", "buffer_size": 5, "max_wait_seconds": None, "max_staleness": 20}
        base.update(kwargs)
        return AggregationConfig(**base)

    sync = AggregationConfig(mode="fedavg", buffer_size=10, max_wait_seconds=None)
    configs = {
        "fedavg-sync": StrategyConfig("fedavg-sync", sync, training, concurrency=10),
        "fedprox-sync": StrategyConfig("fedprox-sync", sync, replace(training, proximal_mu=0.1), concurrency=10),
        "fedasync": StrategyConfig(
            "fedasync",
            AggregationConfig(mode="fedasync", buffer_size=1, max_wait_seconds=None, mixing=0.4),
            training,
            concurrency=10,
        ),
        "fedbuff-constant": StrategyConfig("fedbuff-constant", buff(staleness_function="constant"), training),
        "fedbuff-polynomial": StrategyConfig("fedbuff-polynomial", buff(staleness_exponent=1.0), training),
        "fedbuff-hinge": StrategyConfig("fedbuff-hinge", buff(staleness_function="hinge"), training),
        "fedbuff-inverse_sqrt": StrategyConfig(
            "fedbuff-inverse_sqrt", buff(staleness_function="inverse_sqrt"), training
        ),
        "fedbuff-momentum": StrategyConfig(
            "fedbuff-momentum",
            buff(server_optimizer="momentum", server_learning_rate=0.5, server_momentum=0.8),
            training,
        ),
        "fedbuff-adam": StrategyConfig(
            "fedbuff-adam", buff(server_optimizer="adam", server_learning_rate=0.005), training
        ),
        "fedbuff-yogi": StrategyConfig(
            "fedbuff-yogi", buff(server_optimizer="yogi", server_learning_rate=0.005), training
        ),
        "fednova": StrategyConfig("fednova", buff(mode="fednova", staleness_exponent=1.0), training),
        "fedbuff-personal-head": StrategyConfig(
            "fedbuff-personal-head", buff(staleness_function="inverse_sqrt"), training, personal_prefixes=HAR_CNN_HEAD
        ),
    }
    return {"__fine_tuning__": fine_tuning, **configs}


def _init_worker() -> None:
    import torch

    from producers.client import LocalData
    from producers.data.hapt import load_hapt_clients
    from producers.evaluation import HeldOutEvaluator
    from producers.models import build_model

    torch.set_num_threads(1)
    clients = load_hapt_clients()
    held_out = {subject: clients.pop(subject) for subject in HELD_OUT}
    _STATE["clients"] = {
        f"subject-{subject:02d}": LocalData(d.train.windows, d.train.labels, d.validation.windows, d.validation.labels)
        for subject, d in sorted(clients.items())
    }
    _STATE["evaluator"] = HeldOutEvaluator(build_model(MODEL, 0), held_out)


def run_in_pool(
    run: Callable[[Job], Result], jobs: Sequence[Job], workers: int, describe: Callable[[Result], str]
) -> list[Result]:
    """Run ``jobs`` on ``workers`` forked processes that share the HAPT clients; print each result as it lands."""
    results: list[Result] = []
    with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        for result in pool.imap_unordered(run, jobs):
            results.append(result)
            print(f"  {describe(result)}", flush=True)
    return results


def simulate_final(name: str, config: Any, seed: int, updates: int, update_transform: Any = None) -> tuple[Any, float]:
    """One simulator run over the worker's HAPT clients with the demo's local training (1 epoch, lr 0.02).

    Returns the simulation result and its wall seconds; the held-out evaluation runs once, at the end.
    """
    import torch

    from fedstream.simulator import Simulator, StrategyConfig
    from producers.fleet import DeviceSpeeds
    from producers.training import LocalTrainingConfig

    torch.set_num_threads(1)
    if not _STATE:
        _init_worker()
    started = time.perf_counter()
    evaluator = _STATE["evaluator"]
    simulator = Simulator(
        MODEL,
        _STATE["clients"],
        StrategyConfig(name, config, LocalTrainingConfig(epochs=1, learning_rate=0.02, num_threads=1)),
        speeds=DeviceSpeeds(seed=seed),
        evaluator=lambda weights: evaluator.evaluate(dict(weights)),
        seed=seed,
        update_transform=update_transform,
    )
    result = simulator.run(updates, eval_every_updates=updates)
    return result, time.perf_counter() - started


def _run_job(job: tuple[str, int, int, bool]) -> RunRow:
    name, seed, updates, quick = job
    if not _STATE:
        _init_worker()
    started = time.perf_counter()
    if name == "centralized":
        row = _centralized(seed, quick)
    elif name == "local-only":
        row = _local_only(seed, quick)
    else:
        row = _federated(name, seed, updates, quick)
    row.wall_seconds = time.perf_counter() - started
    return row


def _centralized(seed: int, quick: bool) -> RunRow:
    from producers.models import build_model, model_weights
    from producers.training import LocalTrainingConfig, train_locally

    clients = _STATE["clients"]
    features = np.concatenate([data.train_features for data in clients.values()])
    labels = np.concatenate([data.train_labels for data in clients.values()])
    model = build_model(MODEL, seed)
    rates = (0.02, 0.01) if quick else (0.02, 0.01, 0.005)
    for epoch, rate in enumerate(rates):
        config = LocalTrainingConfig(epochs=1, learning_rate=rate, seed=seed * 100 + epoch, num_threads=1)
        train_locally(model, features, labels, config)
    final = _STATE["evaluator"].evaluate(model_weights(model))
    return RunRow("centralized", seed, final.accuracy, final.macro_f1)


def _local_only(seed: int, quick: bool) -> RunRow:
    from producers.models import build_model, model_weights
    from producers.training import LocalTrainingConfig, evaluate, train_locally

    accuracies, f1s, own = [], [], []
    for index, data in enumerate(_STATE["clients"].values()):
        model = build_model(MODEL, seed)
        config = LocalTrainingConfig(epochs=2 if quick else 4, learning_rate=0.02, seed=seed * 1000 + index)
        train_locally(model, data.train_features, data.train_labels, config)
        unseen = _STATE["evaluator"].evaluate(model_weights(model))
        accuracies.append(unseen.accuracy)
        f1s.append(unseen.macro_f1)
        own.append(evaluate(model, data.validation_features, data.validation_labels).accuracy)
    row = RunRow("local-only", seed, float(np.mean(accuracies)), float(np.mean(f1s)))
    row.own_personalized_accuracy = float(np.mean(own))
    return row


def _federated(name: str, seed: int, updates: int, quick: bool) -> RunRow:
    from fedstream.simulator import Simulator
    from producers.fleet import DeviceSpeeds

    configs = strategies(quick)
    strategy = configs[name]
    evaluator = _STATE["evaluator"]
    simulator = Simulator(
        MODEL,
        _STATE["clients"],
        strategy,
        speeds=DeviceSpeeds(seed=seed),
        evaluator=lambda weights: evaluator.evaluate(dict(weights)),
        seed=seed,
    )
    result = simulator.run(updates, eval_every_updates=10)
    final = result.curve[-1]
    per_client = simulator.evaluate_clients(result, fine_tuning=configs["__fine_tuning__"])
    row = RunRow(name, seed, final.accuracy, final.macro_f1)
    if not strategy.personal_prefixes:
        row.own_global_accuracy = float(np.mean([pair[0].accuracy for pair in per_client.values()]))
    row.own_personalized_accuracy = float(np.mean([pair[1].accuracy for pair in per_client.values()]))
    row.updates = result.updates
    row.virtual_seconds = result.virtual_seconds
    row.bytes_sent = result.bytes_sent
    row.curve = [(point.virtual_seconds, point.updates, point.accuracy) for point in result.curve]
    return row


def _reach(curve: Sequence[tuple[float, int, float]], target: float) -> tuple[float, float]:
    for seconds, updates, accuracy in curve:
        if accuracy >= target:
            return seconds, float(updates)
    return math.nan, math.nan


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def _fmt(mean: float, sd: float, scale: float = 100.0, digits: int = 1) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean * scale:.{digits}f}±{sd * scale:.{digits}f}"


def summarize(rows: list[RunRow], out: Path) -> list[dict[str, Any]]:
    """Print the table, write per-run and summary CSVs; return the summary rows."""
    central = {row.seed: row.unseen_accuracy for row in rows if row.strategy == "centralized"}
    order = list(dict.fromkeys(row.strategy for row in rows))
    summary = []
    for name in order:
        group = [row for row in rows if row.strategy == name]
        reach = [_reach(row.curve, 0.95 * central[row.seed]) for row in group]
        reached = [r for r in reach if not math.isnan(r[0])]
        summary.append(
            {
                "strategy": name,
                "seeds": len(group),
                "unseen_acc": _mean_sd([r.unseen_accuracy for r in group]),
                "unseen_f1": _mean_sd([r.unseen_macro_f1 for r in group]),
                "own_global": _mean_sd([r.own_global_accuracy for r in group]),
                "own_personal": _mean_sd([r.own_personalized_accuracy for r in group]),
                "t95": _mean_sd([r[0] for r in reach]),
                "u95": _mean_sd([r[1] for r in reach]),
                "reached": f"{len(reached)}/{len(group)}",
                "mbytes": statistics.fmean(r.bytes_sent for r in group) / 1e6,
                "vtime": _mean_sd([r.virtual_seconds for r in group]),
            }
        )
    header = (
        f"{'strategy':<22} {'unseen acc %':>12} {'unseen F1 %':>12} {'own acc global':>14} {'own acc pers.':>13} "
        f"{'t→95% (s)':>13} {'upd→95%':>10} {'reach':>5} {'MB sent':>8} {'v-time (s)':>12}"
    )
    print(header)
    print("-" * len(header))
    for s in summary:
        print(
            f"{s['strategy']:<22} {_fmt(*s['unseen_acc']):>12} {_fmt(*s['unseen_f1']):>12} "
            f"{_fmt(*s['own_global']):>14} {_fmt(*s['own_personal']):>13} {_fmt(*s['t95'], 1.0):>13} "
            f"{_fmt(*s['u95'], 1.0, 0):>10} {s['reached']:>5} {s['mbytes']:8.1f} {_fmt(*s['vtime'], 1.0, 0):>12}"
        )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "quality_hapt_runs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["strategy", "seed", "unseen_accuracy", "unseen_macro_f1", "own_global_accuracy",
             "own_personalized_accuracy", "updates", "virtual_seconds", "bytes_sent", "wall_seconds"]
        )  # fmt: skip
        for r in rows:
            writer.writerow(
                [r.strategy, r.seed, r.unseen_accuracy, r.unseen_macro_f1, r.own_global_accuracy,
                 r.own_personalized_accuracy, r.updates, r.virtual_seconds, r.bytes_sent, f"{r.wall_seconds:.1f}"]
            )  # fmt: skip
    with (out / "quality_hapt_curves.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["strategy", "seed", "virtual_seconds", "updates", "unseen_accuracy"])
        for r in rows:
            for seconds, updates, accuracy in r.curve:
                writer.writerow([r.strategy, r.seed, f"{seconds:.2f}", updates, accuracy])
    with (out / "quality_hapt_summary.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(summary[0]))
        for s in summary:
            writer.writerow([v if not isinstance(v, tuple) else f"{v[0]:.4f}±{v[1]:.4f}" for v in s.values()])
    return summary


def plot(rows: list[RunRow], out: Path) -> None:
    """Accuracy vs virtual time and vs updates, one line per strategy (mean over seeds on a shared grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    central = statistics.fmean(row.unseen_accuracy for row in rows if row.strategy == "centralized")
    names = list(dict.fromkeys(row.strategy for row in rows if row.curve))
    for axis_name, column in (("virtual time (s)", 0), ("client updates", 1)):
        figure, axis = plt.subplots(figsize=(9, 5.5))
        for name in names:
            curves = [row.curve for row in rows if row.strategy == name]
            end = min(curve[-1][column] for curve in curves)
            grid = np.linspace(0, end, 60)
            stacked = [np.interp(grid, [p[column] for p in curve], [p[2] for p in curve]) for curve in curves]
            style = "--" if "sync" in name and "async" not in name else "-"
            axis.plot(grid, 100 * np.mean(stacked, axis=0), style, label=name)
        axis.axhline(100 * central, color="black", linewidth=1, label="centralized")
        axis.axhline(95 * central, color="grey", linestyle=":", linewidth=1, label="95% of centralized")
        axis.set_xlabel(axis_name)
        axis.set_ylabel("accuracy on 6 unseen subjects (%)")
        axis.set_ylim(40, 100)
        axis.set_title("UCI HAPT, 24 clients, stragglers: mean over seeds")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, ncol=2)
        figure.tight_layout()
        suffix = "time" if column == 0 else "updates"
        figure.savefig(out / f"quality_hapt_accuracy_vs_{suffix}.png", dpi=120)
        plt.close(figure)


def _plot_if_possible(rows: list[RunRow], out: Path) -> None:
    try:
        plot(rows, out)
    except ImportError:
        print("matplotlib is not installed: no plots (rerun with --replot where it is)")


def load_rows(out: Path) -> list[RunRow]:
    """Rebuild the run rows from the CSVs a previous run wrote (for --replot)."""
    rows: dict[tuple[str, int], RunRow] = {}
    with (out / "quality_hapt_runs.csv").open() as handle:
        for record in csv.DictReader(handle):
            row = RunRow(record["strategy"], int(record["seed"]), float(record["unseen_accuracy"]),
                         float(record["unseen_macro_f1"]), float(record["own_global_accuracy"]),
                         float(record["own_personalized_accuracy"]), int(record["updates"]),
                         float(record["virtual_seconds"]), int(record["bytes_sent"]),
                         wall_seconds=float(record["wall_seconds"]))  # fmt: skip
            rows[(row.strategy, row.seed)] = row
    with (out / "quality_hapt_curves.csv").open() as handle:
        for record in csv.DictReader(handle):
            key = (record["strategy"], int(record["seed"]))
            rows[key].curve.append(
                (float(record["virtual_seconds"]), int(record["updates"]), float(record["unseen_accuracy"]))
            )
    return list(rows.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 40 updates per run (about 3 minutes)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, quick 2)")
    parser.add_argument("--updates", type=int, default=None, help="client updates per run (default 120, quick 40)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--only", nargs="*", default=None, help="federated strategies to run (default all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--replot", action="store_true", help="table and plots again from --out's CSVs")
    args = parser.parse_args(argv)
    if args.replot:
        rows = load_rows(args.out)
        summarize(rows, args.out)
        plot(rows, args.out)
        return 0
    seeds = args.seeds or (2 if args.quick else 3)
    updates = args.updates or (40 if args.quick else 120)
    names = [name for name in strategies(args.quick) if not name.startswith("__")]
    if args.only:
        names = [name for name in names if name in args.only]
    jobs = [
        (name, seed, updates, args.quick) for seed in range(seeds) for name in ("centralized", "local-only", *names)
    ]
    started = time.perf_counter()
    print(f"bench.quality: HAPT, {len(jobs)} runs ({seeds} seeds, {updates} updates per federated run), "
          f"{args.workers} workers", flush=True)  # fmt: skip
    rows = run_in_pool(
        _run_job,
        jobs,
        args.workers,
        lambda row: (
            f"{row.strategy:<22} seed {row.seed}: unseen acc {row.unseen_accuracy:.3f} ({row.wall_seconds:.0f}s)"
        ),
    )
    rank = {name: i for i, name in enumerate(("centralized", "local-only", *names))}
    rows.sort(key=lambda row: (rank[row.strategy], row.seed))
    print()
    summarize(rows, args.out)
    _plot_if_possible(rows, args.out)
    print(f"\nwall time {time.perf_counter() - started:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
