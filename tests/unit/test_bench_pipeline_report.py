"""The pipeline benchmark's report reads measurements only: tables and files from a synthetic Report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bench import pipeline_report
from bench.pipeline_measure import BacklogRun, BenchSettings, LatencyRun, Report, warm_up_batch
from bench.pipeline_report import (
    TARGET_RATIO_VS_BARE,
    TARGET_UPDATES_PER_SECOND,
    format_phases,
    format_runs,
    format_summary,
    phase_rows,
    run_rows,
    summary_rows,
    write_results,
)
from bench.processes import BatchStatus, RssSample, RunnerFailedError, StatusFollower

MIB = 2**20


def _batch(batch_id: int, seconds: dict[str, float]) -> BatchStatus:
    return BatchStatus(batch_id + 1, batch_id, 99.0 + batch_id, 100.0 + batch_id, 10, 10, batch_id + 1, 0, seconds)


def _backlog(runner: str, backlog: int, seconds: float, peak_mib: int) -> BacklogRun:
    batches = [_batch(0, {"decode": 0.5, "aggregate": 1.0}), _batch(1, {"decode": 0.5, "aggregate": 1.0})]
    peak = RssSample(at=0.0, total_bytes=peak_mib * MIB, by_command={"java": peak_mib * MIB // 2, "python": 1})
    return BacklogRun(
        runner=runner,
        max_offsets=50,
        backlog=backlog,
        warmup=500,
        publish_seconds=1.0,
        startup_seconds=2.0,
        seconds=seconds,
        measured_updates=backlog,
        batches=batches,
        peak=peak,
        reported_batches=len(batches),
        highest_load=1.5,
    )


def _report() -> Report:
    settings = BenchSettings(backlog=100, backlog_factor=10, max_offsets=50, extra_max_offsets=None)
    report = Report(settings=settings, started_at="2026-01-01T00:00:00+00:00")
    report.backlogs += [
        _backlog("job", 100, 0.5, 1000),
        _backlog("job", 1000, 5.0, 1100),
        _backlog("bare", 100, 0.25, 200),
        _backlog("bare", 1000, 2.5, 200),
    ]
    batches = [_batch(2, {"decode": 0.1})]
    report.latencies += [LatencyRun("job", [1.0, 2.0, 3.0], batches, [1, 1, 1]), LatencyRun("bare", [0.1, 0.2, 0.3])]
    return report


def test_summary_rows_compare_the_job_with_the_bare_loop_against_the_targets() -> None:
    rows = {row.measure: row for row in summary_rows(_report())}
    throughput = rows["throughput, backlog 100, max offsets 50"]
    assert throughput.job == 200.0 and throughput.bare == 400.0 and throughput.ratio == 0.5
    assert throughput.met is (TARGET_UPDATES_PER_SECOND <= 200.0 and throughput.ratio >= TARGET_RATIO_VS_BARE)
    assert rows["latency p50, burst of K=10 (3 bursts)"].job == 2.0
    assert rows["peak RSS rise, backlog 1000 vs 100"].job == pytest.approx(10.0)
    assert "fedstream job" in format_summary(list(rows.values())).splitlines()[0]


def test_runs_and_phases_account_for_every_second() -> None:
    report = _report()
    runs = run_rows(report)
    assert [run["updates_per_second"] for run in runs] == [200.0, 200.0, 400.0, 400.0]
    assert runs[0]["peak_java_mib"] == 500 and runs[0]["peak_other_mib"] == 500
    phases = phase_rows(report)
    first = [row for row in phases if row["run"] == "job backlog 1000 max offsets 50"]
    assert sum(float(row["seconds"]) for row in first) == pytest.approx(5.0)  # phases plus "outside the handler"
    assert format_runs(runs).count("\n") == len(runs) + 1
    assert format_phases(phases).count("\n") == len(phases) + 1


def test_results_are_written_as_csv_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_report, "RESULTS", tmp_path)
    report = _report()
    paths = write_results(report, summary_rows(report), run_rows(report), phase_rows(report))
    summary, runs, phases, raw, latest = paths
    assert all(path.parent == tmp_path for path in paths)
    headline = json.loads(latest.read_text())
    assert latest.name == "pipeline-latest.json"
    assert headline["throughput_updates_per_s"] == 200.0 and headline["bare_throughput_updates_per_s"] == 400.0
    assert headline["ratio_vs_bare"] == 0.5 and headline["latency_p50_s"] == 2.0 and headline["latency_p95_s"] == 3.0
    assert headline["memory_rise_fraction"] == pytest.approx(0.1) and headline["cpu_count"] >= 1
    assert headline["load_average_highest"] == 1.5
    with summary.open() as handle:
        assert next(csv.reader(handle))[:3] == ["measure", "unit", "fedstream_job"]
    assert runs.name.endswith("-runs.csv") and phases.name.endswith("-phases.csv")
    assert json.loads(raw.read_text())["backlogs"][0]["runner"] == "job"


def _status(path: Path, sequences: list[int], recorded: int) -> None:
    entries = [
        {"sequence": s, "batch_id": s - 1, "started_at": s - 0.5, "finished_at": float(s), "accepted": 10,
         "current_version": s, "pending": 0, "seconds": {"decode": 0.1}}
        for s in sequences
    ]  # fmt: skip
    path.write_text(json.dumps({"batches_recorded": recorded, "recent_batches": entries}))


def test_the_follower_keeps_every_batch_and_reports_the_ones_it_never_saw(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    follower = StatusFollower(status, interval_seconds=3600)  # read by hand below
    try:
        _status(status, [1, 2], recorded=2)
        follower.read()
        _status(status, [2, 3], recorded=3)
        follower.read()
        assert [b.sequence for b in follower.ordered()] == [1, 2, 3] and not follower.missed
        _status(status, [6, 7], recorded=7)  # the runner ran 4 batches between two reads; the file kept 2
        follower.read()
        assert follower.missed == {4, 5}
        assert follower.ordered()[-1].started_at == 6.5
    finally:
        follower.stop()


def test_timing_starts_when_the_warm_up_batch_ends() -> None:
    batches = [_batch(index, {}) for index in range(4)]  # 10 updates each
    warm, taken = warm_up_batch(batches, 15)
    assert warm.sequence == 2 and taken == 20
    with pytest.raises(RunnerFailedError):
        warm_up_batch(batches, 41)
