"""The job's decisions on chunked updates, as a pure step: keep, refuse, make whole, expire in Kafka time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np

from schemas.chunks import UpdateChunk, decode_update_chunk, encode_update_chunks
from schemas.messages import UpdateHeader
from streaming_jobs.chunk_assembly import ArrivedChunk, ChunkAssembler, ChunkLimits, ChunkPosition

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LIMITS = ChunkLimits(deadline_seconds=60, max_open_per_client=2, max_open_bytes=10**9)


def _chunks(client_id: str = "alice", values: int = 3000) -> list[UpdateChunk]:
    header = UpdateHeader(
        update_id=uuid.uuid4().hex,
        client_id=client_id,
        model_name="m",
        base_version=0,
        sample_count=3,
        created_at=T0,
        payload_sha256="0" * 64,
    )
    delta = {"w": np.arange(values, dtype=np.float32)}
    decoded = [decode_update_chunk(value) for value in encode_update_chunks(header, delta, max_message_bytes=4096)]
    assert all(isinstance(chunk, UpdateChunk) for chunk in decoded)
    return decoded  # type: ignore[return-value]


def _arrived(chunk: UpdateChunk, seconds: float, offset: int = 0) -> ArrivedChunk[int]:
    position = ChunkPosition(T0 + timedelta(seconds=seconds), "fl.updates", 0, offset)
    return ArrivedChunk(offset, chunk, position, len(chunk.body) + 200)


def _never_accepted(update_id: str) -> bool:
    return False


def test_chunks_over_several_batches_in_any_order_make_one_whole_update_once() -> None:
    chunks = _chunks()
    assert len(chunks) >= 3
    assembler = ChunkAssembler(LIMITS)
    first = assembler.step(
        [_arrived(chunks[-1], 0, 1), _arrived(chunks[0], 1, 2)], kafka_now=T0, is_accepted=_never_accepted
    )
    assert len(first.kept) == 2 and not first.whole and not first.refused
    assert len(assembler.open) == 1

    rest = [_arrived(chunk, 2, 10 + index) for index, chunk in enumerate(chunks[1:-1])]
    again = _arrived(chunks[0], 3, 99)
    second = assembler.step([*rest, again], kafka_now=T0, is_accepted=_never_accepted)
    assert [whole.completing for whole in second.whole] == [rest[-1].source], "placed at its completing chunk"
    assert second.whole[0].held_earlier and len(second.whole[0].arrived) == len(rest)
    assert [refused.problem.reason for refused in second.refused] == ["duplicate_chunk"], "late copy of chunk 0"
    assert not assembler.open


def test_an_update_missing_chunks_expires_once_in_kafka_time_and_its_late_chunks_are_refused() -> None:
    chunks = _chunks()
    assembler = ChunkAssembler(LIMITS)
    assembler.step([_arrived(chunks[0], 0)], kafka_now=T0, is_accepted=_never_accepted)
    quiet = assembler.step([], kafka_now=T0 + timedelta(seconds=59), is_accepted=_never_accepted)
    assert not quiet.expired, "not before its deadline"
    later = assembler.step([], kafka_now=T0 + timedelta(seconds=61), is_accepted=_never_accepted)
    assert [update.update_id for update in later.expired] == [chunks[0].header.update_id]
    assert later.expired[0].indices == {0}
    late = assembler.step([_arrived(chunks[1], 62)], kafka_now=T0 + timedelta(seconds=62), is_accepted=_never_accepted)
    assert [refused.problem.reason for refused in late.refused] == ["incomplete"]
    assert not late.expired and not assembler.open


def test_open_updates_are_bounded_per_client_and_in_bytes() -> None:
    assembler = ChunkAssembler(ChunkLimits(deadline_seconds=60, max_open_per_client=2, max_open_bytes=10**9))
    third = _chunks()[0]
    step = assembler.step(
        [_arrived(_chunks()[0], 0), _arrived(_chunks()[0], 0), _arrived(third, 0), _arrived(_chunks("bob")[0], 0)],
        kafka_now=T0,
        is_accepted=_never_accepted,
    )
    assert [refused.chunk for refused in step.refused] == [third]
    assert step.refused[0].problem.reason == "chunk_limit" and "alice" in step.refused[0].problem.detail

    arrived = [_arrived(chunk, 0) for chunk in _chunks()[:3]]
    budget = arrived[0].size + arrived[1].size + arrived[2].size // 2
    small = ChunkAssembler(ChunkLimits(deadline_seconds=60, max_open_per_client=9, max_open_bytes=budget))
    step = small.step(arrived, kafka_now=T0, is_accepted=_never_accepted)
    assert len(step.kept) == 2 and [refused.problem.reason for refused in step.refused] == ["chunk_limit"]
    assert small.held_bytes <= budget


def test_chunks_of_an_accepted_update_are_refused_as_duplicates() -> None:
    chunks = _chunks()
    assembler = ChunkAssembler(LIMITS)
    step = assembler.step(
        [_arrived(chunks[0], 0)], kafka_now=T0, is_accepted=lambda update_id: update_id == chunks[0].header.update_id
    )
    assert [refused.problem.reason for refused in step.refused] == ["duplicate_update"] and not assembler.open


def test_a_loaded_assembler_continues_where_the_table_left_off() -> None:
    chunks = _chunks()
    before = ChunkAssembler(LIMITS)
    before.step([_arrived(chunks[0], 0)], kafka_now=T0, is_accepted=_never_accepted)
    reloaded = ChunkAssembler(LIMITS, before.open.values())
    step = reloaded.step([_arrived(chunk, 1) for chunk in chunks[1:]], kafka_now=T0, is_accepted=_never_accepted)
    assert len(step.whole) == 1 and step.whole[0].held_earlier
