"""Does the simulator predict the pipeline? ``make demo`` against the simulator at the demo's settings.

    .venv/bin/python -m bench.cadence [--buffer-sizes 5 10] [--minutes 3] [--seed 0]
    .venv/bin/python -m bench.cadence --simulator-only [--updates 230] [--publish-seconds 1.5]

For each FedBuff K it runs the real demo (devices → Kafka → Spark job → Delta → ``fl.models``, HAPT, six
subjects held out) and reads what it reached: held-out accuracy at the end and over the run's second half
(mean and standard deviation of the evaluations made once half the updates were in: the global model swings
by ten points and more from one evaluation to the next, so one final figure says little), versions,
accepted updates, and the job's median micro-batch time (from its log). Then it runs the simulator over the
same clients, model, local training and device delays, for the same number of accepted updates, twice:

- "per arrival" (the simulator's default): each update judged the moment it lands, each version seen at once,
  every device on its own hardware;
- "job cadence": :class:`simulation.JobCadence` with the job's trigger (0.5 s) and the demo's measured time
  from a batch's start to its versions' publication as the publishing delay, and the demo's fleet
  (:data:`simulation.SIMULATED_FLEET`: one thread trains the devices one at a time, with the measured time
  per local step, and sends their updates; a device reads the newest published version when its training
  starts).

``--modes cadence-own-devices fleet-per-arrival`` take the job-cadence model apart (:data:`MODES`): the job's
micro-batches with every device on its own hardware (a real fleet), and the demo's fleet judged per arrival.

The simulator's model is evaluated every :data:`EVALUATE_EVERY` updates, about as often as the demo's
(every 5 s), and summarised the same way. The time per local step is measured here, on this machine, before
the runs. A table goes to stdout, with the simulator's virtual seconds and mean staleness next to its
accuracy. ``--simulator-only`` skips the demo and simulates ``--updates`` updates per K with
``--publish-seconds`` as the publishing delay: a few minutes of CPU instead of the demo's.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedstream.demo import DEFAULT_AGGREGATION, DEFAULT_HELD_OUT, DemoSettings

MODEL = "har-cnn"
TRIGGER_SECONDS = 0.5
"""The job's default trigger interval (``JobSettings.trigger_interval_seconds``), which the demo runs with."""
PUBLISHED_AFTER = "write_updates"
"""The job publishes a batch's versions before this phase ends; it is not part of the publishing delay."""
EVALUATE_EVERY = 20
"""Updates between two evaluations of the simulator's model (the demo evaluates every 5 s, ~20 updates)."""
MODES: dict[str, tuple[bool, bool]] = {
    "per-arrival": (False, False),
    "job-cadence": (True, True),
    "cadence-own-devices": (True, False),
    "fleet-per-arrival": (False, True),
}
"""Simulator modes: (the job's micro-batch cadence?, the demo's one-thread fleet?). The last two take the
job-cadence model apart: which of its two parts makes a run differ from per arrival."""
_BATCH_SECONDS = re.compile(r"batch \d+: BatchOutcome\(.*?seconds=(\{[^}]*\})")


@dataclass
class DemoRun:
    """What one ``fedstream demo`` reached."""

    buffer_size: int
    accuracy: float
    versions: int
    accepted: int
    median_batch_seconds: float
    second_half: tuple[float, float] = (math.nan, math.nan)
    """Mean and standard deviation of the held-out accuracy over the run's second half (see the module)."""


