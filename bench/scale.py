"""Scale benchmark: the streaming job against model size, with chunked updates through the real broker.

``python -m bench.scale [--quick]`` (or ``make bench-scale``) runs ``fedstream job`` as a process for synthetic
models of 1 M, 10 M and 100 M float32 parameters (``--quick``: 1 M and 10 M) with FedBuff K = 10 and, per
size, reports:

1. seconds per version: from sending the first chunk of K signed, chunked updates to the version being readable
   on ``fl.models`` (median of ``--versions``), and the job's own phases per version from its status file;
2. aggregation throughput: K × float32 update bytes / seconds per version, against a numpy floor over the same
   updates (chunk decoding and the weighted sum, in this process);
3. peak RSS of the job's Python driver and of its JVM (Spark's executor in local mode);
4. Kafka bytes per update and per version in float32, float16 and int8 (``--encodings`` runs the job with them
   too, up to 10 M parameters).

With ``--executor-aggregation-min-parameters N`` the job makes the versions of sizes of at least ``N`` on Spark's
executors (shards in ``model_shards``) instead of in its Python driver; the table says where each size was made.

A size that fails (out of memory, a stall, disk) is recorded as failed with its error and the next one runs.
Everything runs in a temporary ``FEDSTREAM_HOME`` with a broker on port 29092. It prints the tables and writes
``bench/results/scale-latest.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from bench.pipeline_measure import REPOSITORY, benchmark_stack
from bench.scale_measure import run_sizes
from bench.scale_model import QUICK_SIZES, ScaleSettings, parse_encodings, parse_sizes
from bench.scale_report import document, format_encodings, format_phases, format_sizes, format_verdict, write_results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 1M and 10M only")
    parser.add_argument("--sizes", type=parse_sizes, help="comma-separated parameter counts, e.g. 1M,10M,100M")
    parser.add_argument(
        "--encodings",
        type=parse_encodings,
        help="encodings the job runs with, e.g. float32,float16,int8 (default float32; others up to 10M)",
    )
    parser.add_argument("--versions", type=int, help="versions timed per size and encoding (default 3)")
    parser.add_argument("--buffer-size", type=int, help="FedBuff K (default 10)")
    parser.add_argument("--batch-bytes-budget", type=int, help="the job's --batch-bytes-budget (default: its own)")
    parser.add_argument("--driver-memory-gib", type=int, help="Spark driver heap for every size (default: by size)")
    parser.add_argument("--stall-seconds", type=float, help="fail a size after this long without a batch (600)")
    parser.add_argument("--port", type=int, help="the benchmark broker's port (default 29092)")
    parser.add_argument("--keep-state", action="store_true", help="keep the tables, logs and broker data")
    parser.add_argument(
        "--executor-aggregation-min-parameters",
        type=int,
        help="run the job with this threshold: sizes of at least this many parameters are made on Spark's executors",
    )
    return parser


def settings_from(args: argparse.Namespace) -> ScaleSettings:
    """Benchmark settings from the command line."""
    names = ["sizes", "encodings", "versions", "buffer_size", "batch_bytes_budget", "driver_memory_gib"]
    names += ["stall_seconds", "port", "executor_aggregation_min_parameters"]
    overrides: dict[str, object] = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.quick and args.sizes is None:
        overrides["sizes"] = QUICK_SIZES
    if args.keep_state:
        overrides["keep_state"] = True
    settings = ScaleSettings(**overrides)  # type: ignore[arg-type]
    settings.check()
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run every size, print the tables, write ``scale-latest.json``."""
    settings = settings_from(_parser().parse_args(argv))
    started, started_at = time.monotonic(), datetime.now(UTC).isoformat(timespec="seconds")

    def say(message: str) -> None:
        print(f"[bench {time.monotonic() - started:6.0f}s] {message}", file=sys.stderr, flush=True)

    with benchmark_stack(settings.port, settings.keep_state, say) as home:
        results = run_sizes(settings, home, say)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"\nfedstream scale benchmark: FedBuff K={settings.buffer_size}, chunks of at most 1,000,000 bytes, "
        f"{settings.versions} versions a size, {os.cpu_count()} CPUs, load average {load}, "
        f"{time.monotonic() - started:.0f}s\n"
    )
    print(format_sizes(results))
    print(f"\n{format_verdict(results)}")
    print(
        "\ns/version: first chunk sent → version readable on fl.models (median; runs in brackets). job MB/s: K × "
        "float32 update bytes / s/version. numpy: decode_update_chunk + decode_chunk_body + float64 Σ w·Δ over the "
        "same spooled chunks in one process (sum-only: the sum alone). driver py / JVM / tree: peak RSS of the job's "
        "Python driver, its Spark JVM, and the whole process tree (each its own peak). heap: spark.driver.memory.\n"
    )
    print("Kafka bytes by update encoding (chunk values; s/version where the job ran with it):\n")
    print(format_encodings(results))
    phases = format_phases(results)
    if phases.count("\n") > 1:
        print(
            "\nwhere a float32 version's seconds go (mean per version; the job's phases summed over its batches; wall: "
            "first chunk sent → the status of the batch that made the version, written after its updates' append; "
            "outside: wall − phases, i.e. sending, trigger waits, Spark's planning and Kafka fetch):\n"
        )
        print(phases)
    payload = document(results, started_at=started_at, versions=settings.versions, buffer_size=settings.buffer_size)
    path = write_results(payload)
    print(f"\nwritten: {path.relative_to(REPOSITORY)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
