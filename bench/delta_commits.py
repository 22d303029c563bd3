"""What one idempotent Delta append costs the job, by table property set: ``python -m bench.delta_commits``.

The job appends to ``model_versions`` (one row, ~420 KB of parameters for ``har-cnn``) and ``updates`` (K rows of
~420 KB) every micro-batch, with ``txnAppId``/``txnVersion``. This appends the same rows, through the job's own
``TableLocations.append``, ``--commits`` times to fresh tables made with each property set, and prints the
median and 90th-percentile seconds per commit (the first ``--warmup`` commits left out). All sets run in one
Spark session, interleaved commit by commit, so the machine's noise falls on each alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from schemas.rows import ModelVersionRow, UpdateRow
from streaming_jobs.tables import MODEL_VERSIONS, UPDATES, TableLocations, TableSpec, table_properties

PARAMETER_BYTES = 419_000


def _version_row(version: int) -> ModelVersionRow:
    now = datetime.now(UTC)
    return ModelVersionRow(
        model_name="har-cnn", version=version, parent_version=version - 1, parent_parameter_hash="a" * 64,
        created_at=now, parameters=os.urandom(PARAMETER_BYTES), parameter_hash="b" * 64,
        update_ids=[f"{version * 10 + i:032x}" for i in range(10)], update_weights=[0.1] * 10,
        update_staleness=[0] * 10, staleness_mean=0.0, staleness_max=0, aggregation_mode="fedbuff",
        server_optimizer="sgd", optimizer_state=b"", config_json="{}", federated_validation_loss=0.5,
        federated_validation_accuracy=0.5, batch_id=version, epsilon=None, epsilon_assumption=None,
        privacy_budget_exhausted=None, shards_key=None,
    )  # fmt: skip


def _update_rows(batch: int, count: int) -> list[UpdateRow]:
    now = datetime.now(UTC)
    return [
        UpdateRow(
            update_id=f"{batch * count + i:032x}", client_id=f"client-{i}", model_name="har-cnn", base_version=0,
            sample_count=100, payload_sha256="c" * 64, payload=os.urandom(PARAMETER_BYTES), signature=b"s" * 64,
            validation_loss=None, validation_accuracy=None, validation_count=0, training_loss=None, training_steps=1,
            kafka_topic="fl.updates", kafka_partition=0, kafka_offset=batch * count + i, kafka_timestamp=now,
            client_created_at=now, received_at=now, batch_id=batch,
        )
        for i in range(count)
    ]  # fmt: skip


def property_sets() -> dict[str, dict[str, dict[str, str]]]:
    """Name -> table name -> properties: Delta's defaults, and what fedstream creates its tables with."""
    return {
        "delta defaults": {MODEL_VERSIONS.name: {}, UPDATES.name: {}},
        "fedstream": {table.name: table_properties(table, 90) for table in (MODEL_VERSIONS, UPDATES)},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Time the appends and print one line per (property set, table)."""
    parser = argparse.ArgumentParser(prog="python -m bench.delta_commits", description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=60, help="appends per table (default 60)")
    parser.add_argument("--warmup", type=int, default=10, help="first appends left out of the figures (default 10)")
    parser.add_argument("--updates-per-commit", type=int, default=10, help="rows per updates append (K, default 10)")
    args = parser.parse_args(argv)

    from delta.tables import DeltaTable

    from streaming_jobs.spark_session import get_spark

    spark = get_spark("fedstream-bench-delta-commits")
    root = Path(tempfile.mkdtemp(prefix="fedstream-delta-commits-"))
    sets = property_sets()
    locations = {name: TableLocations(str(root / name.replace(" ", "-"))) for name in sets}
    for name, tables in sets.items():
        for table in (MODEL_VERSIONS, UPDATES):
            builder = DeltaTable.create(spark).addColumns(table.schema).location(locations[name].identifier(table))
            for key, value in tables[table.name].items():
                builder = builder.property(key, value)
            builder.execute()
    seconds: dict[tuple[str, str], list[float]] = {(n, t.name): [] for n in sets for t in (MODEL_VERSIONS, UPDATES)}
    for commit in range(args.commits):
        rows: dict[str, Sequence[ModelVersionRow | UpdateRow]] = {
            MODEL_VERSIONS.name: [_version_row(commit + 1)],
            UPDATES.name: _update_rows(commit, args.updates_per_commit),
        }
        for name in sets:
            for table in (MODEL_VERSIONS, UPDATES):
                seconds[(name, table.name)].append(
                    _timed_append(spark, locations[name], table, rows[table.name], commit)
                )
    print(f"\nDelta appends, {args.commits - args.warmup} timed per line, {os.cpu_count()} CPUs\n")
    print(f"{'properties':<16} {'table':<15} {'rows':>4} {'p50 s':>7} {'p90 s':>7}")
    for (name, table_name), values in seconds.items():
        timed = sorted(values[args.warmup :])
        p90 = timed[min(len(timed) - 1, int(0.9 * len(timed)))]
        print(f"{name:<16} {table_name:<15} {len(rows[table_name]):>4} {statistics.median(timed):>7.3f} {p90:>7.3f}")
    spark.stop()
    return 0


def _timed_append(
    spark: object, locations: TableLocations, table: TableSpec, rows: Sequence[ModelVersionRow | UpdateRow], batch: int
) -> float:
    started = time.perf_counter()
    locations.append(spark, table, rows, app_id="bench", batch_id=batch)  # type: ignore[arg-type]
    return time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit(main())