def second_half(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Mean and standard deviation of the accuracies of ``(updates, accuracy)`` points with at least half the updates.

    >>> second_half([(0, 0.1), (50, 0.5), (100, 0.7), (150, 0.9)])
    (0.8, 0.1)
    """
    final = max((updates for updates, _ in points), default=0)
    late = [accuracy for updates, accuracy in points if updates >= final / 2 and updates > 0]
    if not late:
        return (math.nan, math.nan)
    spread = statistics.pstdev(late) if len(late) > 1 else 0.0
    return (round(statistics.fmean(late), 12), round(spread, 12))


def run_demo(buffer_size: int, minutes: float, seed: int, *, aggregate_bursts: bool = False) -> DemoRun:
    """Run the demo in its own process and read its run folder."""
    command = [sys.executable, "-m", "fedstream.cli", "demo", "--buffer-size", str(buffer_size)]
    command += ["--minutes", str(minutes), "--seed", str(seed)] + (["--aggregate-bursts"] if aggregate_bursts else [])
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"the demo failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    found = re.search(r"run folder (\S+)", completed.stdout)
    if found is None:
        raise RuntimeError(f"no run folder in the demo's output:\n{completed.stdout[-2000:]}")
    folder = Path(found.group(1))
    with (folder / "accuracy.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    last = rows[-1]
    status = json.loads((folder / "job-status.json").read_text())
    batch_seconds = [
        sum(seconds for phase, seconds in json.loads(match.replace("'", '"')).items() if phase != PUBLISHED_AFTER)
        for log in sorted(folder.glob("job-*.log"))
        for match in _BATCH_SECONDS.findall(log.read_text(errors="replace"))
    ]
    return DemoRun(
        buffer_size=buffer_size,
        accuracy=float(last["held_out_accuracy"]),
        versions=int(last["version"]),
        accepted=int(status.get("accepted", 0)),
        median_batch_seconds=statistics.median(batch_seconds) if batch_seconds else TRIGGER_SECONDS,
        second_half=second_half([(int(row["accepted_updates"]), float(row["held_out_accuracy"])) for row in rows]),
    )


def _clients_and_evaluator() -> tuple[dict[str, Any], Any]:
    from producers.client import LocalData
    from producers.data.hapt import load_hapt_clients
    from producers.evaluation import HeldOutEvaluator
    from producers.models import build_model

    clients = load_hapt_clients()
    held_out = {subject: clients.pop(subject) for subject in DEFAULT_HELD_OUT}
    local = {
        f"subject-{subject:02d}": LocalData(d.train.windows, d.train.labels, d.validation.windows, d.validation.labels)
        for subject, d in sorted(clients.items())
    }
    return local, HeldOutEvaluator(build_model(MODEL, 0), held_out)


def _training(settings: DemoSettings) -> Any:
    from producers.training import LocalTrainingConfig

    return LocalTrainingConfig(
        epochs=settings.local_epochs, learning_rate=settings.local_learning_rate, seed=settings.seed, num_threads=1
    )


def measure_seconds_per_step(clients: dict[str, Any], settings: DemoSettings, samples: int = 6) -> float:
    """Wall seconds of one local training step of the demo's model and training on this machine.

    One untimed training first: torch's first call costs several times a warm one, and the demo's devices
    train warm for all but their first update.
    """
    from producers.models import build_model, model_weights
    from producers.training import train_locally

    model = build_model(MODEL, settings.seed)
    start = model_weights(model)
    warm_up = next(iter(clients.values()))
    train_locally(model, warm_up.train_features, warm_up.train_labels, _training(settings), start)
    seconds = steps = 0.0
    for data in list(clients.values())[:samples]:
        began = time.perf_counter()
        report = train_locally(model, data.train_features, data.train_labels, _training(settings), start)
        seconds += time.perf_counter() - began
        steps += report.steps
    return seconds / steps


@dataclass
class SimulatorRun:
    """What one simulator run at the demo's settings reached."""

    accuracy: float
    versions: int
    virtual_seconds: float
    mean_staleness: float
    second_half: tuple[float, float]


def simulate(
    clients: dict[str, Any],
    evaluator: Any,
    demo: DemoRun,
    settings: DemoSettings,
    *,
    cadence: Any,
    seconds_per_step: float,
    aggregate_bursts: bool = False,
    demo_fleet: bool = False,
) -> SimulatorRun:
    """One simulator run at the demo's settings.

    ``cadence``: the job's micro-batches (``None``: each update judged on arrival); ``demo_fleet``: the demo's
    one-thread fleet (:data:`simulation.SIMULATED_FLEET`) instead of every device on its own hardware.
    """
    from aggregator import AggregationConfig
    from producers.fleet import DeviceSpeeds
    from simulation import SIMULATED_FLEET, NetworkSpeeds, Simulator, StrategyConfig

    aggregation = AggregationConfig.from_dict(
        {**DEFAULT_AGGREGATION, "buffer_size": demo.buffer_size, "aggregate_bursts": aggregate_bursts}
    )
    strategy = StrategyConfig(
        f"fedbuff-k{demo.buffer_size}", aggregation, _training(settings), concurrency=len(clients)
    )
    simulator = Simulator(
        MODEL,
        clients,
        strategy,
        speeds=DeviceSpeeds(median_seconds=settings.device_delay_median_seconds, seed=settings.seed),
        network=NetworkSpeeds(median_bytes_per_second=None),
        evaluator=lambda weights: evaluator.evaluate(dict(weights)),
        seed=settings.seed,
        cadence=cadence,
        seconds_per_step=seconds_per_step,
        fleet=SIMULATED_FLEET if demo_fleet else None,
    )
    result = simulator.run(max(demo.accepted, 1), eval_every_updates=EVALUATE_EVERY)
    stalenesses = [staleness for version in result.version_stalenesses for staleness in version]
    return SimulatorRun(
        accuracy=result.curve[-1].accuracy,
        versions=result.versions,
        virtual_seconds=result.virtual_seconds,
        mean_staleness=statistics.fmean(stalenesses) if stalenesses else 0.0,
        second_half=second_half([(point.updates, point.accuracy) for point in result.curve]),
    )


def _percent(fraction: float) -> str:
    """``fraction`` as a percentage; "-" for no figure (the demo with ``--simulator-only``)."""
    return "-" if math.isnan(fraction) else f"{fraction:.1%}"


def _spread(figures: tuple[float, float]) -> str:
    """``mean ± sd`` in percent, as wide as the table's column."""
    mean, deviation = figures
    return f"{'-':>11}" if math.isnan(mean) else f"{mean:.1%}±{deviation * 100:.1f}".rjust(11)


def main(argv: list[str] | None = None) -> int:
    """Run the demo and the simulator for each K and print the comparison."""
    parser = argparse.ArgumentParser(prog="python -m bench.cadence", description=__doc__.split("\n\n")[0])
    parser.add_argument("--buffer-sizes", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long the demo's devices train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--simulator-only", action="store_true", help="skip the demo; simulate --updates per K")
    parser.add_argument("--updates", type=int, default=230, help="with --simulator-only: accepted updates per K")
    parser.add_argument(
        "--publish-seconds", type=float, default=1.5, help="with --simulator-only: a batch's start to publication"
    )
    parser.add_argument("--seconds-per-step", type=float, default=None, help="default: measured here")
    parser.add_argument(
        "--aggregate-bursts", action="store_true", help="demo and simulator: a burst of more than K is one version"
    )
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=["per-arrival", "job-cadence"])
    args = parser.parse_args(argv)

    import torch

    from simulation import JobCadence

    torch.set_num_threads(1)
    settings = DemoSettings(seed=args.seed)
    clients, evaluator = _clients_and_evaluator()
    seconds_per_step = args.seconds_per_step or measure_seconds_per_step(clients, settings)
    print(f"one local training step: {seconds_per_step * 1000:.1f} ms (one thread)", flush=True)
    rows = []
    for buffer_size in args.buffer_sizes:
        if args.simulator_only:
            demo = DemoRun(buffer_size, math.nan, 0, args.updates, args.publish_seconds)
        else:
            print(f"running the demo with K={buffer_size} for {args.minutes:g} min ...", flush=True)
            demo = run_demo(buffer_size, args.minutes, args.seed, aggregate_bursts=args.aggregate_bursts)
        cadence = JobCadence(trigger_seconds=TRIGGER_SECONDS, publish_seconds=demo.median_batch_seconds)
        runs = {
            mode: simulate(
                clients,
                evaluator,
                demo,
                settings,
                cadence=cadence if MODES[mode][0] else None,
                seconds_per_step=seconds_per_step,
                aggregate_bursts=args.aggregate_bursts,
                demo_fleet=MODES[mode][1],
            )
            for mode in args.modes
        }
        rows.append((demo, runs))
        print(
            f"  K={buffer_size}: demo {_percent(demo.accuracy)}, simulator "
            + ", ".join(f"{mode} {run.accuracy:.1%}" for mode, run in runs.items()),
            flush=True,
        )
    print()
    print(
        f"{'K':>3} {'updates':>8} {'batch s':>8} | {'demo acc':>9} {'2nd half':>11} {'versions':>8} | "
        + " | ".join(
            f"{mode:>19} {'2nd half':>11} {'versions':>8} {'v-time s':>8} {'staleness':>9}" for mode in args.modes
        )
    )
    for demo, runs in rows:
        print(
            f"{demo.buffer_size:>3} {demo.accepted:>8} {demo.median_batch_seconds:>8.2f} | "
            f"{_percent(demo.accuracy):>9} {_spread(demo.second_half)} {demo.versions:>8} | "
            + " | ".join(
                f"{run.accuracy:>19.1%} {_spread(run.second_half)} {run.versions:>8} {run.virtual_seconds:>8.1f} "
                f"{run.mean_staleness:>9.2f}"
                for run in runs.values()
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
