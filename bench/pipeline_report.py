"""Pipeline benchmark, the reporting: the summary against its targets, per-run and per-phase tables, CSV and JSON.

Everything here reads a :class:`bench.pipeline_measure.Report`; nothing starts a process or touches Kafka.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.pipeline_measure import MIB, REPOSITORY, Report
from bench.processes import BatchStatus

RESULTS = REPOSITORY / "bench" / "results"

TARGET_UPDATES_PER_SECOND = 100.0
TARGET_RATIO_VS_BARE = 0.5
TARGET_P50_LATENCY_SECONDS = 1.5
TARGET_P95_LATENCY_SECONDS = 3.0
TARGET_PEAK_RISE_PERCENT = 20.0


@dataclass(frozen=True)
class Row:
    """One line of the summary table."""

    measure: str
    unit: str
    job: float | None
    bare: float | None
    target: str
    met: bool | None

    @property
    def ratio(self) -> float | None:
        """Job value over bare-loop value."""
        if self.job is None or self.bare is None or self.bare == 0:
            return None
        return self.job / self.bare


def summary_rows(report: Report) -> list[Row]:
    """The table's rows: throughput, latency and memory, with targets."""
    settings = report.settings
    small, large = settings.backlog, settings.backlog * settings.backlog_factor
    rows: list[Row] = []
    throughput_runs = [(small, settings.max_offsets), (large, settings.max_offsets)]
    if settings.extra_max_offsets:
        throughput_runs.insert(1, (small, settings.extra_max_offsets))
    for backlog, max_offsets in throughput_runs:
        job, bare = report.backlog_run("job", backlog, max_offsets), report.backlog_run("bare", backlog)
        job_rate = job.updates_per_second if job else None
        bare_rate = bare.updates_per_second if bare else None
        met = None
        if job_rate is not None and bare_rate:
            met = job_rate >= TARGET_UPDATES_PER_SECOND and job_rate / bare_rate >= TARGET_RATIO_VS_BARE
        rows.append(
            Row(
                f"throughput, backlog {backlog}, max offsets {max_offsets}",
                "updates/s",
                job_rate,
                bare_rate,
                f">= {TARGET_UPDATES_PER_SECOND:g} and ratio >= {TARGET_RATIO_VS_BARE:g}",
                met,
            )
        )
    job_latency, bare_latency = report.latency("job"), report.latency("bare")
    count = len(job_latency.seconds) if job_latency else 0
    for name, fraction in (("p50", 0.5), ("p95", 0.95)):
        job_value = job_latency.percentile(fraction) if job_latency else None
        bare_value = bare_latency.percentile(fraction) if bare_latency else None
        limit = TARGET_P50_LATENCY_SECONDS if name == "p50" else TARGET_P95_LATENCY_SECONDS
        target = f"<= {limit:g}"
        met = None if job_value is None else job_value <= limit
        measure = f"latency {name}, burst of K={settings.buffer_size} ({count} bursts)"
        rows.append(Row(measure, "s", job_value, bare_value, target, met))
    peaks: dict[str, list[float | None]] = {}
    for kind in ("job", "bare"):
        runs = [report.backlog_run(kind, backlog, settings.max_offsets) for backlog in (small, large)]
        peaks[kind] = [run.peak_mib if run else None for run in runs]
    for index, backlog in enumerate((small, large)):
        measure = f"peak RSS, backlog {backlog}, max offsets {settings.max_offsets}"
        rows.append(Row(measure, "MiB", peaks["job"][index], peaks["bare"][index], "", None))
    if settings.extra_max_offsets:
        extra = report.backlog_run("job", small, settings.extra_max_offsets)
        measure = f"peak RSS, backlog {small}, max offsets {settings.extra_max_offsets}"
        rows.append(Row(measure, "MiB", extra.peak_mib if extra else None, peaks["bare"][0], "", None))
    job_rise, bare_rise = _rise(*peaks["job"]), _rise(*peaks["bare"])
    rows.append(
        Row(
            f"peak RSS rise, backlog {large} vs {small}",
            "%",
            job_rise,
            bare_rise,
            f"<= {TARGET_PEAK_RISE_PERCENT:g}",
            None if job_rise is None else job_rise <= TARGET_PEAK_RISE_PERCENT,
        )
    )
    if report.client is not None:
        measure = f"client process peak RSS (HAPT subject {report.client.subject}, train + publish)"
        rows.append(Row(measure, "MiB", report.client.peak_rss_kib / 1024, None, "", None))
    return rows


