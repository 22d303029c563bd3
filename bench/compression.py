"""What float16 and int8 updates cost in held-out HAPT accuracy against float32, and what they save on the wire.

    .venv/bin/python -m bench.compression [--quick] [--seeds 3] [--updates 120] [--encodings float32 float16 int8]

The demo's FedBuff configuration (``bench.privacy.DEMO_FEDBUFF``: K = 10, polynomial staleness 0.5, max
staleness 20, SGD lr 1) in the event-driven simulator, 24 training clients, six subjects held out, the
local training and cost model of ``bench.quality``. Each run sets the clients' ``update_encoding``: every
delta goes through the client's chunk encoder at the default Kafka limit
(``schemas.topics.MAX_MESSAGE_BYTES``) and the job's chunk decoder before the server aggregates it
(:mod:`simulation.encoding`). Uploads are charged the float32 message in every run, so one seed's runs see
the same arrivals and "Δ vs f32" (points, against float32 on the same seed) is the encoding's effect alone.

Wire: each update's chunk messages (``encode_update_chunks``, with a header as a client fills it: every
metric set) against the whole float32 message a float32 client sends. Error, over every update a run
sent, of the decoded delta d against the float32 delta x the client computed: "MAE" is the mean |d - x|
over all values, "rel L2" is ‖d - x‖ / ‖x‖ (mean over updates, and the worst update: "max rel"), "→0"
the share of nonzero values decoded to 0. A table goes to stdout; ``bench/results/compression-latest.json``
(settings, summaries, runs) and ``bench/results/compression_hapt.csv`` (one row per run).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench import quality
from bench.privacy import DEMO_FEDBUFF, K

RESULTS = Path(__file__).resolve().parent / "results"
ENCODINGS = ("float32", "float16", "int8")
BASELINE = "float32"


@dataclass
class WireStats:
    """Running totals over the updates one run sent."""

    updates: int = 0
    bytes_total: int = 0
    float32_bytes_total: int = 0
    chunks_total: int = 0
    abs_error_sum: float = 0.0
    values: int = 0
    zeroed: int = 0
    nonzero: int = 0
    relative_l2: list[float] = field(default_factory=list)
    tensor_relative_l2: dict[str, list[float]] = field(default_factory=dict)
    """Per parameter tensor: ‖d - x‖ / ‖x‖ of each update (one int8 scale spans tensors of very different size)."""


@dataclass
class CompressionRun:
    """One encoding on one seed."""

    encoding: str
    seed: int
    accuracy: float
    macro_f1: float
    versions: int
    updates: int
    bytes_per_update: float
    float32_bytes_per_update: float
    chunks_per_update: float
    mean_abs_error: float
    relative_l2_mean: float
    relative_l2_max: float
    zeroed_fraction: float
    wall_seconds: float
    tensor_relative_l2: dict[str, float] = field(default_factory=dict)


class WireMeter:
    """An honest ``update_transform`` that measures each delta's bytes and error in the run's encoding.

    It sees the float32 delta before the simulator encodes it and runs the same round trip on it
    (the client's chunk encoder, then :func:`simulation.encoding.assembled_delta`, the job's decoder).
    """

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.stats = WireStats()

    def __call__(self, client_id: str, delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        header = _client_header(client_id, self.stats.updates)
        whole = _float32_message_bytes(header, delta)
        messages = _encoded_messages(header, delta, self.encoding)
        decoded = delta if messages is None else _decoded(messages, client_id)
        self._add(delta, decoded, whole, [whole] if messages is None else [len(m) for m in messages])
        return delta  # the simulator encodes and decodes it itself: the meter only watches

    def _add(self, delta: dict[str, np.ndarray], decoded: dict[str, np.ndarray], whole: int, sizes: list[int]) -> None:
        x = np.concatenate([delta[name].astype(np.float64).ravel() for name in sorted(delta)])
        d = np.concatenate([decoded[name].astype(np.float64).ravel() for name in sorted(delta)])
        error = d - x
        stats = self.stats
        stats.updates += 1
        stats.bytes_total += sum(sizes)
        stats.float32_bytes_total += whole
        stats.chunks_total += len(sizes)
        stats.abs_error_sum += float(np.abs(error).sum())
        stats.values += x.size
        stats.nonzero += int(np.count_nonzero(x))
        stats.zeroed += int(np.count_nonzero((x != 0) & (d == 0)))
        stats.relative_l2.append(_relative_l2(x, d))
        for name in sorted(delta):
            relative = _relative_l2(delta[name].astype(np.float64), decoded[name].astype(np.float64))
            stats.tensor_relative_l2.setdefault(name, []).append(relative)


def _relative_l2(x: np.ndarray, d: np.ndarray) -> float:
    norm = float(np.linalg.norm(x))
    return float(np.linalg.norm(d - x)) / norm if norm else 0.0


def _client_header(client_id: str, sequence: int) -> Any:
    """A header as a client fills it (every metric set, full-width floats), for realistic message sizes."""
    from schemas.messages import ClientMetrics
    from simulation.encoding import update_header

    metrics = ClientMetrics(
        validation_loss=0.7312345678901234,
        validation_accuracy=0.8123456789012345,
        validation_count=123,
        training_loss=0.6234567890123456,
        training_steps=17,
    )
    return update_header(
        client_id, quality.MODEL, sequence=sequence, base_version=1234, sample_count=543, metrics=metrics
    )


def _float32_message_bytes(header: Any, delta: dict[str, np.ndarray]) -> int:
    """The whole float32 ``fl.updates`` message a float32 client builds (``producers.updates.build_update``)."""
    from producers.updates import build_update

    _, value = build_update(
        client_id=header.client_id,
        model_name=header.model_name,
        base_version=header.base_version,
        sample_count=header.sample_count,
        delta=delta,
        metrics=header.metrics,
        update_id=header.update_id,
    )
    return len(value)


def _encoded_messages(header: Any, delta: dict[str, np.ndarray], encoding: str) -> list[bytes] | None:
    """The update's chunk messages in ``encoding`` at the default limit; None for float32 (sent whole)."""
    from schemas.chunks import encode_update_chunks
    from schemas.messages import Encoding
    from schemas.topics import MAX_MESSAGE_BYTES

    if Encoding(encoding) is Encoding.FLOAT32:
        return None
    return encode_update_chunks(header, delta, max_message_bytes=MAX_MESSAGE_BYTES, encoding=Encoding(encoding))


