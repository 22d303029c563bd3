"""Accuracy under poisoning on UCI HAPT: malicious clients against FedBuff with and without defences.

    .venv/bin/python -m bench.robustness [--quick] [--seeds 1] [--updates 120] [--defences none median ...]

The demo's FedBuff configuration (K = 10, polynomial staleness 0.5, SGD lr 1) in the event-driven simulator,
24 training clients, six subjects held out. 10 % (2) or 20 % (5) of the clients, picked at random per seed,
are malicious and send instead of their honest delta: ``sign_flip`` (-delta), ``scaled`` (10 x delta) or
``noise`` (Gaussian noise with 10 x the honest delta's norm). Defences (``aggregator.robust``): none,
a norm bound of 1.0 (about the 90th percentile of honest delta norms; larger deltas are scaled down),
trimmed mean (20 %: two of ten cut at each end), coordinate median, Krum (f = 1). A table goes to stdout,
a CSV to ``bench/results/robustness_hapt.csv``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import quality
from bench.privacy import DEMO_FEDBUFF, K

RESULTS = Path(__file__).resolve().parent / "results"
ATTACKS = ("sign_flip", "scaled", "noise")
FRACTIONS = (0.1, 0.2)
DEFENCES: dict[str, dict[str, Any]] = {
    "none": {},
    "norm bound 1.0": {"max_update_norm": 1.0},
    "trimmed mean 20%": {"robust_aggregation": "trimmed_mean", "trim_fraction": 0.2},
    "median": {"robust_aggregation": "median"},
    "krum f=1": {"robust_aggregation": "krum", "krum_byzantine": 1},
    "multi-krum f=1 m=3": {"robust_aggregation": "multi_krum", "krum_byzantine": 1, "multi_krum_selected": 3},
}
DEFAULT_DEFENCES = ("none", "norm bound 1.0", "trimmed mean 20%", "median", "krum f=1")


@dataclass
class AttackRun:
    """One (attack, fraction, defence) on one seed."""

    attack: str
    fraction: float
    defence: str
    seed: int
    malicious: int
    accuracy: float
    wall_seconds: float


class Attack:
    """Rewrites the deltas of the malicious clients (picklable, seeded)."""

    def __init__(self, kind: str, malicious: frozenset[str], seed: int) -> None:
        self.kind = kind
        self.malicious = malicious
        self.rng = np.random.default_rng([seed, 99])

    def __call__(self, client_id: str, delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if client_id not in self.malicious:
            return delta
        if self.kind == "sign_flip":
            return {key: -value for key, value in delta.items()}
        if self.kind == "scaled":
            return {key: (value * 10.0).astype(np.float32) for key, value in delta.items()}
        norm = float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in delta.values())))
        size = sum(value.size for value in delta.values())
        std = 10.0 * norm / np.sqrt(size)
        return {key: self.rng.normal(0.0, std, value.shape).astype(np.float32) for key, value in delta.items()}


def _run(job: tuple[str, float, str, int, int]) -> AttackRun:
    from aggregator import AggregationConfig

    attack, fraction, defence, seed, updates = job
    if not quality._STATE:
        quality._init_worker()
    clients = quality._STATE["clients"]
    count = round(fraction * len(clients))
    chosen = np.random.default_rng([seed, 7]).choice(sorted(clients), size=count, replace=False)
    transform = Attack(attack, frozenset(str(c) for c in chosen), seed) if count else None
    config = AggregationConfig.from_dict({**DEMO_FEDBUFF, **DEFENCES[defence]})
    result, seconds = quality.simulate_final(defence, config, seed, updates, update_transform=transform)
    return AttackRun(attack, fraction, defence, seed, count, result.curve[-1].accuracy, seconds)


def summarize(runs: list[AttackRun], defences: Sequence[str], out: Path) -> None:
    """Print accuracy (mean over seeds) per attack and fraction (rows) and defence (columns); write the CSV."""
    width = max(12, *(len(d) for d in defences))
    header = f"{'attack':<22}" + "".join(f" {d:>{width}}" for d in defences)
    print("held-out accuracy % (6 unseen subjects)")
    print(header)
    print("-" * len(header))
    scenarios = [("no attack", 0.0)] + [(attack, fraction) for fraction in FRACTIONS for attack in ATTACKS]
    for attack, fraction in scenarios:
        label = attack if fraction == 0 else f"{attack} {fraction:.0%}"
        cells = []
        for defence in defences:
            group = [r.accuracy for r in runs if (r.attack, r.fraction, r.defence) == (attack, fraction, defence)]
            cells.append(f"{100 * statistics.fmean(group):.1f}" if group else "-")
        print(f"{label:<22}" + "".join(f" {cell:>{width}}" for cell in cells))
    out.mkdir(parents=True, exist_ok=True)
    with (out / "robustness_hapt.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["attack", "fraction", "malicious_clients", "defence", "seed", "unseen_accuracy", "wall_seconds"]
        )
        for r in runs:
            writer.writerow([r.attack, r.fraction, r.malicious, r.defence, r.seed, r.accuracy, f"{r.wall_seconds:.1f}"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 updates per run")
    parser.add_argument("--seeds", type=int, default=1, help="seeds (default 1)")
    parser.add_argument("--updates", type=int, default=None, help="client updates per run (default 120, quick 60)")
    parser.add_argument("--defences", nargs="*", default=list(DEFAULT_DEFENCES), choices=list(DEFENCES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    updates = args.updates or (60 if args.quick else 120)
    scenarios = [("no attack", 0.0)] + [(attack, fraction) for fraction in FRACTIONS for attack in ATTACKS]
    jobs = [
        (attack, fraction, defence, seed, updates)
        for seed in range(args.seeds)
        for attack, fraction in scenarios
        for defence in args.defences
    ]
    print(f"bench.robustness: HAPT, FedBuff K={K}, 24 clients, {len(jobs)} runs ({args.seeds} seeds, "
          f"{updates} updates each), {args.workers} workers", flush=True)  # fmt: skip
    started = time.perf_counter()
    runs = quality.run_in_pool(
        _run,
        jobs,
        args.workers,
        lambda run: (
            f"{run.attack:<10} {run.fraction:.0%} {run.defence:<18} seed {run.seed}: "
            f"acc {run.accuracy:.3f} ({run.wall_seconds:.0f}s)"
        ),
    )
    print()
    summarize(runs, args.defences, args.out)
    print(f"\nwall time {time.perf_counter() - started:.0f} s; results in {args.out / 'robustness_hapt.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