def run_rows(report: Report) -> list[dict[str, object]]:
    """One line per runner run: batches, start-up, drain time, rate, and the peak by process."""
    rows: list[dict[str, object]] = []
    for run in report.backlogs:
        by_command = run.peak.by_command if run.peak else {}
        java = sum(size for command, size in by_command.items() if command == "java")
        rows.append(
            {
                "run": f"{run.runner} backlog {run.backlog} max offsets {run.max_offsets}",
                "batches": len(run.batches),
                "messages_per_batch": round(run.measured_updates / max(1, len(run.batches)), 1),
                "startup_seconds": round(run.startup_seconds, 1),
                "drain_seconds": round(run.seconds, 1),
                "updates_per_second": round(run.updates_per_second, 1),
                "peak_mib": round(run.peak_mib),
                "peak_java_mib": round(java / MIB),
                "peak_other_mib": round(run.peak_mib - java / MIB),
                "highest_load": round(run.highest_load, 1),
            }
        )
    return rows


def _rise(small: float | None, large: float | None) -> float | None:
    if small is None or large is None or small == 0:
        return None
    return 100.0 * (large - small) / small


def phase_rows(report: Report) -> list[dict[str, object]]:
    """Where each run's time went: seconds per phase summed over its micro-batches, and the rest."""
    rows: list[dict[str, object]] = []
    for run in report.backlogs:
        totals = run.phase_totals()
        label = f"{run.runner} backlog {run.backlog} max offsets {run.max_offsets}"
        for phase, seconds in [*totals.items(), ("outside the handler", run.seconds - sum(totals.values()))]:
            rows.append(
                {
                    "run": label,
                    "batches": len(run.batches),
                    "phase": phase,
                    "seconds": round(seconds, 3),
                    "percent_of_wall": round(100 * seconds / run.seconds, 1),
                    "seconds_per_batch": round(seconds / max(1, len(run.batches)), 3),
                }
            )
    for latency in report.latencies:
        if latency.runner != "job":
            continue  # the bare loop's read_kafka includes its idle wait in poll(); its latency is the total
        batches = latency.batches
        busy: dict[str, float] = {}
        for batch in batches:
            for phase, seconds in batch.seconds.items():
                busy[phase] = busy.get(phase, 0.0) + seconds
        total_latency = sum(latency.seconds)
        label = f"{latency.runner} latency bursts"
        for phase, seconds in [*busy.items(), ("outside the handler", total_latency - sum(busy.values()))]:
            rows.append(
                {
                    "run": label,
                    "batches": len(batches),
                    "phase": phase,
                    "seconds": round(seconds, 3),
                    "percent_of_wall": round(100 * seconds / total_latency, 1) if total_latency else 0.0,
                    "seconds_per_batch": round(seconds / max(1, len(batches)), 3),
                }
            )
    return rows


def _number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def format_summary(rows: Sequence[Row]) -> str:
    """The summary table as text."""
    header = ("measure", "fedstream job", "bare loop", "ratio", "target", "met?")
    lines = [
        (
            f"{row.measure} ({row.unit})",
            _number(row.job, 3 if row.unit == "s" else 1),
            _number(row.bare, 3 if row.unit == "s" else 1),
            _number(row.ratio, 2),
            f"{row.target} {row.unit}" if row.target else "",
            "—" if row.met is None else ("yes" if row.met else "NO"),
        )
        for row in rows
    ]
    return text_table(header, lines)


def format_runs(rows: Sequence[dict[str, object]]) -> str:
    """The per-run details as text."""
    header = (
        "run", "batches", "msgs/batch", "start-up s", "drain s", "updates/s", "peak MiB", "java", "other", "load",
    )  # fmt: skip
    keys = (
        "run", "batches", "messages_per_batch", "startup_seconds", "drain_seconds", "updates_per_second", "peak_mib",
        "peak_java_mib", "peak_other_mib", "highest_load",
    )  # fmt: skip
    lines = [tuple(f"{row[key]:,}" if key != "run" else str(row[key]) for key in keys) for row in rows]
    return text_table(header, lines)


def format_phases(rows: Sequence[dict[str, object]]) -> str:
    """The phase breakdown as text, one block per run."""
    header = ("run", "batches", "phase", "seconds", "% of wall", "s / batch")
    lines = [
        (
            str(r["run"]),
            str(r["batches"]),
            str(r["phase"]),
            f"{r['seconds']:.2f}",
            f"{r['percent_of_wall']:.1f}",
            f"{r['seconds_per_batch']:.3f}",
        )
        for r in rows
    ]
    return text_table(header, lines)


