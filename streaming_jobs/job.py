"""The streaming job: ``fl.updates`` → validate → Delta → aggregate → ``fl.models`` + MLflow.

``run_job`` is what ``fedstream job`` runs locally and what a Databricks job runs on its cluster.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import numpy.typing as npt
from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F  # noqa: N812

from aggregator import BudgetCheck
from schemas.rows import ModelVersionRow
from schemas.tensors import Tensors, decode_tensors
from schemas.topics import UPDATES_TOPIC
from streaming_jobs.checkpoint_identity import resolve_checkpoint_identity, spark_starting_offsets
from streaming_jobs.executor_aggregation import version_shapes, version_values
from streaming_jobs.global_state import MissingInitialVersionError, initial_version_row
from streaming_jobs.initial_model import read_initial_model
from streaming_jobs.intake_limits import intake_limits
from streaming_jobs.publisher import ShardSource, VersionPublisher
from streaming_jobs.settings import JobSettings
from streaming_jobs.tables import MODEL_VERSIONS, TableLocations
from streaming_jobs.update_batch import BatchOutcome, UpdateBatchProcessor

logger = logging.getLogger(__name__)


def checked_initial_model(settings: JobSettings) -> Tensors | None:
    """The parameters of ``settings.initial_model_path`` (``None`` without one), checked before Spark starts.

    Raises :class:`~streaming_jobs.initial_model.InvalidInitialModelError` naming what is wrong with the file.
    """
    initial = settings.initial_model_file()
    if initial is None:
        return None
    return read_initial_model(initial, max_message_bytes=settings.kafka.max_message_bytes)


def bootstrap_initial_version(spark: SparkSession, settings: JobSettings, initial: Tensors | None) -> bool:
    """Write version 0 from ``initial`` if the model has no version yet; True if written."""
    locations = TableLocations(settings.tables_root, settings.catalog_schema)
    exists = locations.read(spark, MODEL_VERSIONS).where(F.col("model_name") == settings.model_name).limit(1).count()
    if exists:
        return False
    if initial is None:
        raise MissingInitialVersionError(
            f"model {settings.model_name!r} has no version 0; pass an initial model (--initial-model FILE)"
        )
    row = initial_version_row(settings.model_name, initial, settings.aggregation)
    locations.append(spark, MODEL_VERSIONS, [row], app_id=f"{settings.writer_id}:bootstrap", batch_id=0)
    return True


RECENT_BATCHES_KEPT = 100


class JobProgress:
    """Counts since start, written as JSON after every batch so operators (and the demo) can watch.

    ``recent_batches`` holds the last :data:`RECENT_BATCHES_KEPT` batches, each with its ``sequence`` (1, 2, ...
    since start, deadline flushes included), so a reader polling the file can tell whether it missed one.
    """

    def __init__(self, status_file: Path | None) -> None:
        self.status_file = status_file
        self.recent_batches: deque[dict[str, object]] = deque(maxlen=RECENT_BATCHES_KEPT)
        self.sequence = 0
        self.totals = {
            "batches": 0,
            "messages": 0,
            "accepted": 0,
            "rejected": 0,
            "versions": 0,
            "other_models": 0,
            "chunks": 0,
        }
        self.rejected_by_reason: dict[str, int] = {}
        self.last: BatchOutcome | None = None
        self.epsilon: float | None = None
        self.privacy: dict[str, object] | None = None
        self.largest_batch_message_bytes = 0

    def record(
        self,
        outcome: BatchOutcome,
        versions: Sequence[ModelVersionRow] = (),
        privacy_refusal: BudgetCheck | None = None,
    ) -> None:
        """Add one batch's outcome (the versions it made, a budget refusal) and rewrite the status file."""
        self.last = outcome
        self.sequence += 1
        finished_at = time.time()
        self.recent_batches.append(
            {
                "sequence": self.sequence,
                "batch_id": outcome.batch_id,
                "started_at": outcome.started_at or None,
                "finished_at": finished_at,
                "messages": outcome.messages,
                "accepted": outcome.accepted,
                "new_versions": len(outcome.new_versions),
                "current_version": outcome.current_version,
                "pending": outcome.pending,
                "seconds": outcome.seconds,
            }
        )
        self.largest_batch_message_bytes = max(self.largest_batch_message_bytes, outcome.message_bytes)
        if versions and versions[-1].epsilon is not None:
            self.epsilon = versions[-1].epsilon
        self._note_privacy(versions, privacy_refusal)
        self.totals["batches"] += outcome.batch_id >= 0
        self.totals["messages"] += outcome.messages
        self.totals["other_models"] += outcome.other_models
        self.totals["chunks"] += outcome.chunks
        self.totals["accepted"] += outcome.accepted
        self.totals["rejected"] += outcome.rejected
        self.totals["versions"] += len(outcome.new_versions)
        for reason, count in outcome.rejected_by_reason.items():
            self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + count
        if self.status_file is not None:
            document = {
                **self.totals,
                "rejected_by_reason": self.rejected_by_reason,
                "current_version": outcome.current_version,
                "pending": outcome.pending,
                "open_chunked_updates": outcome.open_chunked,
                "epsilon": self.epsilon,
                "privacy": self.privacy,
                "largest_batch_message_bytes": self.largest_batch_message_bytes,
                "last_batch": asdict(outcome),
                "batches_recorded": self.sequence,
                "recent_batches": list(self.recent_batches),
                "updated_at": datetime.fromtimestamp(finished_at, UTC).isoformat(),
                "pid": os.getpid(),
            }
            temporary = self.status_file.with_suffix(".tmp")
            temporary.write_text(json.dumps(document))
            temporary.replace(self.status_file)

    def _note_privacy(self, versions: Sequence[ModelVersionRow], refusal: BudgetCheck | None) -> None:
        """The status file's ``privacy``: epsilon, what it assumes, and whether the budget stopped training."""
        newest = versions[-1] if versions else None
        if newest is not None and newest.epsilon is not None:
            self.privacy = {
                "epsilon": newest.epsilon,
                "epsilon_assumption": newest.epsilon_assumption,
                "budget_exhausted": newest.privacy_budget_exhausted,
                "version": newest.version,
                "refusal": None,
            }
        if refusal is not None:
            self.privacy = {
                **(self.privacy or {}),
                "epsilon": refusal.spent,
                "budget_exhausted": True,
                "refusal": refusal.describe(),
            }


