"""Learning quality on UCI HAPT by subject: centralized vs local-only vs sync/async federated strategies.

    .venv/bin/python -m bench.quality [--quick] [--seeds 3] [--updates 120] [--workers 2] [--only NAME ...]

Six subjects (5, 10, 15, 20, 25, 30) never train; the other 24 are clients. A table goes to stdout; CSVs
and PNG plots to ``bench/results/``.

Centralized (the ceiling): one model on the pooled training windows of the 24 subjects, its learning rate
and epochs chosen per seed on the same subjects' validation windows (never the held-out subjects): each
rate of :data:`CENTRAL_GRID` trains up to its epoch limit, one epoch at a time, and stops once
``patience`` epochs in a row fail to beat its best validation accuracy; the weights of the best (rate,
epochs) are the centralized model (:mod:`bench.tuning`). The chosen values print under the table and go
to the CSVs, with the whole grid. "Δ central" is a strategy's held-out accuracy minus its seed's
centralized accuracy, in points.

Federated strategies all run in the event-driven simulator with one cost model
(:func:`build_simulator`), so the "v-time" and "t→95%" columns are the simulator's virtual seconds for
sync rounds and asynchronous buffers alike. What is charged: every client update costs its device's
delay (``DeviceSpeeds(seed)``: log-normal, median 1.5 s, sigma 0.8, the slowest 10 % of devices 6x slower;
drawn once per seed, so every strategy of a seed has the same devices), times a per-update jitter
(log-normal, sigma 0.3), plus the upload of its update message over the device's uplink (log-normal,
median 1 MB/s, sigma 0.5), plus its local training: :data:`SECONDS_PER_STEP` per step, so a client's
work grows with its samples and epochs (1 epoch of SGD, lr 0.02, batch 32 for every strategy; FedProx's
proximal term is charged alike). A synchronous round samples 10 clients and
lasts as long as its slowest; asynchronous strategies keep 10 clients training at once. Aggregation,
downloads and evaluation take no virtual time. Every strategy gets the same budget of client updates
(``--updates``, a multiple of the 10 clients of a round) and is evaluated every 10 updates.

"95 % target" is 95 % of that seed's centralized accuracy on the unseen subjects. Every seed counts: the
table shows how many seeds reached it ("2/3") and the median time and updates over those that did; a
seed that never reached it within the update budget is named under the table, never averaged away.
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bench.tuning import GridPoint, describe_choices, tune_rate_and_epochs, write_grid_csv

Job = TypeVar("Job")
Result = TypeVar("Result")
RESULTS = Path(__file__).resolve().parent / "results"
HELD_OUT = (5, 10, 15, 20, 25, 30)
MODEL = "har-cnn"
CONCURRENCY = 10
"""Clients per synchronous round, and clients training at once for asynchronous strategies."""
EVAL_EVERY_UPDATES = 10
TARGET_FRACTION = 0.95
"""The time-to-target target: this fraction of the seed's centralized accuracy on the unseen subjects."""
JITTER_SIGMA = 0.3
SECONDS_PER_STEP = 0.02
"""Device seconds per local training step of ``har-cnn`` (``bench.cadence`` measures 17-19 ms on one thread here)."""
CENTRAL_GRID: dict[bool, tuple[tuple[float, ...], int, int]] = {
    False: ((0.005, 0.01, 0.02, 0.05), 10, 3),
    True: ((0.01, 0.02, 0.05), 4, 2),
}
"""``quick`` -> (learning rates, most epochs, patience) of the centralized baseline's grid."""

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
    tuned: GridPoint | None = None
    """Centralized only: the learning rate and epochs chosen on validation, with that validation accuracy."""
    grid: list[GridPoint] = field(default_factory=list)
    """Centralized only: every (learning rate, epochs) trained, in order."""