def text_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, the first left-aligned and the rest right-aligned, under a rule."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines, strict=True)]
    numeric = [index > 0 for index in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if right and index else cell.ljust(width)
            for index, (cell, width, right) in enumerate(zip(cells, widths, numeric, strict=True))
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), rule, *(render(line) for line in lines)])


def write_results(
    report: Report, rows: Sequence[Row], runs: Sequence[dict[str, object]], phases: Sequence[dict[str, object]]
) -> list[Path]:
    """Write the summary, run and phase CSVs and the raw measurements (JSON) under ``bench/results/``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    summary_path = RESULTS / f"pipeline-{stamp}.csv"
    with summary_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["measure", "unit", "fedstream_job", "bare_loop", "ratio", "target", "met"])
        for row in rows:
            writer.writerow([row.measure, row.unit, row.job, row.bare, row.ratio, row.target, row.met])
    paths = [summary_path]
    for name, table in (("runs", runs), ("phases", phases)):
        path = RESULTS / f"pipeline-{stamp}-{name}.csv"
        with path.open("w", newline="") as handle:
            dict_writer = csv.DictWriter(handle, fieldnames=list(table[0]) if table else ["run"])
            dict_writer.writeheader()
            dict_writer.writerows(table)
        paths.append(path)
    raw_path = RESULTS / f"pipeline-{stamp}.json"
    raw_path.write_text(json.dumps(_raw(report), indent=1))
    latest_path = RESULTS / "pipeline-latest.json"
    latest_path.write_text(json.dumps(headline(report), indent=1) + "\n")
    return [*paths, raw_path, latest_path]


def headline(report: Report) -> dict[str, object]:
    """The figures the targets are judged on (``pipeline-latest.json``), from the large backlog and the bursts."""
    settings = report.settings
    large = settings.backlog * settings.backlog_factor
    job, bare = report.backlog_run("job", large, settings.max_offsets), report.backlog_run("bare", large)
    small_job = report.backlog_run("job", settings.backlog, settings.max_offsets)
    latency = report.latency("job")
    throughput = job.updates_per_second if job else None
    bare_throughput = bare.updates_per_second if bare else None
    rise = _rise(small_job.peak_mib if small_job else None, job.peak_mib if job else None)
    return {
        "started_at": report.started_at,
        "model": "har-cnn",
        "buffer_size": settings.buffer_size,
        "max_offsets_per_trigger": settings.max_offsets,
        "trigger_seconds": settings.trigger_seconds,
        "backlog_updates": large,
        "throughput_updates_per_s": throughput,
        "bare_throughput_updates_per_s": bare_throughput,
        "ratio_vs_bare": throughput / bare_throughput if throughput and bare_throughput else None,
        "latency_p50_s": latency.percentile(0.5) if latency else None,
        "latency_p95_s": latency.percentile(0.95) if latency else None,
        "latency_bursts": len(latency.seconds) if latency else 0,
        "memory_rise_fraction": None if rise is None else rise / 100.0,
        "cpu_count": os.cpu_count(),
        "load_average_highest": max((run.highest_load for run in report.backlogs), default=None),
        "load_average_at_end": os.getloadavg(),
    }


def _raw(report: Report) -> dict[str, object]:
    def batches(items: Sequence[BatchStatus]) -> list[dict[str, object]]:
        return [
            {
                "sequence": b.sequence,
                "batch_id": b.batch_id,
                "started_at": b.started_at,
                "finished_at": b.finished_at,
                "messages": b.messages,
                "version": b.current_version,
                "seconds": b.seconds,
            }
            for b in items
        ]

    return {
        "started_at": report.started_at,
        "settings": {**report.settings.__dict__, "aggregation": report.settings.aggregation},
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "backlogs": [
            {
                "runner": run.runner,
                "backlog": run.backlog,
                "max_offsets": run.max_offsets,
                "publish_seconds": run.publish_seconds,
                "warmup": run.warmup,
                "startup_seconds": run.startup_seconds,
                "seconds": run.seconds,
                "measured_updates": run.measured_updates,
                "highest_load": run.highest_load,
                "updates_per_second": run.updates_per_second,
                "peak_rss_bytes": run.peak.total_bytes if run.peak else None,
                "peak_rss_by_command": run.peak.by_command if run.peak else None,
                "batches_seen": len(run.batches),
                "batches_reported": run.reported_batches,
                "batches": batches(run.batches),
            }
            for run in report.backlogs
        ],
        "latencies": [
            {
                "runner": run.runner,
                "seconds": run.seconds,
                "batches_per_burst": run.batches_per_burst,
                "batches": batches(run.batches),
            }
            for run in report.latencies
        ],
        "client": None if report.client is None else report.client.__dict__,
        "notes": report.notes,
    }