def run_job(
    settings: JobSettings,
    *,
    spark: SparkSession | None = None,
    stop: threading.Event | None = None,
    status_file: Path | None = None,
) -> None:
    """Run until ``stop`` is set, SIGTERM/SIGINT arrives or the query fails.

    With differential privacy and no configured ``dp_seed``, a secret noise seed is drawn here, once per start
    (:meth:`aggregator.AggregationConfig.with_secret_dp_seed`); every version's ``config_json`` records it.
    """
    from streaming_jobs.spark_session import get_spark

    settings = settings.model_copy(update={"aggregation": settings.aggregation.with_secret_dp_seed()})
    initial = checked_initial_model(settings)
    spark = spark or get_spark("fedstream-aggregation-job")
    locations = TableLocations(settings.tables_root, settings.catalog_schema)
    locations.ensure(spark, audit_window_days=settings.audit_window_days)
    bootstrap_initial_version(spark, settings, initial)
    if settings.enrol_public_keys_dir:
        from streaming_jobs.client_registry import enrol_new_keys, public_keys_in

        enrolled = enrol_new_keys(spark, locations, public_keys_in(settings.enrol_public_keys_dir))
        logger.info("enrolled %d client keys from %s", enrolled, settings.enrol_public_keys_dir)
    settings = _with_population(spark, locations, settings)
    publisher = VersionPublisher(settings, shard_source=_shard_source(spark, locations))
    progress = JobProgress(status_file)

    def report(versions: Sequence[ModelVersionRow], outcome: BatchOutcome) -> None:
        refusal = processor.state.privacy_refusal  # the budget held the buffer: say so in MLflow and the status
        if refusal is not None:
            publisher.record_budget_refusal(refusal)
        progress.record(outcome, versions, refusal)

    newest = _republish_newest(spark, settings, publisher)
    limits = intake_limits(
        _model_like(spark, locations, newest),
        kafka_max_message_bytes=settings.kafka.max_message_bytes,
        batch_bytes_budget=settings.batch_bytes_budget,
        max_offsets_per_trigger=settings.max_offsets_per_trigger,
        rejected_bytes_kept=settings.rejected_bytes_kept,
    )
    identity = resolve_checkpoint_identity(
        spark,
        settings.checkpoint_location,
        settings.writer_id,
        locations,
        UPDATES_TOPIC,
        partition_count=lambda: _partition_count(settings),
        model_name=settings.model_name,
    )
    logger.info("intake limits %s; checkpoint identity %s", limits, identity)
    processor = UpdateBatchProcessor(spark, settings, identity, limits, publish=publisher.publish, on_batch=report)
    stop = stop or threading.Event()
    _stop_on_signals(stop)
    query = (
        spark.readStream.format("kafka")
        .options(**settings.kafka.spark_source_options())
        .option("subscribe", UPDATES_TOPIC)
        .option("includeHeaders", "true")  # the model header: other models' messages are read past
        .option("startingOffsets", spark_starting_offsets(identity))
        .option("maxOffsetsPerTrigger", limits.max_offsets_per_trigger)
        .option("failOnDataLoss", "false")
        .load()
        .writeStream.queryName("fedstream-aggregation")
        .foreachBatch(processor.process_batch)
        .option("checkpointLocation", settings.checkpoint_location)
        .trigger(processingTime=f"{settings.trigger_interval_seconds} seconds")
        .start()
    )
    logger.info("fedstream job running: model %s, tables %s", settings.model_name, settings.tables_root)
    try:
        while query.isActive and not stop.is_set():
            query.awaitTermination(1)
            processor.flush_overdue()
        if stop.is_set():
            processor.finish_current_batch()  # stopping the query would cancel a batch's writes half-way
        failure = query.exception()
        if failure is not None and not stop.is_set():
            raise RuntimeError(f"the streaming query failed: {failure}")
        if failure is not None:
            logger.info("stopped; the query ended with: %s", str(failure).splitlines()[0])
    finally:
        if query.isActive:
            query.stop()
        publisher.close()


