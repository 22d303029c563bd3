"""The job's side of chunked updates: decode and authenticate each chunk, keep it, assemble whole updates.

Per micro-batch, :meth:`ChunkedUpdates.take` turns the batch's chunk messages into

- rows for ``update_chunks`` (every chunk kept: the record from which an update is assembled, after a restart
  too, and from which an auditor can check each chunk's signature);
- whole updates, each placed at the Kafka position of the chunk that completed it, for the intake to judge
  exactly as an update that came in one message;
- refused chunks, each with its reason, and updates that expired incomplete.

What it holds between batches (:class:`~streaming_jobs.chunk_assembly.ChunkAssembler`) is loaded from
``update_chunks`` and ``rejected_updates`` whenever the job's state is, so a replayed batch decides the same.

For a model kept as shards (aggregated on executors, :mod:`streaming_jobs.sharded_model`) no update is ever
assembled on the driver: each chunk's values are checked as it arrives (the model's tensors, finite values),
and a complete update goes to the intake without tensors, its values staying in ``update_chunks``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F  # noqa: N812

from aggregator import ShardPlan
from aggregator.intake import internal_error
from schemas.chunks import UpdateChunk, assemble_update, decode_chunk_body, decode_update_chunk
from schemas.rejections import Rejection, RejectionReason
from schemas.rows import UpdateChunkRow
from schemas.wire import DecodedUpdate
from streaming_jobs.chunk_assembly import ArrivedChunk, ChunkAssembler, ChunkLimits, ChunkPosition, OpenUpdate
from streaming_jobs.kafka_messages import KafkaMessage
from streaming_jobs.tables import REJECTED_UPDATES, UPDATE_CHUNKS, TableLocations

logger = logging.getLogger(__name__)

Authenticator = Callable[[DecodedUpdate], Rejection | None]


@dataclass
class ChunkOutcome:
    """What a batch's chunk messages came to."""

    kept: list[UpdateChunkRow] = field(default_factory=list)
    whole: list[tuple[KafkaMessage, DecodedUpdate | Rejection]] = field(default_factory=list)
    """Assembled updates (or why one could not be), each with the message that completed it."""
    refused: list[tuple[KafkaMessage, Rejection, DecodedUpdate | None]] = field(default_factory=list)
    """Chunks not kept: the problem and, where the chunk decoded, its header (for the rejection's ids)."""
    expired: list[OpenUpdate] = field(default_factory=list)


class ChunkedUpdates:
    """Chunk handling for one model's job, with what it holds loaded from Delta (as before ``before_batch``)."""

    def __init__(
        self,
        spark: SparkSession,
        locations: TableLocations,
        model_name: str,
        limits: ChunkLimits,
        *,
        max_message_bytes: int,
        authenticate: Authenticator | None,
        before_batch: int | None = None,
        kept_as_shards: ShardPlan | None = None,
    ) -> None:
        self.kept_as_shards = kept_as_shards
        self.spark = spark
        self.locations = locations
        self.model_name = model_name
        self.max_message_bytes = max_message_bytes
        self.authenticate = authenticate
        self.assembler = load_assembler(spark, locations, model_name, limits, before_batch=before_batch)

    @property
    def open_count(self) -> int:
        """Chunked updates some but not all of whose chunks the job holds."""
        return len(self.assembler.open)

    def take(
        self,
        messages: Sequence[KafkaMessage],
        *,
        kafka_now: datetime | None,
        is_accepted: Callable[[str], bool],
        batch_id: int,
        now: datetime,
    ) -> ChunkOutcome:
        """Decide on one batch's chunk messages (in Kafka order); ``kafka_now`` is the batch's newest timestamp."""
        outcome: ChunkOutcome = ChunkOutcome()
        arrived: list[ArrivedChunk[KafkaMessage]] = []
        verdicts: dict[str, Rejection | None] = {}  # one signature check per update
        for message in messages:
            chunk = self._decode(message, verdicts)
            if isinstance(chunk, tuple):
                outcome.refused.append((message, *chunk))
            else:
                arrived.append(ArrivedChunk(message, chunk, _position(message), message.size))
        step = self.assembler.step(arrived, kafka_now=kafka_now, is_accepted=is_accepted)
        outcome.kept = [_chunk_row(item.source, item.chunk, now, batch_id) for item in step.kept]
        outcome.refused += [(item.source, item.problem, item.chunk.as_unassembled_update()) for item in step.refused]
        outcome.expired = step.expired
        if self.kept_as_shards is not None:  # complete, each chunk checked: the values stay in update_chunks
            outcome.whole += [(whole.completing, whole.arrived[0].as_unassembled_update()) for whole in step.whole]
            return outcome
        held = self._read_held([whole.assembly_id for whole in step.whole if whole.held_earlier])
        for whole in step.whole:
            chunks = {chunk.index: chunk for chunk in held.get(whole.assembly_id, [])}
            chunks.update((chunk.index, chunk) for chunk in whole.arrived)
            outcome.whole.append((whole.completing, assemble_update(list(chunks.values()))))
        return outcome

    def _decode(
        self, message: KafkaMessage, verdicts: dict[str, Rejection | None]
    ) -> UpdateChunk | tuple[Rejection, DecodedUpdate | None]:
        try:
            return self._decode_and_authenticate(message, verdicts)
        except Exception as error:  # one chunk's failure is its own, never the batch's
            logger.exception("decoding the chunk at %s/%s raised", message.partition, message.offset)
            return internal_error(error), None

    def _decode_and_authenticate(
        self, message: KafkaMessage, verdicts: dict[str, Rejection | None]
    ) -> UpdateChunk | tuple[Rejection, DecodedUpdate | None]:
        chunk = decode_update_chunk(message.value, message.key, self.max_message_bytes)
        if isinstance(chunk, Rejection):
            return chunk, None
        header = chunk.as_unassembled_update()
        if chunk.header.model_name != self.model_name:
            problem = f"model {chunk.header.model_name!r}; this job aggregates {self.model_name!r}"
            return Rejection(RejectionReason.UNKNOWN_MODEL, problem), header
        if self.authenticate is not None:
            if chunk.assembly_id not in verdicts:
                verdicts[chunk.assembly_id] = self.authenticate(header)
            verdict = verdicts[chunk.assembly_id]
            if verdict is not None:
                return verdict, header
        if self.kept_as_shards is not None:
            refusal = values_problem(chunk, self.kept_as_shards)
            if refusal is not None:
                return refusal, header
        return chunk

    def _read_held(self, assembly_ids: list[str]) -> dict[str, list[UpdateChunk]]:
        """The chunks earlier batches kept of these updates, decoded again (their hashes checked again)."""
        if not assembly_ids:
            return {}
        rows = (
            self.locations.read(self.spark, UPDATE_CHUNKS)
            .where((F.col("model_name") == self.model_name) & F.col("assembly_id").isin(assembly_ids))
            .select("assembly_id", "value")
            .toArrow()
        )
        held: dict[str, list[UpdateChunk]] = {}
        for assembly_id, value in zip(
            rows.column("assembly_id").to_pylist(), rows.column("value").to_pylist(), strict=True
        ):
            chunk = decode_update_chunk(value)
            if isinstance(chunk, UpdateChunk):  # it decoded when it was kept; a later failure leaves a gap
                held.setdefault(assembly_id, []).append(chunk)
        return held


