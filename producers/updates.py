"""Build a client update from a model delta: one whole message, or chunk messages when it does not fit one."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

import numpy as np
import numpy.typing as npt

from schemas.chunks import decode_update_chunk, encode_update_chunks
from schemas.messages import ClientMetrics, Encoding, UpdateHeader
from schemas.rejections import Rejection
from schemas.tensors import Tensors
from schemas.wire import Signer, encode_update, tensors_payload

_UNSET_PAYLOAD_SHA256: Final = "0" * 64
"""A well-formed stand-in for the payload hash of a chunked update's header, which the chunk encoder sets."""


def model_delta(local: Mapping[str, npt.NDArray[np.float32]], base: Mapping[str, npt.NDArray[np.float32]]) -> Tensors:
    """``Δ = θ_local − θ_base`` for every parameter the global model has."""
    missing = sorted(set(base) - set(local))
    if missing:
        raise ValueError(f"the local model lacks global parameters {missing[:5]}")
    return {name: (local[name] - base[name]).astype(np.float32) for name in base}


def build_update(
    *,
    client_id: str,
    model_name: str,
    base_version: int,
    sample_count: int,
    delta: Mapping[str, npt.NDArray[np.float32]],
    metrics: ClientMetrics | None = None,
    update_id: str | None = None,
    signer: Signer | None = None,
) -> tuple[UpdateHeader, bytes]:
    """Return the header and the encoded ``fl.updates`` value of one update, signed by ``signer``."""
    payload, payload_hash = tensors_payload(delta)
    header = _header(client_id, model_name, base_version, sample_count, payload_hash, metrics, update_id)
    return header, encode_update(header, payload, signer)


def _header(
    client_id: str,
    model_name: str,
    base_version: int,
    sample_count: int,
    payload_sha256: str,
    metrics: ClientMetrics | None,
    update_id: str | None,
) -> UpdateHeader:
    """An update's header, created now, with a fresh update id unless one is given."""
    return UpdateHeader(
        update_id=update_id or uuid.uuid4().hex,
        client_id=client_id,
        model_name=model_name,
        base_version=base_version,
        sample_count=sample_count,
        created_at=datetime.now(UTC),
        payload_sha256=payload_sha256,
        metrics=metrics or ClientMetrics(),
    )


def build_chunked_update(
    *,
    client_id: str,
    model_name: str,
    base_version: int,
    sample_count: int,
    delta: Mapping[str, npt.NDArray[np.float32]],
    max_message_bytes: int,
    encoding: Encoding = Encoding.FLOAT32,
    metrics: ClientMetrics | None = None,
    update_id: str | None = None,
    signer: Signer | None = None,
) -> tuple[UpdateHeader, list[bytes]]:
    """Return the header (with its layout) and the ``fl.updates`` chunk values of one update, in index order.

    Every value is at most ``max_message_bytes``. ``ValueError`` when the delta cannot be cut to fit that
    limit (see :func:`schemas.chunks.chunk_elements_for`) or holds a value ``encoding`` cannot carry.
    """
    draft = _header(client_id, model_name, base_version, sample_count, _UNSET_PAYLOAD_SHA256, metrics, update_id)
    values = encode_update_chunks(draft, delta, max_message_bytes=max_message_bytes, encoding=encoding, signer=signer)
    # The encoder sets the layout and the payload hash: the header to return is the one every chunk carries.
    first = decode_update_chunk(values[0], client_id.encode(), max_message_bytes)
    if isinstance(first, Rejection):
        raise RuntimeError(f"a chunk just encoded does not decode: {first}")
    return first.header, values


def build_update_messages(
    *,
    client_id: str,
    model_name: str,
    base_version: int,
    sample_count: int,
    delta: Mapping[str, npt.NDArray[np.float32]],
    max_message_bytes: int,
    encoding: Encoding = Encoding.FLOAT32,
    metrics: ClientMetrics | None = None,
    update_id: str | None = None,
    signer: Signer | None = None,
) -> tuple[UpdateHeader, list[bytes]]:
    """The header and the ``fl.updates`` values of one update: one whole message when it can be, else chunks.

    Whole (a one-value list; the header has no layout) when ``encoding`` is float32 and the message fits
    ``max_message_bytes``; chunks in index order (the header has a layout) otherwise. Every value is at most
    ``max_message_bytes``; ``ValueError`` as :func:`build_chunked_update` raises it.
    """
    update_id = update_id or uuid.uuid4().hex
    # A payload alone over the limit cannot fit whole: no need to encode a large delta only to find that out.
    if encoding is Encoding.FLOAT32 and _float32_bytes(delta) < max_message_bytes:
        header, value = build_update(
            client_id=client_id,
            model_name=model_name,
            base_version=base_version,
            sample_count=sample_count,
            delta=delta,
            metrics=metrics,
            update_id=update_id,
            signer=signer,
        )
        if len(value) <= max_message_bytes:
            return header, [value]
    return build_chunked_update(
        client_id=client_id,
        model_name=model_name,
        base_version=base_version,
        sample_count=sample_count,
        delta=delta,
        max_message_bytes=max_message_bytes,
        encoding=encoding,
        metrics=metrics,
        update_id=update_id,
        signer=signer,
    )


def _float32_bytes(tensors: Mapping[str, npt.NDArray[np.float32]]) -> int:
    return sum(4 * int(np.size(array)) for array in tensors.values())
