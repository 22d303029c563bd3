"""Chunked updates in the job: which chunks to keep, which updates are now whole, which ran out of time.

A chunked update's chunks may arrive over several micro-batches, in any order, some twice. The job keeps every
well-formed, signed chunk in the ``update_chunks`` table (so a restart or a new checkpoint loses none) and, in
memory, only what it needs to decide: per open update, the indices it holds, when its first chunk arrived and
how many bytes it holds. :class:`ChunkAssembler` makes those decisions, and nothing else: the caller decodes
and authenticates chunks before, and reads, assembles and judges the whole updates after.

Deterministic given the state it is loaded with and the chunks it is shown, so a micro-batch replayed after a
crash decides the same: the deadline is measured in Kafka time (the broker's ``LogAppendTime`` of the batch's
newest message), not on the job's clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from schemas.chunks import UpdateChunk
from schemas.rejections import Rejection, RejectionReason

Source = TypeVar("Source")
"""Whatever a chunk came in: the job's Kafka message."""


@dataclass(frozen=True)
class ChunkLimits:
    """How long and how much the job holds for updates that are not whole yet."""

    deadline_seconds: float
    """An update still missing chunks this long after its first arrived is rejected as ``incomplete``."""
    max_open_per_client: int
    """Incomplete updates one client may have open at once; a chunk opening one more is refused."""
    max_open_bytes: int
    """Chunk bytes held for all incomplete updates together; a chunk beyond it is refused."""


@dataclass(frozen=True, order=True)
class ChunkPosition:
    """Where a chunk was read (ordered by time first): an expired update's rejection points at its first chunk."""

    timestamp: datetime
    topic: str
    partition: int
    offset: int


@dataclass
class OpenUpdate:
    """A chunked update some of whose chunks the job holds."""

    assembly_id: str
    update_id: str
    client_id: str
    chunk_count: int
    first: ChunkPosition
    """Its earliest chunk (by Kafka timestamp)."""
    indices: set[int] = field(default_factory=set)
    held_bytes: int = 0

    @property
    def whole(self) -> bool:
        """Every chunk is held."""
        return len(self.indices) == self.chunk_count


@dataclass(frozen=True)
class ArrivedChunk(Generic[Source]):
    """A decoded, authenticated chunk and the message it came in."""

    source: Source
    chunk: UpdateChunk
    position: ChunkPosition
    size: int


@dataclass(frozen=True)
class RefusedChunk(Generic[Source]):
    """A chunk the job does not keep, and why."""

    source: Source
    chunk: UpdateChunk
    problem: Rejection


@dataclass(frozen=True)
class WholeUpdate(Generic[Source]):
    """An update whose last missing chunk arrived in this batch."""

    assembly_id: str
    completing: Source
    """The message that made it whole: its Kafka position is the update's place in the batch."""
    arrived: tuple[UpdateChunk, ...]
    """Its chunks that came in this batch; the others are in ``update_chunks`` from earlier batches."""
    chunk_count: int

    @property
    def held_earlier(self) -> bool:
        """Some of its chunks came in earlier batches."""
        return len(self.arrived) < self.chunk_count


@dataclass
class ChunkStep(Generic[Source]):
    """What one batch's chunks come to."""

    kept: list[ArrivedChunk[Source]] = field(default_factory=list)
    """Chunks to append to ``update_chunks`` (every kept chunk, of whole updates too: the table is the record)."""
    whole: list[WholeUpdate[Source]] = field(default_factory=list)
    refused: list[RefusedChunk[Source]] = field(default_factory=list)
    expired: list[OpenUpdate] = field(default_factory=list)
    """Updates whose deadline passed without all their chunks: each becomes one ``incomplete`` rejection."""


