"""`audit client` on real Delta tables: one model's contributions, times in UTC with their offset."""

from __future__ import annotations

from pathlib import Path

import pytest

from streaming_jobs.audit import client_activity
from streaming_jobs.tables import MODEL_VERSIONS, REJECTED_UPDATES, UPDATES, TableLocations
from tests.rows import rejected_row, update_row, version_row

pytestmark = pytest.mark.stack


def test_a_clients_activity_is_one_models_and_its_times_name_utc(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    locations = TableLocations(str(tmp_path / "tables"))
    locations.ensure(spark)
    mine, theirs = (
        update_row(0, client_id="client-0", model_name="m"),
        update_row(1, client_id="client-0", model_name="other"),
    )
    locations.append(spark, UPDATES, [mine, theirs], app_id=None, batch_id=None)
    placed = version_row(1, model_name="m", update_ids=[mine.update_id], update_weights=[1.0], update_staleness=[0])
    locations.append(spark, MODEL_VERSIONS, [placed], app_id=None, batch_id=None)
    locations.append(spark, REJECTED_UPDATES, [rejected_row(client_id="client-0")], app_id=None, batch_id=None)

    activity = client_activity(spark, locations, "client-0", model_name="m")
    assert [(row["update_id"], row["in_version"]) for row in activity["accepted"]] == [(mine.update_id, 1)]
    every = sorted(row["update_id"] for row in client_activity(spark, locations, "client-0")["accepted"])
    assert every == [mine.update_id, theirs.update_id], "without a model: every model's updates"
    assert [
        row["in_version"] for row in client_activity(spark, locations, "client-0", model_name="other")["accepted"]
    ] == [None]
    assert len(activity["rejected"]) == 1, "rejections carry no trusted model: all of the client's are listed"
    times = [row["received_at"] for row in activity["accepted"]] + [row["rejected_at"] for row in activity["rejected"]]
    assert times == ["2025-03-01T00:00:00+00:00"] * 2


def test_the_report_reads_from_delta_what_it_summarises_from_the_rows(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    from fedstream.report import summarize
    from fedstream.report.read import read_report_data

    locations = TableLocations(str(tmp_path / "tables"))
    locations.ensure(spark)
    updates = [update_row(number, client_id=f"client-{number % 2}", model_name="m") for number in range(3)]
    updates.append(update_row(3, model_name="other"))
    versions = [
        version_row(0, model_name="m"),
        version_row(
            1, model_name="m", update_ids=[row.update_id for row in updates[:2]], update_weights=[0.5, 0.5],
            update_staleness=[0, 3], epsilon=1.5, epsilon_assumption="no_amplification",
        ),
    ]  # fmt: skip
    rejected = [rejected_row(client_id="client-1"), rejected_row(client_id="client-9")]
    locations.append(spark, UPDATES, updates, app_id=None, batch_id=None)
    locations.append(spark, MODEL_VERSIONS, versions, app_id=None, batch_id=None)
    locations.append(spark, REJECTED_UPDATES, rejected, app_id=None, batch_id=None)
    now = datetime(2026, 1, 1, tzinfo=UTC)

    read = read_report_data(spark, locations, "m", generated_at=now)
    expected = summarize("m", versions, updates, rejected, generated_at=now, source=locations.root)
    assert read == expected
    assert read.dp_enabled and read.latest_version == 1
