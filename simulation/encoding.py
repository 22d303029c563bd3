"""A simulated update in a compressed encoding: the bytes a client sends, decoded as the streaming job decodes them.

A client with ``update_encoding`` float16 or int8 (``producers.client.FederatedClient``) sends its delta as
chunk messages (:func:`schemas.chunks.encode_update_chunks`, cut to the Kafka message limit); the job checks
each chunk (:func:`schemas.chunks.decode_update_chunk`) and decodes them to float32
(:func:`schemas.chunks.assemble_update`) before aggregating. :func:`decoded_by_job` runs exactly that round
trip, so the simulated server aggregates the values the job would. Float32 is not encoded at all: its
messages carry every value exactly.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final

from schemas.chunks import UpdateChunk, assemble_update, decode_update_chunk, encode_update_chunks
from schemas.messages import ClientMetrics, Encoding, UpdateHeader
from schemas.rejections import Rejection
from schemas.topics import MAX_MESSAGE_BYTES
from simulation.results import Weights

CREATED_AT: Final = datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
"""A fixed header time, with microseconds as a client's ``datetime.now`` has them: the header's length decides
the chunking, which must match a client's and not depend on the wall clock."""
UNSET_PAYLOAD_SHA256: Final = "0" * 64
"""The draft header's payload hash, which the chunk encoder replaces (as ``producers.updates`` does)."""


def update_header(
    client_id: str, model_name: str, *, sequence: int, base_version: int, sample_count: int, metrics: ClientMetrics
) -> UpdateHeader:
    """The header a client drafts for one update (its size decides the chunking, so it is the client's)."""
    return UpdateHeader(
        update_id=f"{sequence:032x}",
        client_id=client_id,
        model_name=model_name,
        base_version=base_version,
        sample_count=max(sample_count, 1),
        created_at=CREATED_AT,
        payload_sha256=UNSET_PAYLOAD_SHA256,
        metrics=metrics,
    )


def training_metrics(training_loss: float, training_steps: int) -> ClientMetrics:
    """The metrics a simulated client knows (no validation pass): a non-finite loss is left out, as headers need."""
    return ClientMetrics(
        training_loss=training_loss if math.isfinite(training_loss) else None, training_steps=training_steps
    )


def decoded_by_job(
    delta: Weights, header: UpdateHeader, encoding: Encoding, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> Weights:
    """``delta`` as the job decodes it from the client's chunk messages in ``encoding``; float32: ``delta`` itself.

    Raises ``ValueError`` when the delta cannot be sent so (a value float16 cannot carry, too large to chunk),
    as the client's encoder does, and ``RuntimeError`` if the job would reject the client's own chunks.
    """
    if encoding is Encoding.FLOAT32:
        return delta  # float32 messages carry every value exactly: no round trip, the default path unchanged
    messages = encode_update_chunks(header, delta, max_message_bytes=max_message_bytes, encoding=encoding)
    return assembled_delta(messages, header.client_id, max_message_bytes)


def assembled_delta(messages: list[bytes], client_id: str, max_message_bytes: int = MAX_MESSAGE_BYTES) -> Weights:
    """The float32 delta the job assembles from one update's chunk messages (keyed ``client_id``, as sent)."""
    chunks: list[UpdateChunk] = []
    for message in messages:
        chunk = decode_update_chunk(message, client_id.encode(), max_message_bytes)
        if isinstance(chunk, Rejection):
            raise RuntimeError(f"the job would reject a simulated client's chunk: {chunk}")
        chunks.append(chunk)
    update = assemble_update(chunks)
    if isinstance(update, Rejection):
        raise RuntimeError(f"the job would not assemble a simulated client's update: {update}")
    return update.delta
