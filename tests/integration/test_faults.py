"""Exactly once under faults, on the real stack: one round of :mod:`bench.fault_campaign` (the job
SIGKILLed at each crash point and at a random moment, the broker restarted under it) while signed clients
keep publishing. Nothing acknowledged is lost or duplicated; ``bench.faults`` runs more rounds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.fault_campaign import FAULT_KINDS, CampaignSettings, FaultCampaign
from devstack.topics import ensure_topics
from tests.conftest import RunningStack

pytestmark = pytest.mark.stack


def test_sigkills_at_every_crash_point_and_a_broker_restart_lose_and_duplicate_nothing(
    spark, local_stack: RunningStack, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ensure_topics(local_stack.kafka)
    started = time.monotonic()

    def say(line: str) -> None:  # the campaign's progress, shown with a failure (or with ``pytest -s``)
        print(f"{time.monotonic() - started:6.1f} s  {line}", flush=True)

    # a 2 s outage drops every connection of the job just as 5 s would; the job must carry on either way
    settings = CampaignSettings(rounds=1, seconds_between_updates=1.0, broker_down_seconds=2.0)
    campaign = FaultCampaign(tmp_path, local_stack.kafka, settings, say=say)
    report = campaign.run(spark)
    say(f"{len(report.acknowledged)} acknowledged, {len(report.versions)} versions, {report.job_starts} job starts")
    log = campaign.job.log()

    assert [fault.kind for fault in report.faults] == list(FAULT_KINDS)
    assert all(fault.fired for fault in report.faults), f"{report.faults}\n{log}"
    assert report.job_starts >= len(FAULT_KINDS)
    assert len(report.acknowledged) >= 20, "the fleet published through the faults"
    assert not report.missing, "every acknowledged update is in `updates`"
    assert report.duplicated == 0 and not report.unexpected, "and only once, and nothing else"
    assert report.versions_consecutive, f"consecutive versions, no duplicates: {report.versions}"
    assert len(report.versions) > len(FAULT_KINDS)
    assert report.placed_exactly_once, "every accepted update in exactly one version"
    assert report.recomputed_ok == len(report.versions) - 1, "every version recomputes from parent + updates"
    assert report.newest_on_kafka == report.versions[-1] and report.newest_hash_matches, "clients on the newest"
    assert report.clean
