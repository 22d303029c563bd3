"""The demo's FedBuff-against-FedAvg line: wall time to the same held-out accuracy, from two demo runs.

Each demo run leaves ``run.json`` (its mode and what it trained on) and ``accuracy.csv`` (held-out accuracy
over time) in its run folder. A run's summary looks for the newest earlier run of the other mode on the same
data, held-out subjects, seed and training length, takes the best accuracy both runs reached as the target,
and compares how long each took to first reach it. Accuracy is sampled once per progress line (every few
seconds), so the times are as fine as that.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
ACCURACY_FILE = "accuracy.csv"
COMPARED_KEYS = ("data", "held_out", "seed", "duration_seconds", "personalized")
"""What two runs must share to be compared: the same devices and data, trained for the same time."""


@dataclass(frozen=True)
class AccuracyPoint:
    """Held-out accuracy at some seconds after the devices started."""

    elapsed_seconds: float
    accuracy: float


@dataclass(frozen=True)
class ModeComparison:
    """Seconds each run took to first reach ``target`` held-out accuracy (the best both reached)."""

    mode: str
    seconds: float
    other_mode: str
    other_seconds: float
    target: float
    other_run: Path

    def line(self) -> str:
        """One summary line: both times and which run is faster by what factor."""
        faster, slower = sorted(((self.seconds, self.mode), (self.other_seconds, self.other_mode)))
        ratio = slower[0] / faster[0] if faster[0] > 0 else float("inf")
        return (
            f"time to {self.target:.1%} held-out accuracy (the best both runs reached): {self.mode} "
            f"{self.seconds:.0f} s, {self.other_mode} {self.other_seconds:.0f} s ({faster[1]} {ratio:.1f}x faster; "
            f"{self.other_mode} run {self.other_run.name})"
        )


def time_to_accuracy(points: Sequence[AccuracyPoint], target: float) -> float | None:
    """Seconds until the accuracy first reached ``target`` (``None``: never)."""
    return next((point.elapsed_seconds for point in points if point.accuracy >= target), None)


def compare_runs(
    mode: str, points: Sequence[AccuracyPoint], other_mode: str, other: Sequence[AccuracyPoint], other_run: Path
) -> ModeComparison | None:
    """Both runs' time to the best accuracy both reached; ``None`` when either run has no points."""
    if not points or not other:
        return None
    target = min(max(point.accuracy for point in points), max(point.accuracy for point in other))
    seconds, other_seconds = time_to_accuracy(points, target), time_to_accuracy(other, target)
    if seconds is None or other_seconds is None:  # cannot happen: each run reached its own best
        return None
    return ModeComparison(mode, seconds, other_mode, other_seconds, target, other_run)


def write_run(run_dir: Path, description: Mapping[str, Any]) -> None:
    """Record what this run is (``mode`` and the :data:`COMPARED_KEYS`) for later runs to compare with."""
    (run_dir / RUN_FILE).write_text(json.dumps(dict(description), sort_keys=True) + "\n")


def read_run(run_dir: Path) -> dict[str, Any]:
    """A run's ``run.json``."""
    return dict(json.loads((run_dir / RUN_FILE).read_text()))


def read_points(run_dir: Path) -> list[AccuracyPoint]:
    """The held-out accuracy a run recorded in its ``accuracy.csv`` (``[]`` without one)."""
    path = run_dir / ACCURACY_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [AccuracyPoint(float(row["elapsed_seconds"]), float(row["held_out_accuracy"])) for row in rows]


def newest_comparable_run(runs_root: Path, this_run: Path, description: Mapping[str, Any]) -> Path | None:
    """The newest other run under ``runs_root`` of another mode with the same :data:`COMPARED_KEYS`."""
    candidates = []
    for run_dir in runs_root.iterdir() if runs_root.is_dir() else ():
        if run_dir == this_run or not (run_dir / RUN_FILE).is_file() or not (run_dir / ACCURACY_FILE).is_file():
            continue
        try:
            other = read_run(run_dir)
        except (OSError, ValueError):
            continue
        if other.get("mode") == description.get("mode"):
            continue
        if all(other.get(key) == description.get(key) for key in COMPARED_KEYS):
            candidates.append(run_dir)
    return max(candidates, key=lambda path: path.name, default=None)