def _decoded(messages: list[bytes], client_id: str) -> dict[str, np.ndarray]:
    from simulation.encoding import assembled_delta

    return assembled_delta(messages, client_id)


def _run(job: tuple[str, int, int]) -> CompressionRun:
    """One simulator run of the demo's FedBuff with every client sending in ``encoding``."""
    from aggregator import AggregationConfig
    from schemas.messages import Encoding
    from simulation import StrategyConfig

    encoding, seed, updates = job
    config = AggregationConfig.from_dict(DEMO_FEDBUFF)
    strategy = StrategyConfig(
        f"fedbuff-{encoding}",
        config,
        quality.local_training(),
        quality.CONCURRENCY,
        update_encoding=Encoding(encoding),
    )
    meter = WireMeter(encoding)
    started = time.perf_counter()
    # evaluated once, at the end, as bench.privacy's runs
    result = quality.build_simulator(strategy, seed, update_transform=meter).run(updates, eval_every_updates=updates)
    return _row(encoding, seed, result, meter.stats, time.perf_counter() - started)


def _row(encoding: str, seed: int, result: Any, stats: WireStats, seconds: float) -> CompressionRun:
    final = result.curve[-1]
    count = max(stats.updates, 1)
    return CompressionRun(
        encoding=encoding,
        seed=seed,
        accuracy=final.accuracy,
        macro_f1=final.macro_f1,
        versions=result.versions,
        updates=stats.updates,
        bytes_per_update=stats.bytes_total / count,
        float32_bytes_per_update=stats.float32_bytes_total / count,
        chunks_per_update=stats.chunks_total / count,
        mean_abs_error=stats.abs_error_sum / max(stats.values, 1),
        relative_l2_mean=statistics.fmean(stats.relative_l2) if stats.relative_l2 else 0.0,
        relative_l2_max=max(stats.relative_l2, default=0.0),
        zeroed_fraction=stats.zeroed / max(stats.nonzero, 1),
        wall_seconds=seconds,
        tensor_relative_l2={name: statistics.fmean(values) for name, values in stats.tensor_relative_l2.items()},
    )


def summarize(runs: Sequence[CompressionRun], encodings: Sequence[str]) -> list[dict[str, Any]]:
    """Per encoding: accuracy per seed and mean, the paired difference against float32, wire and error."""
    baseline = {run.seed: run.accuracy for run in runs if run.encoding == BASELINE}
    summaries = []
    for encoding in encodings:
        group = sorted((run for run in runs if run.encoding == encoding), key=lambda run: run.seed)
        if group:
            summaries.append(_summary(encoding, group, baseline))
    return summaries


def _summary(encoding: str, group: list[CompressionRun], baseline: dict[int, float]) -> dict[str, Any]:
    accuracy = {run.seed: run.accuracy for run in group}
    delta = {seed: 100 * (value - baseline[seed]) for seed, value in accuracy.items() if seed in baseline}
    return {
        "encoding": encoding,
        "seeds": [run.seed for run in group],
        "accuracy_mean": statistics.fmean(accuracy.values()),
        "accuracy_sd": statistics.stdev(accuracy.values()) if len(accuracy) > 1 else 0.0,
        "accuracy_per_seed": accuracy,
        "delta_points_mean": statistics.fmean(delta.values()) if delta else None,
        "delta_points_per_seed": delta,
        "macro_f1_mean": statistics.fmean(run.macro_f1 for run in group),
        "bytes_per_update": statistics.fmean(run.bytes_per_update for run in group),
        "float32_bytes_per_update": statistics.fmean(run.float32_bytes_per_update for run in group),
        "chunks_per_update": statistics.fmean(run.chunks_per_update for run in group),
        "mean_abs_error": statistics.fmean(run.mean_abs_error for run in group),
        "relative_l2_mean": statistics.fmean(run.relative_l2_mean for run in group),
        "relative_l2_max": max(run.relative_l2_max for run in group),
        "zeroed_fraction": statistics.fmean(run.zeroed_fraction for run in group),
        "tensor_relative_l2": {
            name: statistics.fmean(run.tensor_relative_l2[name] for run in group)
            for name in group[0].tensor_relative_l2
        },
    }