class ChunkAssembler:
    """Tracks the open chunked updates of one model's job (loaded from ``update_chunks``, then kept up to date)."""

    def __init__(
        self,
        limits: ChunkLimits,
        open_updates: Iterable[OpenUpdate] = (),
        whole_assemblies: Iterable[str] = (),
        expired_update_ids: Iterable[str] = (),
    ) -> None:
        self.limits = limits
        self.open: dict[str, OpenUpdate] = {update.assembly_id: update for update in open_updates}
        self._whole = set(whole_assemblies)
        self._expired = set(expired_update_ids)

    @property
    def held_bytes(self) -> int:
        """Chunk bytes held for open updates."""
        return sum(update.held_bytes for update in self.open.values())

    def step(
        self,
        arrived: Sequence[ArrivedChunk[Source]],
        *,
        kafka_now: datetime | None,
        is_accepted: Callable[[str], bool],
    ) -> ChunkStep[Source]:
        """Take one batch's chunks in Kafka order, expiring what waited past the deadline in Kafka time.

        Each chunk is judged after the updates whose deadline passed before its own timestamp expired, and
        after the last chunk the updates whose deadline passed before ``kafka_now`` expire.

        ``kafka_now``: the newest Kafka timestamp of the batch's messages, chunks or not (None: expire nothing).
        ``is_accepted(update_id)`` says whether the job already accepted an update with that id (its chunks
        are then late copies).
        """
        step: ChunkStep[Source] = ChunkStep()
        this_batch: dict[str, list[UpdateChunk]] = {}
        per_client = Counter(update.client_id for update in self.open.values())
        held = self.held_bytes
        for item in arrived:
            # what expired before this chunk arrived is gone before it is judged: a late chunk never revives it
            expired = self._expire(item.position.timestamp)
            for gone in expired:
                per_client[gone.client_id] -= 1
                held -= gone.held_bytes
            step.expired += expired
            chunk, assembly_id = item.chunk, item.chunk.assembly_id
            problem = self._refusal(item, per_client, held, is_accepted)
            if problem is not None:
                step.refused.append(RefusedChunk(item.source, chunk, problem))
                continue
            update = self.open.get(assembly_id)
            if update is None:
                header = chunk.header
                update = OpenUpdate(
                    assembly_id, header.update_id, header.client_id, chunk.layout.chunk_count, item.position
                )
                self.open[assembly_id] = update
                per_client[update.client_id] += 1
            update.indices.add(chunk.index)
            update.held_bytes += item.size
            update.first = min(update.first, item.position)
            held += item.size
            step.kept.append(item)
            this_batch.setdefault(assembly_id, []).append(chunk)
            if update.whole:
                del self.open[assembly_id]
                self._whole.add(assembly_id)
                per_client[update.client_id] -= 1
                held -= update.held_bytes
                step.whole.append(
                    WholeUpdate(assembly_id, item.source, tuple(this_batch.pop(assembly_id)), update.chunk_count)
                )
        if kafka_now is not None:
            step.expired += self._expire(kafka_now)
        return step

    def _refusal(
        self, item: ArrivedChunk[Source], per_client: Counter[str], held: int, is_accepted: Callable[[str], bool]
    ) -> Rejection | None:
        chunk = item.chunk
        header = chunk.header
        if is_accepted(header.update_id):
            return Rejection(
                RejectionReason.DUPLICATE_UPDATE,
                f"chunk {chunk.index} of update {header.update_id}, which was accepted already",
            )
        if chunk.assembly_id in self._whole:
            return Rejection(
                RejectionReason.DUPLICATE_CHUNK, f"chunk {chunk.index} of update {header.update_id}, already whole"
            )
        if header.update_id in self._expired:
            return Rejection(
                RejectionReason.INCOMPLETE,
                f"chunk {chunk.index} of update {header.update_id}, which expired before all its chunks arrived",
            )
        update = self.open.get(chunk.assembly_id)
        if update is not None and chunk.index in update.indices:
            return Rejection(
                RejectionReason.DUPLICATE_CHUNK, f"chunk {chunk.index} of update {header.update_id} is held already"
            )
        if update is None and per_client[header.client_id] >= self.limits.max_open_per_client:
            return Rejection(
                RejectionReason.CHUNK_LIMIT,
                f"client {header.client_id} has {per_client[header.client_id]} incomplete updates open "
                f"(at most {self.limits.max_open_per_client})",
            )
        if held + item.size > self.limits.max_open_bytes:
            return Rejection(
                RejectionReason.CHUNK_LIMIT,
                f"holding chunk {chunk.index} of update {header.update_id} ({item.size} bytes) would take the "
                f"bytes held for incomplete updates past {self.limits.max_open_bytes}",
            )
        return None

    def _expire(self, kafka_now: datetime) -> list[OpenUpdate]:
        cutoff = kafka_now - timedelta(seconds=self.limits.deadline_seconds)
        expired = [update for update in self.open.values() if update.first.timestamp < cutoff]
        for update in expired:
            del self.open[update.assembly_id]
            self._expired.add(update.update_id)
        return sorted(expired, key=lambda update: (update.first, update.assembly_id))


def incomplete_detail(update: OpenUpdate, deadline_seconds: float) -> str:
    """The ``rejected_updates.detail`` of an update that expired: what arrived, what did not."""
    missing = sorted(set(range(update.chunk_count)) - update.indices)
    shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
    return (
        f"update {update.update_id} of client {update.client_id}: {len(update.indices)} of {update.chunk_count} "
        f"chunks arrived within {deadline_seconds:g} s of the first ({update.first.timestamp.isoformat()}); "
        f"missing {shown}"
    )