def _shard_source(spark: SparkSession, locations: TableLocations) -> ShardSource:
    """Where the publisher reads a version kept as shards: ``model_shards``, a few shards at a time."""

    def source(
        row: ModelVersionRow,
    ) -> tuple[Mapping[str, Sequence[int]], Callable[[], Iterable[npt.NDArray[np.float32]]]]:
        assert row.shards_key is not None
        shapes = version_shapes(spark, locations, row.model_name, row.version, row.shards_key)
        return shapes, version_values(spark, locations, row.model_name, row.version, row.shards_key)

    return source


def _model_like(spark: SparkSession, locations: TableLocations, row: ModelVersionRow) -> Mapping[str, npt.NDArray[Any]]:
    """The newest version's tensors, or for one kept as shards arrays of their shapes that hold no memory."""
    if row.shards_key is None:
        return decode_tensors(row.parameters)
    shapes = version_shapes(spark, locations, row.model_name, row.version, row.shards_key)
    return {name: np.broadcast_to(np.float32(0), tuple(shape)) for name, shape in shapes.items()}


def _republish_newest(spark: SparkSession, settings: JobSettings, publisher: VersionPublisher) -> ModelVersionRow:
    """Publish the newest version again on start: a crash may have come between its Delta write and Kafka.

    MLflow is caught up too: the versions up to this one that an unclean stop left unlogged or unregistered
    are queued for it, ahead of every version the stream makes, so the stream does not wait for MLflow.
    """
    locations = TableLocations(settings.tables_root, settings.catalog_schema)
    versions = locations.read(spark, MODEL_VERSIONS).where(F.col("model_name") == settings.model_name)
    row = _version_row(versions.orderBy(F.col("version").desc()).limit(1).collect()[0])

    def newer_than(logged: int | None, registered: int | None) -> list[ModelVersionRow]:
        oldest_missing = min(-1 if logged is None else logged, -1 if registered is None else registered)
        missing = versions.where((F.col("version") > oldest_missing) & (F.col("version") <= row.version))
        return [_version_row(found) for found in missing.collect()]

    publisher.backfill_mlflow(newer_than)
    publisher.send([row])
    return row


def _version_row(found: Row) -> ModelVersionRow:
    return ModelVersionRow.model_validate({**found.asDict(), **_aware_times(found.asDict())})


def _partition_count(settings: JobSettings) -> int:
    """Partitions of ``fl.updates`` (Spark needs all of them when a new checkpoint starts at given offsets)."""
    from kafka import KafkaConsumer

    from schemas.kafka_diagnosis import connect

    consumer = connect(settings.kafka, lambda: KafkaConsumer(**settings.kafka.consumer_options()))
    try:
        return len(consumer.partitions_for_topic(UPDATES_TOPIC) or {0})
    finally:
        consumer.close()


def _with_population(spark: SparkSession, locations: TableLocations, settings: JobSettings) -> JobSettings:
    """Settings whose DP sampling claim rests on the enrolled, unrevoked clients (``with_enrolled_population``).

    Only ``dp_participation="random_check_in"`` needs a population. The count is taken once, at start: restart
    the job after enrolling or revoking clients for a new one. Each version's ``config_json`` records it.
    """
    config = settings.aggregation
    if config.privacy is None or config.privacy.participation != "random_check_in":
        return settings
    from streaming_jobs.client_registry import enrolled_client_count

    enrolled = enrolled_client_count(spark, locations) if settings.require_signatures else None
    derived = config.with_enrolled_population(enrolled)
    population = None if derived.privacy is None else derived.privacy.population
    if enrolled is None:
        logger.warning(
            "dp_population %s is the operator's figure: without signatures no registry can check it", population
        )
    logger.info(
        "dp_participation random_check_in: population %s (%s enrolled, unrevoked clients), q = %d/%s",
        population,
        enrolled,
        derived.buffer.buffer_size,
        population,
    )
    return settings.model_copy(update={"aggregation": derived})


def _aware_times(values: dict[str, object]) -> dict[str, object]:
    """Timestamps as aware UTC datetimes: PySpark returns them naive, in the Python process's local time."""
    return {key: value.astimezone(UTC) for key, value in values.items() if isinstance(value, datetime)}


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s: stopping the job after the current batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
