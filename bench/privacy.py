"""Held-out accuracy on UCI HAPT against epsilon: server-side client-level DP (DP-FedAvg) in FedBuff.

    .venv/bin/python -m bench.privacy [--quick] [--seeds 2] [--updates 120] [--sigmas 0.01 0.1 1] [--clip 0.5]

The demo's FedBuff configuration (``fedstream.demo.DEFAULT_AGGREGATION``: K = 10, polynomial staleness
0.5, max staleness 20, SGD lr 1) in the event-driven simulator, 24 training clients (the population),
six subjects held out, the same local training as ``bench.quality``. Rows: the non-private baseline
(sample-count weights, as the demo), the same with uniform weights (what DP needs), clipping alone (no
noise: no guarantee), then DP with a fixed clip norm C and several noise multipliers sigma; with DP a
version takes at most one update per client. epsilon is for delta = 1e-5 after the versions the run made,
in two columns: "no amplification" is what fedstream records for this run (``dp_participation="arbitrary"``:
each version one Gaussian mechanism, the server's own ledger); "if Poisson q=K/24" is what the RDP
accountant of the Poisson-subsampled Gaussian would claim for the same versions, valid only if clients
checked in at random (``dp_participation="random_check_in"``), which the simulated devices, like the demo's,
do not. A table goes to stdout, a CSV to ``bench/results/privacy_hapt.csv``.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import quality
from fedstream.demo import DEFAULT_AGGREGATION

RESULTS = Path(__file__).resolve().parent / "results"
POPULATION = 24
DELTA = 1e-5
# the demo's aggregation; the simulator has no wall clock, so no buffer deadline
DEMO_FEDBUFF: dict[str, Any] = {**DEFAULT_AGGREGATION, "max_wait_seconds": None}
K = int(DEMO_FEDBUFF["buffer_size"])


@dataclass
class PrivacyRun:
    """One configuration on one seed."""

    name: str
    sigma: float | None
    seed: int
    accuracy: float
    macro_f1: float
    versions: int
    epsilon: float
    """What the run's server recorded: no sampling amplification."""
    epsilon_if_poisson: float
    """The same versions under the Poisson-subsampling assumption, q = K / population."""
    wall_seconds: float


def configurations(sigmas: Sequence[float], clip: float) -> dict[str, dict[str, Any]]:
    """Name -> aggregation options (on top of the demo's FedBuff)."""
    configs: dict[str, dict[str, Any]] = {
        "non-private (demo)": {},
        "non-private, uniform": {"weight_by_sample_count": False},
        f"clip only C={clip:g}": {"weight_by_sample_count": False, "max_update_norm": clip},
    }
    for sigma in sigmas:
        configs[f"DP sigma={sigma:g} C={clip:g}"] = {
            "weight_by_sample_count": False,
            "dp_noise_multiplier": sigma,
            "dp_clip_norm": clip,
            "dp_population": POPULATION,
            "dp_delta": DELTA,
        }
    return configs


def _run(job: tuple[str, dict[str, Any], int, int]) -> PrivacyRun:
    from aggregator import AggregationConfig, epsilon_after

    name, options, seed, updates = job
    seeded = {"dp_seed": seed} if "dp_noise_multiplier" in options else {}  # seeded: a simulation
    config = AggregationConfig.from_dict({**DEMO_FEDBUFF, **options, **seeded})
    result, seconds = quality.simulate_final(name, config, seed, updates)
    final = result.curve[-1]
    sigma = None if config.privacy is None else config.privacy.noise_multiplier
    epsilon = math.inf if result.epsilon is None else result.epsilon  # the simulated server's ledger
    epsilon_if_poisson = math.inf if sigma is None else epsilon_after(sigma, K / POPULATION, result.versions, DELTA)
    return PrivacyRun(
        name, sigma, seed, final.accuracy, final.macro_f1, result.versions, epsilon, epsilon_if_poisson, seconds
    )


def summarize(runs: list[PrivacyRun], order: Sequence[str], out: Path) -> None:
    """Print the table and write the CSV."""
    poisson = f"ε if Poisson q={K / POPULATION:.3g}"
    header = (
        f"{'configuration':<24} {'ε no amplification':>18} {poisson:>20} {'versions':>8} {'unseen acc %':>13} "
        f"{'macro F1 %':>11}"
    )
    print(f"ε for δ = {DELTA:g}; fedstream records the no-amplification figure (see --help)")
    print(header)
    print("-" * len(header))
    for name in order:
        group = [run for run in runs if run.name == name]
        if not group:
            continue
        accuracy = [run.accuracy for run in group]
        f1 = [run.macro_f1 for run in group]
        epsilon = statistics.fmean(run.epsilon for run in group)
        epsilon_if_poisson = statistics.fmean(run.epsilon_if_poisson for run in group)
        versions = statistics.fmean(run.versions for run in group)
        sd = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
        eps_text = "∞ (no DP)" if math.isinf(epsilon) else f"{epsilon:.3g}"
        poisson_text = "∞" if math.isinf(epsilon_if_poisson) else f"{epsilon_if_poisson:.3g}"
        print(
            f"{name:<24} {eps_text:>18} {poisson_text:>20} {versions:8.0f} "
            f"{100 * statistics.fmean(accuracy):7.1f}±{100 * sd:<4.1f} {100 * statistics.fmean(f1):11.1f}"
        )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "privacy_hapt.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["configuration", "sigma", "seed", "epsilon_no_amplification", "epsilon_if_poisson",
                         "poisson_q", "delta", "versions", "unseen_accuracy", "unseen_macro_f1",
                         "wall_seconds"])  # fmt: skip
        for run in runs:
            writer.writerow([run.name, run.sigma, run.seed, run.epsilon, run.epsilon_if_poisson, K / POPULATION,
                             DELTA, run.versions, run.accuracy, run.macro_f1, f"{run.wall_seconds:.1f}"])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 60 updates per run (about 2 minutes)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 2, quick 1)")
    parser.add_argument("--updates", type=int, default=None, help="client updates per run (default 120, quick 60)")
    parser.add_argument("--sigmas", type=float, nargs="*", default=[0.01, 0.03, 0.1, 0.3, 1.0])
    parser.add_argument("--clip", type=float, default=0.5, help="clip norm C (the median honest delta is ~0.6)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 2)
    updates = args.updates or (60 if args.quick else 120)
    configs = configurations(args.sigmas, args.clip)
    jobs = [(name, options, seed, updates) for seed in range(seeds) for name, options in configs.items()]
    print(f"bench.privacy: HAPT, FedBuff K={K}, population {POPULATION}, {len(jobs)} runs "
          f"({seeds} seeds, {updates} updates each), {args.workers} workers", flush=True)  # fmt: skip
    started = time.perf_counter()
    runs = quality.run_in_pool(
        _run,
        jobs,
        args.workers,
        lambda run: (
            f"{run.name:<24} seed {run.seed}: acc {run.accuracy:.3f} eps {run.epsilon:.3g} "
            f"(if Poisson {run.epsilon_if_poisson:.3g}) ({run.wall_seconds:.0f}s)"
        ),
    )
    print()
    summarize(runs, list(configs), args.out)
    print(f"\nwall time {time.perf_counter() - started:.0f} s; results in {args.out / 'privacy_hapt.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
