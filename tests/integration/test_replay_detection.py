"""A job tells its own interrupted batch from another model's batch with the same id, on real Delta tables.

Jobs of several models may share the tables, and their checkpoints hand out overlapping batch ids. Were one
job to take another model's rows for its own earlier attempt, it would replay the batch and drop its versions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from streaming_jobs.checkpoint_identity import CheckpointIdentity
from streaming_jobs.intake_limits import IntakeLimits
from streaming_jobs.settings import JobSettings
from streaming_jobs.tables import MODEL_VERSIONS, UPDATES, TableLocations
from streaming_jobs.update_batch import UpdateBatchProcessor
from tests.rows import update_row, version_row

pytestmark = pytest.mark.stack

BATCH = 7


def _processor(spark, tables: Path, model: str) -> UpdateBatchProcessor:  # type: ignore[no-untyped-def]
    settings = JobSettings(model_name=model, tables_root=str(tables), catalog_schema=None, require_signatures=False)
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
