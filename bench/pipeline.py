"""Pipeline benchmark: the streaming job against a bare loop, on the benchmark's own broker.

``python -m bench.pipeline [--quick]`` (or ``make bench-pipeline``) measures, for the ``har-cnn`` model
(104,358 float32 parameters, ~420 KB per update) and FedBuff with buffer size K = 10:

1. sustained throughput: a backlog of B updates is pre-loaded onto ``fl.updates``, then the runner starts;
   timed from the start of its first micro-batch to the status that shows version B/K;
2. latency: the runner idle and caught up, K updates are published in one acknowledged burst; timed from
   the acknowledgement to the new version being readable on ``fl.models``;
3. the floor: both workloads through ``bench.bare_loop`` (kafka-python, decode, validate, ``fedbuff_step``,
   publish; no Spark, no Delta), and the job/bare-loop ratios;
4. peak RSS of each runner's process tree for backlogs B and 10×B, and of one HAPT client process.

Everything runs in a temporary ``FEDSTREAM_HOME`` with a broker on port 29092 (override with ``--port``),
which is stopped at the end. It prints a table and writes CSVs under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from bench.pipeline_measure import MODEL_NAME, REPOSITORY, BenchSettings, run_benchmark
from bench.pipeline_report import (
    format_phases,
    format_runs,
    format_summary,
    phase_rows,
    run_rows,
    summary_rows,
    write_results,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="backlogs 200 and 2,000, 10 bursts (a few minutes)")
    parser.add_argument("--backlog", type=int, help="B, the small backlog (default 500; quick 200)")
    parser.add_argument("--backlog-factor", type=int, help="the large backlog is B times this (default 10)")
    parser.add_argument("--latency-repeats", type=int, help="bursts per runner (default 20; quick 10)")
    parser.add_argument("--max-offsets", type=int, help="--max-offsets-per-trigger of the job (default 100)")
    parser.add_argument(
        "--extra-max-offsets", type=int, help="a second value tried on the small backlog (default 250; 0 skips)"
    )
    parser.add_argument("--trigger-seconds", type=float, help="the job's trigger interval (default 0.5, its own)")
    parser.add_argument("--register-every", type=int, help="the job's MLflow registration period (default 10)")
    parser.add_argument("--port", type=int, help="the benchmark broker's port (default 29092)")
    parser.add_argument("--no-client", action="store_true", help="skip the client-process measurement")
    parser.add_argument("--keep-state", action="store_true", help="keep the tables, logs and broker data")
    return parser


def settings_from(args: argparse.Namespace) -> BenchSettings:
    """Benchmark settings from the command line: the preset, then every option given."""
    base = BenchSettings.quick() if args.quick else BenchSettings()
    overrides: dict[str, object] = {
        name: getattr(args, name)
        for name in (
            "backlog",
            "backlog_factor",
            "latency_repeats",
            "max_offsets",
            "trigger_seconds",
            "register_every",
            "port",
        )
        if getattr(args, name) is not None
    }
    if args.extra_max_offsets is not None:
        overrides["extra_max_offsets"] = args.extra_max_offsets or None
    if args.no_client:
        overrides["client_subject"] = None
    if args.keep_state:
        overrides["keep_state"] = True
    return BenchSettings(**{**base.__dict__, **overrides})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the CSVs."""
    settings = settings_from(_parser().parse_args(argv))
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[bench {time.monotonic() - started:6.0f}s] {message}", file=sys.stderr, flush=True)

    report = run_benchmark(settings, say)
    rows, phases = summary_rows(report), phase_rows(report)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"\nfedstream pipeline benchmark: {MODEL_NAME}, K={settings.buffer_size}, {os.cpu_count()} CPUs, "
        f"load average {load}, {time.monotonic() - started:.0f}s\n"
    )
    print(format_summary(rows))
    for note in report.notes:
        print(f"  note: {note}")
    print("\nruns (start-up: process start to the end of the warm-up batch; drain: from there to the last version):\n")
    print(format_runs(run_rows(report)))
    print(
        "\nwhere the time goes (phases summed over micro-batches; 'outside the handler' = wall − their sum; for the "
        "latency bursts the wall is ack → fl.models, which write_updates follows, hence a negative rest):\n"
    )
    print(format_phases(phases))
    paths = write_results(report, rows, run_rows(report), phases)
    print("\nwritten: " + ", ".join(str(path.relative_to(REPOSITORY)) for path in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