@dataclass(frozen=True)
class TimeToTarget:
    """How one strategy's seeds fared against the target; every seed is counted, reached or not.

    The medians are over the seeds that reached the target (NaN when none did). ``median_seconds_all``
    counts a seed that never reached it as infinitely slow, so it is finite only when more than half reached.
    """

    seeds: tuple[int, ...]
    never: tuple[int, ...]
    median_seconds: float
    median_updates: float
    median_seconds_all: float

    @property
    def reached(self) -> int:
        """How many seeds reached the target within the budget."""
        return len(self.seeds) - len(self.never)

    def describe(self) -> str:
        """E.g. ``2/3 reached, median 41 s (40 updates) over those, 1 never within the budget (seed 2)``."""
        text = f"{self.reached}/{len(self.seeds)} reached"
        if self.reached:
            text += f", median {self.median_seconds:.0f} s ({self.median_updates:.0f} updates) over those"
        if self.never:
            seeds = ", ".join(str(seed) for seed in self.never)
            text += f", {len(self.never)} never within the budget (seed{'s' if len(self.never) > 1 else ''} {seeds})"
        return text


def time_to_target(curve: Sequence[tuple[float, int, float]], target: float) -> tuple[float, int] | None:
    """First ``(virtual seconds, updates)`` of a ``(seconds, updates, accuracy)`` curve at ``target``, else None.

    The same rule as ``SimulationResult.time_to_accuracy``, on the curves the CSVs keep.
    """
    for seconds, updates, accuracy in curve:
        if accuracy >= target:
            return seconds, updates
    return None


def aggregate_time_to_target(per_seed: Mapping[int, tuple[float, int] | None]) -> TimeToTarget:
    """Combine each seed's time to target (None: never reached within the budget) without dropping any seed."""
    if not per_seed:
        raise ValueError("no seeds to aggregate")
    reached = {seed: value for seed, value in per_seed.items() if value is not None}
    never = tuple(sorted(seed for seed, value in per_seed.items() if value is None))
    seconds = [value[0] for value in reached.values()]
    updates = [float(value[1]) for value in reached.values()]
    censored = sorted([*seconds, *([math.inf] * len(never))])
    return TimeToTarget(
        seeds=tuple(sorted(per_seed)),
        never=never,
        median_seconds=statistics.median(seconds) if seconds else math.nan,
        median_updates=statistics.median(updates) if updates else math.nan,
        median_seconds_all=statistics.median(censored),
    )


def local_training() -> Any:
    """The local training every federated strategy runs (FedProx adds its proximal term to it)."""
    from producers.training import LocalTrainingConfig

    return LocalTrainingConfig(epochs=1, learning_rate=0.02, num_threads=1)


def strategies(quick: bool) -> dict[str, Any]:
    """Name -> StrategyConfig of every federated variant compared (``__fine_tuning__``: the personalization step)."""
    from aggregator import AggregationConfig
    from producers.personalization import HAR_CNN_HEAD
    from producers.training import LocalTrainingConfig
    from simulation import StrategyConfig

    training = local_training()
    fine_tuning = LocalTrainingConfig(epochs=1, max_steps=5, learning_rate=0.01, num_threads=1)

    def buff(**kwargs: Any) -> AggregationConfig:
        base: dict[str, Any] = {"mode": "fedbuff", "buffer_size": 5, "max_wait_seconds": None, "max_staleness": 20}
        return AggregationConfig.from_dict({**base, **kwargs})

    def strategy(name: str, aggregation: AggregationConfig, **kwargs: Any) -> StrategyConfig:
        return StrategyConfig(name, aggregation, kwargs.pop("training", training), CONCURRENCY, **kwargs)

    sync = AggregationConfig.from_dict({"mode": "fedavg", "buffer_size": CONCURRENCY, "max_wait_seconds": None})
    fedasync = AggregationConfig.from_dict(
        {"mode": "fedasync", "buffer_size": 1, "max_wait_seconds": None, "mixing": 0.4}
    )
    configs = [
        strategy("fedavg-sync", sync),
        strategy("fedprox-sync", sync, training=replace(training, proximal_mu=0.1)),
        strategy("fedasync", fedasync),
        strategy("fedbuff-constant", buff(staleness_function="constant")),
        strategy("fedbuff-polynomial", buff(staleness_exponent=1.0)),
        strategy("fedbuff-hinge", buff(staleness_function="hinge")),
        strategy("fedbuff-inverse_sqrt", buff(staleness_function="inverse_sqrt")),
        strategy("fedbuff-momentum", buff(server_optimizer="momentum", server_learning_rate=0.5, server_momentum=0.8)),
        strategy("fedbuff-adam", buff(server_optimizer="adam", server_learning_rate=0.005)),
        strategy("fedbuff-yogi", buff(server_optimizer="yogi", server_learning_rate=0.005)),
        strategy("fednova", buff(mode="fednova", staleness_exponent=1.0)),
        strategy("fedbuff-personal-head", buff(staleness_function="inverse_sqrt"), personal_prefixes=HAR_CNN_HEAD),
    ]
    return {"__fine_tuning__": fine_tuning, **{config.name: config for config in configs}}


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


