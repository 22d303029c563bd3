"""A job tells its own interrupted batch from another model's batch with the same id, and a replayed batch writes
only what its first attempt did not, on real Delta tables.

Jobs of several models may share the tables, and their checkpoints hand out overlapping batch ids. Were one
job to take another model's rows for its own earlier attempt, it would replay the batch and drop its versions.
The job's ``updates`` and ``model_versions`` appends carry no Delta transaction id: this replay check is what
writes them once.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F  # noqa: N812

from aggregator import AggregationConfig
from producers.updates import build_update
from streaming_jobs.checkpoint_identity import CheckpointIdentity
from streaming_jobs.global_state import initial_version_row
from streaming_jobs.intake_limits import IntakeLimits
from streaming_jobs.settings import JobSettings
from streaming_jobs.tables import MODEL_VERSIONS, REJECTED_UPDATES, UPDATES, TableLocations
from streaming_jobs.update_batch import KafkaMessage, UpdateBatchProcessor, _PhaseClock
from tests.rows import rejected_row, update_row, version_row

pytestmark = pytest.mark.stack

BATCH = 7


def _processor(spark, tables: Path, model: str, aggregation: AggregationConfig | None = None) -> UpdateBatchProcessor:  # type: ignore[no-untyped-def]
    settings = JobSettings(
        model_name=model,
        tables_root=str(tables),
        catalog_schema=None,
        require_signatures=False,
        aggregation=aggregation or AggregationConfig(),
    )
    identity = CheckpointIdentity(writer_id=f"{model}:test", first_batch_id=0, created_at=datetime.now(UTC).isoformat())
    limits = IntakeLimits(
        max_update_bytes=2**20, max_offsets_per_trigger=10, batch_bytes_budget=2**24, rejected_bytes_kept=1024
    )
    return UpdateBatchProcessor(spark, settings, identity, limits)


def test_only_this_models_rows_of_a_batch_make_it_a_replay(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    locations = TableLocations(str(tmp_path / "tables"))
    locations.ensure(spark)
    other = {"model_name": "other-model", "batch_id": BATCH}
    updates = [update_row(number, **other) for number in range(2)]
    locations.append(spark, UPDATES, updates, app_id=None, batch_id=None)
    locations.append(spark, MODEL_VERSIONS, [version_row(1, **other)], app_id=None, batch_id=None)

    assert _processor(spark, tmp_path / "tables", "this-model")._tables_written_by(BATCH) == set()
    assert _processor(spark, tmp_path / "tables", "other-model")._tables_written_by(BATCH) == {
        UPDATES.name,
        MODEL_VERSIONS.name,
    }
    assert _processor(spark, tmp_path / "tables", "other-model")._tables_written_by(BATCH + 1) == set()


PARAMETERS = {"w": np.zeros((4, 2), dtype=np.float32)}
TWO_PER_VERSION = AggregationConfig.from_dict({"buffer_size": 2, "max_wait_seconds": None})


def _messages(model: str) -> list[KafkaMessage]:
    """Four updates (two versions' worth) and one malformed message, as one micro-batch read them."""
    keyed = [
        (
            f"client-{index}".encode(),
            build_update(
                client_id=f"client-{index}",
                model_name=model,
                base_version=0,
                sample_count=5,
                delta={"w": np.full((4, 2), 0.01 * (index + 1), dtype=np.float32)},
            )[1],
        )
        for index in range(4)
    ]
    keyed.insert(2, (b"client-9", b"not an update"))
    now = datetime.now(UTC)
    return [
        KafkaMessage(key, value, "fl.updates", 0, offset, now, len(value), None)
        for offset, (key, value) in enumerate(keyed)
    ]


class _InterruptedError(RuntimeError):
    pass


@pytest.mark.parametrize("interrupted", ["versions", "updates"])
def test_a_replayed_batch_writes_what_its_interrupted_attempt_did_not_and_nothing_twice(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupted: str
) -> None:  # type: ignore[no-untyped-def]
    tables, model = tmp_path / "tables", "replayed"
    locations = TableLocations(str(tables))
    locations.ensure(spark)
    version_0 = initial_version_row(model, PARAMETERS, TWO_PER_VERSION)
    locations.append(spark, MODEL_VERSIONS, [version_0], app_id=None, batch_id=None)
    messages = _messages(model)

    first = _processor(spark, tables, model, TWO_PER_VERSION)
    if interrupted == "versions":  # the updates' append (in its writer thread) may finish; the versions' fails
        original = first._append_once

        def fail_versions(table, rows):  # type: ignore[no-untyped-def]
            if table is MODEL_VERSIONS:
                raise _InterruptedError(table.name)
            original(table, rows)

        monkeypatch.setattr(first, "_append_once", fail_versions)
    else:  # the versions' append finishes; the updates' and rejections' fail
        monkeypatch.setattr(first, "_append_updates", lambda *rows: (_ for _ in ()).throw(_InterruptedError("updates")))
    with pytest.raises(_InterruptedError):
        first._process_messages(messages, [], BATCH, _PhaseClock())

    for restart in range(2):  # a replay after the interruption, then one after a clean finish: no new rows
        outcome, versions = _processor(spark, tables, model, TWO_PER_VERSION)._process_messages(
            messages, [], BATCH, _PhaseClock()
        )
        assert outcome.accepted == 4 and outcome.rejected == 1, restart
        updates = locations.read(spark, UPDATES).where(F.col("model_name") == model).collect()
        made = locations.read(spark, MODEL_VERSIONS).where(F.col("model_name") == model).collect()
        rejected = locations.read(spark, REJECTED_UPDATES).where(F.col("batch_id") == BATCH).collect()
        assert len(updates) == 4 and len({row.update_id for row in updates}) == 4, restart
        assert sorted(row.version for row in made) == [0, 1, 2], restart
        placed = Counter(update_id for row in made for update_id in row.update_ids)
        assert sorted(placed) == sorted(row.update_id for row in updates) and set(placed.values()) == {1}, restart
        assert [row.reason for row in rejected] == ["malformed_envelope"], restart
        newly_made = [1, 2] if interrupted == "versions" and restart == 0 else []
        assert [row.version for row in versions] == newly_made, "versions an earlier attempt recorded are not made"


def test_a_new_checkpoint_resumes_after_this_models_own_records_not_another_models(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from streaming_jobs.checkpoint_identity import _resume_offsets

    locations = TableLocations(str(tmp_path / "tables"))
    locations.ensure(spark)
    updates = [
        update_row(10, model_name="mine", kafka_partition=0),
        update_row(50, model_name="theirs", kafka_partition=0),  # the other model's job is ahead
        update_row(7, model_name="theirs", kafka_partition=1),
    ]
    rejected = [
        rejected_row(kafka_partition=0, kafka_offset=60, job_model="theirs"),
        rejected_row(kafka_partition=0, kafka_offset=12, job_model="mine"),
        rejected_row(kafka_partition=1, kafka_offset=3, job_model=None),  # from before rows named their job
    ]
    locations.append(spark, UPDATES, updates, app_id=None, batch_id=None)
    locations.append(spark, REJECTED_UPDATES, rejected, app_id=None, batch_id=None)

    resume = _resume_offsets(spark, locations, "fl.updates", lambda: 3, "mine")
    assert resume == {"fl.updates": {"0": 13, "1": 4, "2": -2}}, "after its own rows; the earliest where it has none"
    theirs = _resume_offsets(spark, locations, "fl.updates", lambda: 3, "theirs")
    assert theirs == {"fl.updates": {"0": 61, "1": 8, "2": -2}}