def print_table(summaries: Sequence[dict[str, Any]]) -> None:
    """One row per encoding; per-seed figures as ``s0 s1 ...``."""
    header = (
        f"{'encoding':<8} {'bytes/update':>12} {'× f32':>6} {'chunks':>6} {'acc % mean±sd':>14} "
        f"{'acc % per seed':<20} {'Δ vs f32 pts':>12} {'Δ per seed':<20} {'MAE':>8} {'rel L2':>7} "
        f"{'max rel':>7} {'→0 %':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in summaries:
        per_seed = " ".join(f"{100 * value:.1f}" for value in row["accuracy_per_seed"].values())
        deltas = " ".join(f"{value:+.1f}" for value in row["delta_points_per_seed"].values())
        mean_delta = "n/a" if row["delta_points_mean"] is None else f"{row['delta_points_mean']:+.2f}"
        accuracy = f"{100 * row['accuracy_mean']:.1f}±{100 * row['accuracy_sd']:.1f}"
        print(
            f"{row['encoding']:<8} {row['bytes_per_update']:>12,.0f} "
            f"{row['bytes_per_update'] / row['float32_bytes_per_update']:>6.3f} {row['chunks_per_update']:>6.1f} "
            f"{accuracy:>14} {per_seed:<20} {mean_delta:>12} {deltas:<20} {row['mean_abs_error']:>8.1e} "
            f"{row['relative_l2_mean']:>7.4f} {row['relative_l2_max']:>7.4f} {100 * row['zeroed_fraction']:>6.2f}"
        )


def write_results(
    runs: Sequence[CompressionRun], summaries: Sequence[dict[str, Any]], settings: dict[str, Any], out: Path
) -> tuple[Path, Path]:
    """``compression-latest.json`` (settings, summaries, runs) and ``compression_hapt.csv`` (one row per run)."""
    out.mkdir(parents=True, exist_ok=True)
    latest, table = out / "compression-latest.json", out / "compression_hapt.csv"
    document = {"settings": settings, "summaries": list(summaries), "runs": [asdict(run) for run in runs]}
    latest.write_text(json.dumps(document, indent=1) + "\n")
    ordered = sorted(runs, key=lambda run: (ENCODINGS.index(run.encoding), run.seed))
    flat = [{k: v for k, v in asdict(run).items() if k != "tensor_relative_l2"} for run in ordered]  # JSON has it
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    return latest, table


def _settings(seeds: int, updates: int, encodings: Sequence[str]) -> dict[str, Any]:
    from schemas.topics import MAX_MESSAGE_BYTES

    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": quality.MODEL,
        "aggregation": DEMO_FEDBUFF,
        "seeds": seeds,
        "updates": updates,
        "encodings": list(encodings),
        "max_message_bytes": MAX_MESSAGE_BYTES,
        "upload_charged_as": "float32 message in every run",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 60 updates per run (a few minutes)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 3, quick 2)")
    parser.add_argument("--updates", type=int, default=None, help="client updates per run (default 120, quick 60)")
    parser.add_argument("--encodings", nargs="*", choices=ENCODINGS[1:], default=list(ENCODINGS[1:]),
                        help="encodings besides float32, the baseline every seed runs")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    seeds = args.seeds or (2 if args.quick else 3)
    updates = args.updates or (60 if args.quick else 120)
    encodings = [BASELINE, *(name for name in ENCODINGS if name in args.encodings)]
    jobs = [(encoding, seed, updates) for seed in range(seeds) for encoding in encodings]
    print(f"bench.compression: HAPT, FedBuff K={K}, {len(jobs)} runs ({seeds} seeds, {updates} updates each), "
          f"{args.workers} workers", flush=True)  # fmt: skip
    started = time.perf_counter()
    runs = quality.run_in_pool(
        _run,
        jobs,
        args.workers,
        lambda run: f"{run.encoding:<8} seed {run.seed}: acc {run.accuracy:.3f} ({run.wall_seconds:.0f}s)",
    )
    print()
    summaries = summarize(runs, encodings)
    print_table(summaries)
    latest, table = write_results(runs, summaries, _settings(seeds, updates, encodings), args.out)
    print(f"\nwall time {time.perf_counter() - started:.0f} s; results in {latest} and {table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