def build_simulator(strategy: Any, seed: int, *, update_transform: Any = None) -> Any:
    """A simulator over the worker's HAPT clients with the benchmark's one cost model (see the module docstring).

    Every federated run of this benchmark, and of ``bench.privacy`` and ``bench.robustness``, is built here.
    """
    from producers.fleet import DeviceSpeeds
    from simulation import NetworkSpeeds, Simulator

    if not _STATE:
        _init_worker()
    evaluator = _STATE["evaluator"]
    return Simulator(
        MODEL,
        _STATE["clients"],
        strategy,
        speeds=DeviceSpeeds(seed=seed),
        network=NetworkSpeeds(),
        jitter_sigma=JITTER_SIGMA,
        seconds_per_step=SECONDS_PER_STEP,
        evaluator=lambda weights: evaluator.evaluate(dict(weights)),
        seed=seed,
        update_transform=update_transform,
    )


def simulate_final(name: str, config: Any, seed: int, updates: int, update_transform: Any = None) -> tuple[Any, float]:
    """One simulator run of aggregation ``config`` with the benchmark's local training and cost model.

    Returns the simulation result and its wall seconds; the held-out evaluation runs once, at the end.
    """
    import torch

    from simulation import StrategyConfig

    torch.set_num_threads(1)
    if not _STATE:
        _init_worker()
    started = time.perf_counter()
    strategy = StrategyConfig(name, config, local_training(), CONCURRENCY)
    result = build_simulator(strategy, seed, update_transform=update_transform).run(updates, eval_every_updates=updates)
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
    """The pooled model, its learning rate and epochs tuned on the training subjects' validation windows."""
    from producers.models import build_model, model_weights
    from producers.training import LocalTrainingConfig, evaluate, train_locally

    clients = _STATE["clients"].values()
    features = np.concatenate([data.train_features for data in clients])
    labels = np.concatenate([data.train_labels for data in clients])
    validation_features = np.concatenate([data.validation_features for data in clients])
    validation_labels = np.concatenate([data.validation_labels for data in clients])
    learning_rates, max_epochs, patience = CENTRAL_GRID[quick]

    def epochs_at(learning_rate: float) -> Iterator[tuple[float, float, dict[str, Any]]]:
        model = build_model(MODEL, seed)
        for epoch in range(max_epochs):  # one epoch per call; the same shuffles for every rate
            config = LocalTrainingConfig(epochs=1, learning_rate=learning_rate, seed=seed * 100 + epoch, num_threads=1)
            train_locally(model, features, labels, config)
            validation = evaluate(model, validation_features, validation_labels)
            yield validation.accuracy, validation.loss, model_weights(model)

    tuning = tune_rate_and_epochs(learning_rates, max_epochs, epochs_at, patience=patience)
    final = _STATE["evaluator"].evaluate(tuning.weights)
    return RunRow("centralized", seed, final.accuracy, final.macro_f1, tuned=tuning.best, grid=list(tuning.grid))


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
    configs = strategies(quick)
    strategy = configs[name]
    simulator = build_simulator(strategy, seed)
    result = simulator.run(updates, eval_every_updates=EVAL_EVERY_UPDATES)
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


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def _fmt(mean: float, sd: float, scale: float = 100.0, digits: int = 1) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean * scale:.{digits}f}±{sd * scale:.{digits}f}"


