"""Exactly once under faults: rounds of SIGKILLs and broker restarts on the real local stack, then a table.

    .venv/bin/python -m bench.faults [--rounds 3] [--clients 3] [--seconds-between-updates 1.0]

Each round kills the streaming job at each of its crash points (on a random pass), once at a random moment
while it works, and restarts the broker under it, while signed clients keep publishing
(:mod:`bench.fault_campaign`). Afterwards it reads Delta and Kafka back and prints what was injected,
what was acknowledged, lost, duplicated and recomputed. The local stack (broker on the default port, state
under ``FEDSTREAM_HOME``) is started if needed; a run folder is kept under ``bench/results/faults-*``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench.fault_campaign import (
    BROKER_RESTART,
    FAULT_KINDS,
    RANDOM_KILL,
    CampaignReport,
    CampaignSettings,
    FaultCampaign,
)

RESULTS = Path(__file__).resolve().parent / "results"


def print_report(report: CampaignReport) -> None:
    """The fault table, then the checks."""
    injected = Counter(fault.kind for fault in report.faults)
    fired = Counter(fault.kind for fault in report.faults if fault.fired)
    header = f"{'fault':<34} {'injected':>8} {'as planned':>10}"
    print(header)
    print("-" * len(header))
    for kind in FAULT_KINDS:
        labels = {RANDOM_KILL: "SIGKILL at a random moment", BROKER_RESTART: "broker restart"}
        label = labels.get(kind, f"SIGKILL {kind}")
        print(f"{label:<34} {injected[kind]:8d} {fired[kind]:10d}")
    print(f"{'all':<34} {sum(injected.values()):8d} {sum(fired.values()):10d}")
    print()
    versions = len(report.versions)
    rows = [
        ("job starts (first + restarts)", str(report.job_starts)),
        ("job exits nobody planned", str(report.unplanned_exits)),
        ("updates acknowledged by the broker", str(len(report.acknowledged))),
        ("rows in `updates`", str(len(report.accepted))),
        ("acknowledged but missing", str(len(report.missing))),
        ("duplicated rows", str(report.duplicated)),
        ("rows never acknowledged", str(len(report.unexpected))),
        ("model versions", f"{versions} (0..{versions - 1})" if versions else "0"),
        ("versions consecutive", "yes" if report.versions_consecutive else "NO"),
        ("each update in exactly one version", "yes" if report.placed_exactly_once else "NO"),
        ("versions that recompute to their hash", f"{report.recomputed_ok}/{max(versions - 1, 0)}"),
        ("newest on fl.models = newest in Delta", "yes" if report.newest_hash_matches else "NO"),
        ("campaign wall time", f"{report.seconds:.0f} s"),
        ("verdict", "nothing lost, nothing duplicated" if report.clean else "FAILED"),
    ]
    for name, value in rows:
        print(f"{name:<40} {value}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of faults (each: every kind once)")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--seconds-between-updates", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from devstack.local_stack import stack_up
    from devstack.topics import ensure_topics
    from schemas.kafka_settings import KafkaSettings
    from streaming_jobs.spark_session import get_spark

    status = stack_up()
    kafka = KafkaSettings(bootstrap_servers=status.broker.bootstrap_servers)
    ensure_topics(kafka)
    folder = args.out / f"faults-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True)
    settings = CampaignSettings(
        rounds=args.rounds, clients=args.clients, seconds_between_updates=args.seconds_between_updates, seed=args.seed
    )
    started = time.perf_counter()
    print(f"bench.faults: {args.rounds} rounds x {len(FAULT_KINDS)} faults, {args.clients} signed clients, "
          f"run folder {folder}", flush=True)  # fmt: skip
    spark = get_spark("fedstream-bench-faults")
    try:
        report = FaultCampaign(folder, kafka, settings, say=lambda line: print(line, flush=True)).run(spark)
    finally:
        spark.stop()
    print()
    print_report(report)
    summary = {**asdict(report), "clean": report.clean, "wall_seconds": time.perf_counter() - started}
    (folder / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nreport: {folder / 'report.json'}; job logs: {folder}/job-*.log")
    return 0 if report.clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