def values_problem(chunk: UpdateChunk, plan: ShardPlan) -> Rejection | None:
    """Why a chunk cannot be part of an update of the model ``plan`` cuts: other tensors, or non-finite values."""
    shapes = tuple((tensor.name, tuple(tensor.shape)) for tensor in chunk.layout.tensors)
    if shapes != plan.shapes:
        names = [name for name, _ in shapes]
        return Rejection(RejectionReason.SHAPE_MISMATCH, f"chunk layout names tensors {names[:5]} of other shapes")
    values = decode_chunk_body(chunk.layout, chunk.index, chunk.body)
    if isinstance(values, Rejection):
        return values
    finite = np.isfinite(values)
    if not finite.all():
        return Rejection(RejectionReason.NON_FINITE, f"chunk {chunk.index}: {int(finite.size - finite.sum())} NaN/Inf")
    return None


def load_assembler(
    spark: SparkSession,
    locations: TableLocations,
    model_name: str,
    limits: ChunkLimits,
    *,
    before_batch: int | None = None,
) -> ChunkAssembler:
    """The open chunked updates as ``update_chunks`` and ``rejected_updates`` record them (before ``before_batch``).

    An update is open while it misses chunks and has no ``incomplete`` rejection by this model's job.
    """
    chunks = locations.read(spark, UPDATE_CHUNKS).where(F.col("model_name") == model_name)
    rejected = locations.read(spark, REJECTED_UPDATES).where(
        (F.col("job_model") == model_name)
        & (F.col("reason") == RejectionReason.INCOMPLETE.value)
        & F.col("update_id").isNotNull()
    )
    if before_batch is not None:
        chunks = chunks.where(F.col("batch_id") != before_batch)
        rejected = rejected.where(F.col("batch_id") != before_batch)
    expired = set(rejected.select("update_id").toArrow().column("update_id").to_pylist())
    groups = (
        chunks.groupBy("assembly_id", "update_id", "client_id", "chunk_count")
        .agg(
            F.collect_set("chunk_index").alias("indices"),
            F.sum(F.length("value")).alias("held_bytes"),
            F.min(F.struct("kafka_timestamp", "kafka_topic", "kafka_partition", "kafka_offset")).alias("first"),
        )
        .collect()
    )
    whole, open_updates = [], []
    for group in groups:
        if len(group.indices) == group.chunk_count:
            whole.append(group.assembly_id)
        elif group.update_id not in expired:
            first = group.first
            position = ChunkPosition(
                _aware(first.kafka_timestamp), first.kafka_topic, first.kafka_partition, first.kafka_offset
            )
            open_updates.append(
                OpenUpdate(
                    group.assembly_id,
                    group.update_id,
                    group.client_id,
                    int(group.chunk_count),
                    position,
                    indices={int(index) for index in group.indices},
                    held_bytes=int(group.held_bytes),
                )
            )
    return ChunkAssembler(limits, open_updates, whole_assemblies=whole, expired_update_ids=expired)


def _position(message: KafkaMessage) -> ChunkPosition:
    return ChunkPosition(_aware(message.timestamp), message.topic, message.partition, message.offset)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _chunk_row(message: KafkaMessage, chunk: UpdateChunk, now: datetime, batch_id: int) -> UpdateChunkRow:
    return UpdateChunkRow(
        kafka_topic=message.topic,
        kafka_partition=message.partition,
        kafka_offset=message.offset,
        kafka_timestamp=_aware(message.timestamp),
        model_name=chunk.header.model_name,
        assembly_id=chunk.assembly_id,
        update_id=chunk.header.update_id,
        client_id=chunk.header.client_id,
        chunk_index=chunk.index,
        chunk_count=chunk.layout.chunk_count,
        key=message.key,
        value=message.value or b"",
        received_at=now,
        batch_id=batch_id,
    )