def _number(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "never"
    return "never" if math.isinf(value) else f"{value:.{digits}f}"


def summarize(rows: list[RunRow], out: Path) -> list[dict[str, Any]]:
    """Print the table, write per-run, curve, grid and summary CSVs; return the summary rows."""
    central = {row.seed: row.unseen_accuracy for row in rows if row.strategy == "centralized"}
    order = list(dict.fromkeys(row.strategy for row in rows))
    summary: list[dict[str, Any]] = []
    reach_of: dict[str, TimeToTarget] = {}
    for name in order:
        group = [row for row in rows if row.strategy == name]
        if all(row.curve for row in group) and all(row.seed in central for row in group):
            reach_of[name] = aggregate_time_to_target(
                {row.seed: time_to_target(row.curve, TARGET_FRACTION * central[row.seed]) for row in group}
            )
        reach = reach_of.get(name)
        summary.append(
            {
                "strategy": name,
                "seeds": len(group),
                "unseen_acc": _mean_sd([r.unseen_accuracy for r in group]),
                "vs_central": _mean_sd([r.unseen_accuracy - central.get(r.seed, math.nan) for r in group]),
                "unseen_f1": _mean_sd([r.unseen_macro_f1 for r in group]),
                "own_global": _mean_sd([r.own_global_accuracy for r in group]),
                "own_personal": _mean_sd([r.own_personalized_accuracy for r in group]),
                "reached_95": f"{reach.reached}/{len(reach.seeds)}" if reach else "",
                "never_95_seeds": " ".join(str(seed) for seed in reach.never) if reach else "",
                "t95_median_reached": reach.median_seconds if reach else math.nan,
                "u95_median_reached": reach.median_updates if reach else math.nan,
                "t95_median_all_seeds": reach.median_seconds_all if reach else math.nan,
                "updates": _mean_sd([float(r.updates) for r in group if r.curve]),
                "mbytes": statistics.fmean(r.bytes_sent for r in group) / 1e6,
                "vtime": _mean_sd([r.virtual_seconds for r in group]),
                "chosen": describe_choices(row.tuned for row in group if row.tuned is not None),
            }
        )
    header = (
        f"{'strategy':<22} {'unseen acc %':>12} {'Δ central':>10} {'unseen F1 %':>12} {'own acc global':>14} "
        f"{'own acc pers.':>13} {'reach 95%':>9} {'t→95% (s)':>9} {'upd→95%':>8} {'MB sent':>8} {'v-time (s)':>10}"
        f"  tuned"
    )
    print(header)
    print("-" * len(header))
    for s in summary:
        reached = bool(s["reached_95"])
        time_cell = _number(s["t95_median_reached"]) if reached else "—"
        updates_cell = _number(s["u95_median_reached"]) if reached else "—"
        vtime_mean, vtime_sd = s["vtime"]
        print(
            f"{s['strategy']:<22} {_fmt(*s['unseen_acc']):>12} {_fmt(*s['vs_central']):>10} "
            f"{_fmt(*s['unseen_f1']):>12} {_fmt(*s['own_global']):>14} {_fmt(*s['own_personal']):>13} "
            f"{s['reached_95'] or '—':>9} {time_cell:>9} {updates_cell:>8} {s['mbytes']:8.1f} "
            f"{_fmt(vtime_mean, vtime_sd, 1.0, 0):>10}  {s['chosen']}"
        )
    print(
        f"\nreach 95%: seeds whose held-out accuracy reached {TARGET_FRACTION:.0%} of their seed's centralized "
        "accuracy within the update budget; t→95% and upd→95%: medians over those seeds (virtual seconds)."
    )
    for name, reach in reach_of.items():
        if reach.never:
            print(f"  {name}: {reach.describe()}")
    budgets = sorted({row.updates for row in rows if row.curve})
    if len(budgets) > 1:
        print(f"  note: federated runs made different numbers of client updates: {budgets}")
    for row in rows:
        if row.tuned is not None:
            print(
                f"centralized seed {row.seed}: {row.tuned.describe()} chosen on the training subjects' validation "
                f"windows (validation accuracy {100 * row.tuned.validation_score:.1f} %, {len(row.grid)} epochs "
                "trained in the grid)"
            )
    write_csvs(rows, summary, out)
    return summary


def write_csvs(rows: Sequence[RunRow], summary: Sequence[dict[str, Any]], out: Path) -> None:
    """Per-run rows, curves, the centralized grid and the summary, under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "quality_hapt_runs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["strategy", "seed", "unseen_accuracy", "unseen_macro_f1", "own_global_accuracy",
             "own_personalized_accuracy", "updates", "virtual_seconds", "bytes_sent", "wall_seconds",
             "learning_rate", "epochs", "validation_accuracy"]
        )  # fmt: skip
        for r in rows:
            tuned = [r.tuned.learning_rate, r.tuned.epochs, r.tuned.validation_score] if r.tuned else ["", "", ""]
            writer.writerow(
                [r.strategy, r.seed, r.unseen_accuracy, r.unseen_macro_f1, r.own_global_accuracy,
                 r.own_personalized_accuracy, r.updates, r.virtual_seconds, r.bytes_sent, f"{r.wall_seconds:.1f}",
                 *tuned]
            )  # fmt: skip
    with (out / "quality_hapt_curves.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["strategy", "seed", "virtual_seconds", "updates", "unseen_accuracy"])
        for r in rows:
            for seconds, updates, accuracy in r.curve:
                writer.writerow([r.strategy, r.seed, f"{seconds:.2f}", updates, accuracy])
    write_grid_csv(
        out / "quality_hapt_centralized_grid.csv",
        ((r.seed, r.grid, r.tuned) for r in rows),
        "validation_accuracy",
        "validation_loss",
    )
    with (out / "quality_hapt_summary.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(summary[0]))
        for s in summary:
            writer.writerow([v if not isinstance(v, tuple) else f"{v[0]:.4f}±{v[1]:.4f}" for v in s.values()])


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
        axis.axhline(100 * central, color="black", linewidth=1, label="centralized (tuned)")
        axis.axhline(
            100 * TARGET_FRACTION * central, color="grey", linestyle=":", linewidth=1, label="95% of centralized"
        )
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


def _optional(record: Mapping[str, str], key: str) -> str:
    return record.get(key) or ""


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
            if _optional(record, "learning_rate"):
                row.tuned = GridPoint(float(record["learning_rate"]), int(record["epochs"]),
                                      float(record["validation_accuracy"]), math.nan)  # fmt: skip
            rows[(row.strategy, row.seed)] = row
    with (out / "quality_hapt_curves.csv").open() as handle:
        for record in csv.DictReader(handle):
            key = (record["strategy"], int(record["seed"]))
            rows[key].curve.append(
                (float(record["virtual_seconds"]), int(record["updates"]), float(record["unseen_accuracy"]))
            )
    grid_file = out / "quality_hapt_centralized_grid.csv"
    if grid_file.exists():
        with grid_file.open() as handle:
            for record in csv.DictReader(handle):
                point = GridPoint(float(record["learning_rate"]), int(record["epochs"]),
                                  float(record["validation_accuracy"]), float(record["validation_loss"]))  # fmt: skip
                row = rows[("centralized", int(record["seed"]))]
                row.grid.append(point)
                if record["chosen"] == "True":
                    row.tuned = point
    return list(rows.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 seeds, 40 updates per run, a smaller centralized grid (3 rates x 4 epochs)",
    )
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, quick 2)")
    parser.add_argument(
        "--updates",
        type=int,
        default=None,
        help=f"client updates per run, a multiple of {CONCURRENCY} (default 120, quick 40)",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--only", nargs="*", default=None, help="federated strategies to run (default all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--replot", action="store_true", help="table and plots again from --out's CSVs")
    args = parser.parse_args(argv)
    if args.replot:
        rows = load_rows(args.out)
        summarize(rows, args.out)
        _plot_if_possible(rows, args.out)
        return 0
    seeds = args.seeds or (2 if args.quick else 3)
    updates = args.updates or (40 if args.quick else 120)
    if updates < CONCURRENCY or updates % CONCURRENCY:
        parser.error(
            f"--updates must be a positive multiple of {CONCURRENCY} (the clients of a synchronous round), so every "
            f"strategy gets the same budget; got {updates}"
        )
    names = [name for name in strategies(args.quick) if not name.startswith("__")]
    if args.only is not None:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"--only: unknown strategies {unknown}; choose from {names}")
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
