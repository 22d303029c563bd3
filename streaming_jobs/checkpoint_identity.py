"""Which checkpoint the job runs on, so a new checkpoint can never make Delta skip its writes.

A replayed batch is recognised by its batch id: the job looks for this model's rows of that id in ``updates``
and ``model_versions``, and ``rejected_updates`` appends are idempotent per ``(txnAppId, txnVersion)`` =
(writer, batch id). Spark numbers micro-batches from 0 in every new checkpoint: with batch ids from 0 and one
constant writer id, a deleted or moved checkpoint would make the job take new batches for replays of old ones
and skip their writes as "already done" while their versions still went to Kafka.
So each checkpoint gets an identity of its own, written next to Spark's files the first time the job starts
on it: a writer id unique to the checkpoint, and the number its batch ids start from (one past the highest
batch id in the tables), so ``batch_id`` columns stay increasing across resets and a replay check by batch
id never matches an earlier checkpoint's rows. A new checkpoint over existing tables resumes ``fl.updates``
after the last offset the tables recorded, not from the topic's start.

A checkpoint made before identities existed keeps the configured writer id and batch ids from 0: that is
what its earlier writes used, so its replays are still skipped.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from pyspark.sql import SparkSession
from pyspark.sql import functions as F  # noqa: N812

from streaming_jobs.tables import MODEL_VERSIONS, REJECTED_UPDATES, UPDATE_CHUNKS, UPDATES, TableLocations

logger = logging.getLogger(__name__)

IDENTITY_FILE = "fedstream-checkpoint.json"


@dataclass(frozen=True)
class CheckpointIdentity:
    """The writer id and batch-id offset of one checkpoint."""

    writer_id: str
    """``txnAppId`` prefix of this checkpoint's Delta writes."""
    first_batch_id: int
    """Spark's micro-batch ``n`` is recorded as batch ``first_batch_id + n``."""
    created_at: str
    starting_offsets: dict[str, dict[str, int]] | None = None
    """Where a new checkpoint over existing tables began reading (Spark's ``startingOffsets`` JSON)."""

    def table_batch_id(self, spark_batch_id: int) -> int:
        """The batch id written to Delta (and used as ``txnVersion``) for Spark's micro-batch id."""
        return self.first_batch_id + spark_batch_id


def resolve_checkpoint_identity(
    spark: SparkSession,
    checkpoint_location: str,
    configured_writer_id: str,
    locations: TableLocations,
    topic: str,
    partition_count: Callable[[], int],
    model_name: str,
) -> CheckpointIdentity:
    """Read the checkpoint's identity, or give a new checkpoint one (and write it there before Spark starts).

    A new checkpoint over existing tables resumes ``topic`` after the last offset ``model_name``'s job recorded.
    """
    files = _CheckpointFiles(spark, checkpoint_location)
    existing = files.read(IDENTITY_FILE)
    if existing is not None:
        return CheckpointIdentity(**json.loads(existing))
    now = datetime.now(UTC).isoformat()
    if files.exists("offsets"):
        identity = CheckpointIdentity(writer_id=configured_writer_id, first_batch_id=0, created_at=now)
        logger.info("checkpoint %s predates checkpoint identities: keeping writer %s", checkpoint_location, identity)
    else:
        identity = CheckpointIdentity(
            writer_id=f"{configured_writer_id}:{uuid.uuid4().hex[:16]}",
            first_batch_id=_next_batch_id(spark, locations),
            created_at=now,
            starting_offsets=_resume_offsets(spark, locations, topic, partition_count, model_name),
        )
        logger.warning(
            "new checkpoint at %s: writer %s, batch ids from %d, reading %s from %s",
            checkpoint_location,
            identity.writer_id,
            identity.first_batch_id,
            topic,
            identity.starting_offsets or "the earliest offset",
        )
    files.write(IDENTITY_FILE, json.dumps(asdict(identity), sort_keys=True))
    return identity


def spark_starting_offsets(identity: CheckpointIdentity) -> str:
    """``startingOffsets`` for the Kafka source (used by Spark only when the checkpoint is new)."""
    return json.dumps(identity.starting_offsets) if identity.starting_offsets else "earliest"


def _next_batch_id(spark: SparkSession, locations: TableLocations) -> int:
    highest = -1
    for table in (UPDATES, REJECTED_UPDATES, MODEL_VERSIONS, UPDATE_CHUNKS):
        found = locations.read(spark, table).agg(F.max("batch_id")).collect()[0][0]
        if found is not None:
            highest = max(highest, int(found))
    return highest + 1


def _resume_offsets(
    spark: SparkSession,
    locations: TableLocations,
    topic: str,
    partition_count: Callable[[], int],
    model_name: str,
) -> dict[str, dict[str, int]] | None:
    """One past the highest offset this model's job recorded, per partition (-2: earliest).

    Its rows only: ``model_name``'s updates, the chunks of its chunked updates, and the rejections its job
    recorded (and rejections from before fedstream recorded which job made them). Another model's job may be
    ahead on the shared topic; resuming after its rows would skip this model's messages in between.
    """
    highest: dict[int, int] = {}
    mine = {
        UPDATES: F.col("model_name") == model_name,
        UPDATE_CHUNKS: F.col("model_name") == model_name,
        REJECTED_UPDATES: F.col("job_model").isNull() | (F.col("job_model") == model_name),
    }
    for table, recorded_by_this_job in mine.items():
        rows = (
            locations.read(spark, table)
            .where((F.col("kafka_topic") == topic) & recorded_by_this_job)
            .groupBy("kafka_partition")
            .agg(F.max("kafka_offset").alias("offset"))
            .collect()
        )
        for row in rows:
            highest[row.kafka_partition] = max(highest.get(row.kafka_partition, -1), int(row.offset))
    if not highest:
        return None
    # Spark requires every partition of the topic in a specific-offsets start.
    count = max(partition_count(), max(highest) + 1)
    return {
        topic: {str(partition): highest[partition] + 1 if partition in highest else -2 for partition in range(count)}
    }


class _CheckpointFiles:
    """Small files in the checkpoint folder, through Hadoop's file system (local, DBFS, volumes, cloud)."""

    def __init__(self, spark: SparkSession, location: str) -> None:
        jvm = spark._jvm  # Hadoop's FileSystem has no Python API
        if jvm is None:
            raise RuntimeError("the checkpoint identity needs a classic Spark session (not Spark Connect)")
        self._jvm = jvm
        self._root = jvm.org.apache.hadoop.fs.Path(location)
        self._fs = self._root.getFileSystem(spark._jsc.hadoopConfiguration())

    def _path(self, name: str):  # type: ignore[no-untyped-def]
        return self._jvm.org.apache.hadoop.fs.Path(self._root, name)

    def exists(self, name: str) -> bool:
        return bool(self._fs.exists(self._path(name)))

    def read(self, name: str) -> str | None:
        path = self._path(name)
        if not self._fs.exists(path):
            return None
        stream = self._fs.open(path)
        try:
            return str(self._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
        finally:
            stream.close()

    def write(self, name: str, text: str) -> None:
        self._fs.mkdirs(self._root)
        stream = self._fs.create(self._path(name), False)
        try:
            stream.write(bytearray(text.encode()))
        finally:
            stream.close()
