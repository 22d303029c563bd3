"""One micro-batch of ``fl.updates``: read, decode, judge (the pure intake step), write to Delta, publish.

The handler given to ``foreachBatch`` is :meth:`UpdateBatchProcessor.process_batch`. It reads the batch
(oversized messages told apart in Spark), skips messages an earlier attempt of the batch already recorded,
and hands the rest, in Kafka order, to :class:`aggregator.intake.Intake`, which judges each against the
server as it stands at that moment (so staleness is exact and a full buffer aggregates immediately) and
turns any exception into an ``internal_error`` rejection. Rows reach Delta in three appends, each made once
per batch (``updates``, ``rejected_updates``, ``model_versions``); a version is published once its append is
durable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812

from aggregator import PendingUpdate
from aggregator.intake import Intake, IntakeMessage, internal_error
from schemas.chunks import is_update_chunk
from schemas.rejections import Rejection, RejectionReason
from schemas.rows import ModelVersionRow, RejectedUpdateRow, UpdateChunkRow, UpdateRow
from schemas.tensors import sha256_hex
from schemas.topics import MODEL_HEADER
from schemas.wire import DecodedUpdate, decode_update
from streaming_jobs.aggregation import aggregate_ready_versions, version_rows
from streaming_jobs.checkpoint_identity import CheckpointIdentity
from streaming_jobs.chunk_assembly import ChunkLimits, OpenUpdate, incomplete_detail
from streaming_jobs.chunked_updates import ChunkedUpdates, ChunkOutcome
from streaming_jobs.client_registry import ClientRegistry
from streaming_jobs.faults import crash_point, inject_message_failure
from streaming_jobs.global_state import GlobalState, load_global_state
from streaming_jobs.intake_limits import MAX_KEY_BYTES, IntakeLimits
from streaming_jobs.kafka_messages import KafkaMessage
from streaming_jobs.settings import JobSettings
from streaming_jobs.tables import (
    MODEL_VERSIONS,
    REJECTED_UPDATES,
    UPDATE_CHUNKS,
    UPDATES,
    TableLocations,
    TableSpec,
)

logger = logging.getLogger(__name__)

PublishCallback = Callable[[Sequence[ModelVersionRow]], None]
"""Announces versions as soon as they are durable in ``model_versions`` (before the batch's other writes)."""
BatchCallback = Callable[[Sequence[ModelVersionRow], "BatchOutcome"], None]
"""Told of every finished batch (and deadline flush) with the versions it made."""


class JobStoppingError(RuntimeError):
    """A micro-batch that began after the job was told to stop; it is processed on the next start."""


@dataclass(frozen=True)
class BatchOutcome:
    """What one micro-batch did."""

    batch_id: int
    messages: int
    accepted: int
    rejected: int
    rejected_by_reason: dict[str, int]
    already_recorded: int
    new_versions: tuple[int, ...]
    current_version: int
    pending: int
    seconds: dict[str, float]
    """Where the batch's time went, by phase."""
    message_bytes: int = 0
    """Bytes of the messages brought into Python (oversized ones never are): bounded by the batch budget."""
    started_at: float = 0.0
    """When the handler began, epoch seconds (Spark's planning of the batch comes just before)."""
    other_models: int = 0
    """Messages read past because their ``fedstream-model`` header names another model (in no count above)."""
    chunks: int = 0
    """Of ``messages``, the chunks of chunked updates (each update counts once in ``accepted`` or ``rejected``)."""
    open_chunked: int = 0
    """Chunked updates still missing chunks after this batch."""


def _names_another_model(batch: DataFrame, model_name: str) -> Column:
    """True where the message's ``fedstream-model`` header names a model other than ``model_name``."""
    if "headers" not in batch.columns:  # a source read without includeHeaders: every message is judged
        return F.lit(False)
    mine = F.lit(model_name.encode())
    named_other = F.exists("headers", lambda header: (header["key"] == MODEL_HEADER) & (header["value"] != mine))
    return F.coalesce(named_other, F.lit(False))


def _kafka_messages(table: pa.Table) -> list[KafkaMessage]:
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    return [KafkaMessage(**dict(zip(columns, values, strict=True))) for values in zip(*columns.values(), strict=True)]


class UpdateBatchProcessor:
    """Holds the job's state between micro-batches; rebuilds it from Delta on start and after any failure."""

    def __init__(
        self,
        spark: SparkSession,
        settings: JobSettings,
        identity: CheckpointIdentity,
        limits: IntakeLimits,
        publish: PublishCallback | None = None,
        on_batch: BatchCallback | None = None,
    ) -> None:
        self.spark = spark
        self.settings = settings
        self.identity = identity
        self.limits = limits
        self.locations = TableLocations(settings.tables_root, settings.catalog_schema)
        self.publish = publish
        self.on_batch = on_batch
        self._state: GlobalState | None = None
        self._intake: Intake | None = None
        self._chunks: ChunkedUpdates | None = None
        self._fresh_state = True
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedstream-updates-writer")
        self.registry = (
            ClientRegistry(spark, self.locations, settings.registry_refresh_seconds)
            if settings.require_signatures
            else None
        )

    @property
    def state(self) -> GlobalState:
        """The current state, loaded from Delta on first use (with every update id ``updates`` holds)."""
        if self._state is None:
            self._load_state()
        assert self._state is not None
        return self._state

    def _load_state(self, before_batch: int | None = None) -> None:
        """Load the state (before ``before_batch`` wrote anything, to replay it) and the intake judging against it."""
        self._fresh_state = True
        state = load_global_state(
            self.spark,
            self.locations,
            self.settings.model_name,
            self.settings.aggregation,
            before_batch=before_batch,
            executor_min_parameters=self.settings.executor_aggregation_min_parameters,
            writer_id=self.identity.writer_id,
        )
        self._intake = Intake(
            state.server,
            self.settings.model_name,
            known_update_ids=self._all_update_ids(before_batch),
            authenticate=None if self.registry is None else self.registry.check,
            replay_window_seconds=self.settings.replay_window_seconds,
            before_judging=inject_message_failure,
        )
        self._chunks = ChunkedUpdates(
            self.spark,
            self.locations,
            self.settings.model_name,
            ChunkLimits(
                deadline_seconds=self.settings.chunk_deadline_seconds,
                max_open_per_client=self.settings.max_open_chunked_updates_per_client,
                max_open_bytes=self.settings.max_open_chunk_bytes,
            ),
            max_message_bytes=self.limits.max_update_bytes,
            authenticate=None if self.registry is None else self.registry.check,
            before_batch=before_batch,
            kept_as_shards=None if state.sharded is None else state.sharded.plan,
        )
        self._state = state

    @property
    def intake(self) -> Intake:
        """The intake step over the current state's server (made with the state, on first use)."""
        server = self.state.server
        if self._intake is None or self._intake.server is not server:
            raise RuntimeError("the intake is made with the state it judges against")
        return self._intake

    def process_batch(self, batch: DataFrame, spark_batch_id: int) -> None:
        """``foreachBatch`` handler: everything for one micro-batch, or an exception and a reload.

        Only a failure of the platform (Spark, Delta, Kafka) raises: a message whose processing raises
        becomes an ``internal_error`` rejection and the batch goes on, so no message can stop the job.
        """
        started_at = time.time()
        batch_id = self.identity.table_batch_id(spark_batch_id)
        self._refuse_when_stopping(batch_id)
        with self._lock:
            self._refuse_when_stopping(batch_id)
            try:
                outcome, versions = self._process(batch, batch_id)
                outcome = replace(outcome, started_at=started_at)
            except BaseException:
                self._state = None  # the next attempt starts again from what Delta holds
                raise
            logger.info("batch %s: %s", batch_id, outcome)
            if self.on_batch is not None:
                self.on_batch(versions, outcome)

    def finish_current_batch(self) -> None:
        """Let the batch in progress finish and refuse any later one: call before stopping the query.

        A refused batch raises :class:`JobStoppingError` before it reads anything, so Spark does not commit its
        offsets and the next start processes it.
        """
        self._stopping.set()
        with self._lock:
            pass

    def _refuse_when_stopping(self, batch_id: int) -> None:
        if self._stopping.is_set():
            raise JobStoppingError(f"the job is stopping: batch {batch_id} is left for the next start")

    def flush_overdue(self) -> list[ModelVersionRow]:
        """Aggregate a buffer whose oldest update waited ``max_wait_seconds``, when no micro-batch comes.

        Spark runs no micro-batch while ``fl.updates`` is quiet, so the deadline is checked from outside.
        The rows carry ``batch_id = -1`` and are written once per version number (``txnVersion``).
        """
        with self._lock:
            if self._state is None or not self._state.pending:
                return []
            started_at = time.time()
            clock = _PhaseClock()
            try:
                versions = aggregate_ready_versions(self._state, now=datetime.now(UTC), batch_id=-1, time_trigger=True)
                clock.lap("validate_aggregate")
                if versions:
                    crash_point("during_aggregation")
                    self.locations.append(
                        self.spark,
                        MODEL_VERSIONS,
                        versions,
                        app_id=f"{self.identity.writer_id}:deadline",
                        batch_id=versions[-1].version,
                    )
                    crash_point("after_versions_write")
                clock.lap("write_versions")
                if versions and self.publish is not None:
                    self.publish(versions)
                clock.lap("publish")
            except BaseException:
                self._state = None
                raise
            if versions and self.on_batch is not None:
                outcome = BatchOutcome(
                    batch_id=-1,
                    messages=0,
                    accepted=0,
                    rejected=0,
                    rejected_by_reason={},
                    already_recorded=0,
                    new_versions=tuple(row.version for row in versions),
                    current_version=self._state.version,
                    pending=len(self._state.pending),
                    seconds=clock.laps,
                    started_at=started_at,
                    open_chunked=self.chunks.open_count,
                )
                logger.info("buffer deadline: %s", outcome)
                self.on_batch(versions, outcome)
            return versions

    def _process(self, batch: DataFrame, batch_id: int) -> tuple[BatchOutcome, list[ModelVersionRow]]:
        clock = _PhaseClock()
        messages, oversized, other_models = self._read_messages(batch)
        clock.lap("read_kafka")
        outcome, versions = self._process_messages(messages, oversized, batch_id, clock)
        return replace(outcome, other_models=other_models), versions

    def _read_messages(self, batch: DataFrame) -> tuple[list[KafkaMessage], list[KafkaMessage], int]:
        """The batch's possible updates, its oversized messages (size and SHA-256 only), and others' count.

        Others are the messages whose ``fedstream-model`` header names another model.

        One pass over the batch, brought to Python as Arrow: an oversized message's bytes and another model's
        are dropped in Spark (only an oversized one's size and hash come back), so they never reach Python.
        """
        size = F.coalesce(F.length("value"), F.lit(0))
        fits = size <= self.limits.max_update_bytes
        other_model = _names_another_model(batch, self.settings.model_name)
        table = batch.select(
            F.substring("key", 1, MAX_KEY_BYTES).alias("key"),
            F.when(fits & ~other_model, F.col("value")).alias("value"),
            "topic",
            "partition",
            "offset",
            "timestamp",
            size.alias("size"),
            F.when(~fits & ~other_model, F.sha2("value", 256)).alias("sha256"),
            other_model.alias("other_model"),
        ).toArrow()
        read = sorted(_kafka_messages(table), key=_kafka_order)
        mine = [message for message in read if not message.other_model]
        return (
            [message for message in mine if message.sha256 is None],
            [message for message in mine if message.sha256 is not None],
            len(read) - len(mine),
        )

    def _process_messages(
        self, messages: list[KafkaMessage], oversized: list[KafkaMessage], batch_id: int, clock: _PhaseClock
    ) -> tuple[BatchOutcome, list[ModelVersionRow]]:
        """Judge, aggregate, then write: the versions (published as soon as they are durable) beside the updates.

        Crash ordering. The versions' append and the updates' and rejections' appends run side by side, so a
        crash can leave any of them durable and the others not; the batch returns (and Spark commits its
        offsets) only when all are. A batch that an earlier attempt began (``updates`` or ``model_versions``
        holds this model's rows of it: each append is one Delta commit, all of its rows or none) is replayed
        from the state *before* it: its versions and updates are left out of the loaded state, its messages
        judged again in the same order, and only the tables still missing its rows are written. Judging is
        deterministic given that state, so the replay accepts the same updates and makes the same versions.
        Where ``model_versions`` already holds the batch's versions they are the record, published or not:
        every update they name is written to ``updates`` even if the replay would now judge it otherwise (a key
        revoked between the attempts, say), and the state is reloaded from Delta after the batch.

        That check, made whenever the state is loaded afresh (a start, a failed attempt), is what writes
        ``updates`` and ``model_versions`` once: their appends carry no Delta transaction id, whose look-up was
        most of each commit's time. ``rejected_updates`` (rows without a trusted model to check by) keeps
        Delta's ``txnAppId``/``txnVersion``.
        """
        chunk_messages: list[KafkaMessage] = []
        whole_messages: list[KafkaMessage] = []
        for message in messages:
            (chunk_messages if is_update_chunk(message.value) else whole_messages).append(message)
        decoded_messages = [self._decode(message) for message in whole_messages]
        clock.lap("decode")
        # A micro-batch is replayed only after a restart or a failure, and both reload the state.
        written = self._tables_written_by(batch_id) if self._state is None or self._fresh_state else set()
        if written:
            self._load_state(before_batch=batch_id)
        state = self.state
        self._fresh_state = False
        if self.registry is not None:
            self.registry.refresh_if_due()
        clock.lap("load_state")
        now = datetime.now(UTC)
        kept = self.limits.rejected_bytes_kept
        chunked = self._take_chunks(chunk_messages, [*messages, *oversized], batch_id, now)
        # A model aggregated on executors reads its updates' values from update_chunks: they go first.
        chunks_first = state.sharded is not None
        if chunks_first and UPDATE_CHUNKS.name not in written:
            self._append_once(UPDATE_CHUNKS, chunked.kept)
        fresh = sorted(
            (
                IntakeMessage(message, decoded, _aware(message.timestamp))
                for message, decoded in [*zip(whole_messages, decoded_messages, strict=True), *chunked.whole]
            ),
            key=lambda item: _kafka_order(item.source),
        )

        def update_row(
            message: IntakeMessage[KafkaMessage], decoded: DecodedUpdate, update: PendingUpdate
        ) -> UpdateRow:
            return _update_row(message.source, decoded, now, batch_id)

        judged = self.intake.step(fresh, update_row, now=now)
        accepted = [item.record for item in judged.accepted]
        model = self.settings.model_name
        rejected = [
            _oversized_row(message, self.limits.max_update_bytes, now, batch_id, model) for message in oversized
        ]
        rejected += [
            _rejected_row(message, [problem], decoded, now, batch_id, kept, model)
            for message, problem, decoded in chunked.refused
        ]
        deadline = self.settings.chunk_deadline_seconds
        rejected += [_incomplete_row(update, deadline, now, batch_id, model) for update in chunked.expired]
        versions = version_rows(state, judged.versions, now=now, batch_id=batch_id)
        versions += aggregate_ready_versions(state, now=now, batch_id=batch_id, time_trigger=True)
        recorded_ids = self._recorded_version_update_ids(batch_id) if MODEL_VERSIONS.name in written else None
        unaccepted = (recorded_ids or set()) - {row.update_id for row in accepted}
        for item in judged.rejected:
            if item.decoded is not None and item.decoded.header.update_id in unaccepted:
                unaccepted.discard(item.decoded.header.update_id)  # the first copy only; a second is a duplicate
                logger.error(
                    "batch %s replay: update %s is in a recorded version but was judged %s now; it is kept",
                    batch_id,
                    item.decoded.header.update_id,
                    "; ".join(str(problem) for problem in item.problems),
                )
                accepted.append(_update_row(item.source, item.decoded, now, batch_id))
                continue
            rejected.append(_rejected_row(item.source, item.problems, item.decoded, now, batch_id, kept, model))
        clock.lap("validate_aggregate")
        if versions:
            crash_point("during_aggregation")
        # The versions and the updates are appended side by side; the versions go out as soon as theirs is durable.
        updates_written = self._writer.submit(
            self._append_updates,
            [] if UPDATES.name in written else accepted,
            rejected,
            batch_id,
            [] if UPDATE_CHUNKS.name in written or chunks_first else chunked.kept,
        )
        try:
            if recorded_ids is None:
                self._append_once(MODEL_VERSIONS, versions)
                if versions:
                    crash_point("after_versions_write")
                clock.lap("write_versions")
                if versions and self.publish is not None:
                    self.publish(versions)
                clock.lap("publish")
            else:
                versions = []  # recorded by the earlier attempt; the start re-published the newest
        finally:
            updates_written.result()  # the batch ends only when its updates are durable too
        clock.lap("write_updates")
        if written:
            self._state = None  # a replay: take the state as Delta now holds it
        outcome = BatchOutcome(
            batch_id=batch_id,
            messages=len(messages) + len(oversized),
            accepted=len(accepted),
            rejected=len(rejected),
            rejected_by_reason=dict(Counter(row.reason for row in rejected)),
            already_recorded=len(accepted) if UPDATES.name in written else 0,
            new_versions=tuple(row.version for row in versions),
            current_version=self.state.version,
            pending=len(self.state.pending),
            seconds=clock.laps,
            message_bytes=sum(message.size for message in messages),
            chunks=len(chunk_messages),
            open_chunked=self.chunks.open_count,
        )
        return outcome, versions

    def _decode(self, message: KafkaMessage) -> DecodedUpdate | Rejection:
        try:
            return decode_update(_bytes(message.value), _bytes(message.key), self.limits.max_update_bytes)
        except Exception as error:  # decoding is meant never to raise; if it does, only this message fails
            logger.exception("decoding message %s/%s raised", message.partition, message.offset)
            return internal_error(error)

    @property
    def chunks(self) -> ChunkedUpdates:
        """The chunked updates' handling (made with the state, on first use)."""
        self.state  # noqa: B018 -- loading the state makes it
        assert self._chunks is not None
        return self._chunks

    def _take_chunks(
        self, chunk_messages: list[KafkaMessage], batch: list[KafkaMessage], batch_id: int, now: datetime
    ) -> ChunkOutcome:
        """Keep, refuse or assemble the batch's chunks; expire chunked updates past their deadline in Kafka time."""
        kafka_now = max((_aware(message.timestamp) for message in batch), default=None)
        known = self.intake.known_update_ids
        return self.chunks.take(
            chunk_messages, kafka_now=kafka_now, is_accepted=known.__contains__, batch_id=batch_id, now=now
        )

    def _append_updates(
        self,
        accepted: Sequence[UpdateRow],
        rejected: Sequence[RejectedUpdateRow],
        batch_id: int,
        chunks: Sequence[UpdateChunkRow] = (),
    ) -> None:
        """Append the kept chunks and the accepted updates (none where an earlier attempt did), then rejections."""
        self._append_once(UPDATE_CHUNKS, chunks)
        self._append_once(UPDATES, accepted)
        if accepted:
            crash_point("after_updates_write")
        # Delta skips a (writer, batch) it already committed: a replay finds no model in these rows to check by.
        self.locations.append(self.spark, REJECTED_UPDATES, rejected, app_id=self.identity.writer_id, batch_id=batch_id)

    def _append_once(self, table: TableSpec, rows: Sequence[UpdateRow | ModelVersionRow | UpdateChunkRow]) -> None:
        """Append rows of a batch that ``table`` does not hold yet (the replay check found none)."""
        self.locations.append(self.spark, table, rows, app_id=None, batch_id=None)

    def _tables_written_by(self, batch_id: int) -> set[str]:
        """Of ``updates`` and ``model_versions``, those holding this model's rows of ``batch_id`` (a replay).

        Filtered by model: jobs of other models may share the tables and their batch ids (each checkpoint's
        batch ids start past the tables' highest, so an earlier checkpoint's rows never match). The batch's
        appends to these two tables are skipped where this finds rows. ``rejected_updates`` (rows without a
        model) needs no look-up: it changes no state, and Delta skips its replayed append.
        """
        written = set()
        for table in (UPDATES, MODEL_VERSIONS, UPDATE_CHUNKS):
            rows = self.locations.read(self.spark, table).where(
                (F.col("batch_id") == batch_id) & (F.col("model_name") == self.settings.model_name)
            )
            if rows.limit(1).count():
                written.add(table.name)
        return written

    def _all_update_ids(self, before_batch: int | None = None) -> set[str]:
        """Every ``update_id`` in ``updates`` (all models; without this model's ``before_batch`` rows when given).

        Read once per state load, then kept up to date by the intake.
        """
        updates = self.locations.read(self.spark, UPDATES)
        if before_batch is not None:
            updates = updates.where(
                (F.col("batch_id") != before_batch) | (F.col("model_name") != self.settings.model_name)
            )
        table = updates.select("update_id").toArrow()
        return set(table.column("update_id").to_pylist())

    def _recorded_version_update_ids(self, batch_id: int) -> set[str]:
        """The update ids named by the versions ``model_versions`` already holds for ``batch_id``."""
        found = (
            self.locations.read(self.spark, MODEL_VERSIONS)
            .where((F.col("model_name") == self.settings.model_name) & (F.col("batch_id") == batch_id))
            .select(F.explode("update_ids").alias("update_id"))
            .toArrow()
        )
        return set(found.column("update_id").to_pylist())


class _PhaseClock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[phase] = round(self.laps.get(phase, 0.0) + now - self._last, 4)
        self._last = now


def _bytes(value: bytearray | bytes | None) -> bytes | None:
    return None if value is None else bytes(value)


def _kafka_fields(message: KafkaMessage) -> dict[str, object]:
    return {
        "kafka_topic": message.topic,
        "kafka_partition": message.partition,
        "kafka_offset": message.offset,
        "kafka_timestamp": _aware(message.timestamp),
    }


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _update_row(message: KafkaMessage, decoded: DecodedUpdate, now: datetime, batch_id: int) -> UpdateRow:
    header = decoded.header
    return UpdateRow(
        **_kafka_fields(message),  # type: ignore[arg-type]
        update_id=header.update_id,
        client_id=header.client_id,
        model_name=header.model_name,
        base_version=header.base_version,
        sample_count=header.sample_count,
        payload_sha256=decoded.payload_sha256,
        payload=decoded.payload,
        signature=decoded.signature,
        validation_loss=header.metrics.validation_loss,
        validation_accuracy=header.metrics.validation_accuracy,
        validation_count=header.metrics.validation_count,
        training_loss=header.metrics.training_loss,
        training_steps=header.metrics.training_steps,
        client_created_at=header.created_at,
        received_at=now,
        batch_id=batch_id,
    )


def _kafka_order(message: KafkaMessage) -> tuple[int, int]:
    return message.partition, message.offset


def _rejected_row(
    message: KafkaMessage,
    problems: Sequence[Rejection],
    decoded: DecodedUpdate | None,
    now: datetime,
    batch_id: int,
    bytes_kept: int,
    job_model: str,
) -> RejectedUpdateRow:
    """The rejection row of one message (by ``job_model``'s job); at most ``bytes_kept`` leading bytes are stored."""
    value = _bytes(message.value)
    size = len(value or b"")
    detail = "; ".join(str(problem) for problem in problems)
    if value is not None and size > bytes_kept:
        detail = f"{detail} [raw_value keeps the first {bytes_kept} of {size} bytes; sha256 {sha256_hex(value)}]"
        value = value[:bytes_kept]
    return RejectedUpdateRow(
        **_kafka_fields(message),  # type: ignore[arg-type]
        reason=problems[0].reason.value,
        detail=detail[:2000],
        all_reasons=sorted({problem.reason.value for problem in problems}),
        update_id=decoded.header.update_id if decoded else None,
        client_id=decoded.header.client_id if decoded else None,
        key=_bytes(message.key),
        raw_value=value,
        raw_size=size,
        rejected_at=now,
        batch_id=batch_id,
        job_model=job_model,
    )


def _oversized_row(
    message: KafkaMessage, limit: int, now: datetime, batch_id: int, job_model: str
) -> RejectedUpdateRow:
    """An oversized message, recognised in Spark: its size and SHA-256 are kept, never its bytes."""
    return RejectedUpdateRow(
        **_kafka_fields(message),  # type: ignore[arg-type]
        reason=RejectionReason.OVERSIZED.value,
        detail=(
            f"{message.size} bytes exceeds {limit}, the largest update this model can have; sha256 {message.sha256}"
        ),
        all_reasons=[RejectionReason.OVERSIZED.value],
        update_id=None,
        client_id=None,
        key=_bytes(message.key),
        raw_value=None,
        raw_size=message.size,
        rejected_at=now,
        batch_id=batch_id,
        job_model=job_model,
    )


def _incomplete_row(
    update: OpenUpdate, deadline_seconds: float, now: datetime, batch_id: int, job_model: str
) -> RejectedUpdateRow:
    """The rejection of a chunked update that expired incomplete: it points at its first chunk."""
    return RejectedUpdateRow(
        kafka_topic=update.first.topic,
        kafka_partition=update.first.partition,
        kafka_offset=update.first.offset,
        kafka_timestamp=update.first.timestamp,
        reason=RejectionReason.INCOMPLETE.value,
        detail=incomplete_detail(update, deadline_seconds)[:2000],
        all_reasons=[RejectionReason.INCOMPLETE.value],
        update_id=update.update_id,
        client_id=update.client_id,
        key=update.client_id.encode(),
        raw_value=None,
        raw_size=update.held_bytes,
        rejected_at=now,
        batch_id=batch_id,
        job_model=job_model,
    )
