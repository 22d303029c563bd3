"""Property tests: decoding and assembling chunks turn any input into data (a chunk, an update) or a rejection.

Hostile chunk values (random bytes, truncations, bit flips, length fields and indices at the uint32 edges,
int8 scales and float16 bit patterns of every kind, layouts at their limits) must never raise.
"""

from __future__ import annotations

import contextlib
import json
import struct
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.chunks import (
    MAX_CHUNK_HEADER_BYTES,
    MODEL_CHUNK_MAGIC,
    UPDATE_CHUNK_MAGIC,
    ModelChunk,
    UpdateChunk,
    assemble_model,
    assemble_update,
    chunks_root,
    decode_chunk_body,
    decode_model_chunk,
    decode_update_chunk,
    encode_model_chunks,
    encode_update_chunks,
)
from schemas.messages import MAX_CHUNKS, MAX_TENSORS, ChunkLayout, Encoding
from schemas.rejections import Rejection, RejectionReason
from schemas.tensors import sha256_hex
from schemas.wire import SIGNATURE_BYTES, UNSIGNED, DecodedModel, DecodedUpdate
from tests.unit.test_schemas_chunks import CLIENT_KEY, HEADER, KEY, MODEL_HEADER, tensors

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
MESSAGES = encode_update_chunks(HEADER, tensors(size=2000), max_message_bytes=4096, signer=CLIENT_KEY.sign)
MODEL_MESSAGES = encode_model_chunks(MODEL_HEADER, tensors(size=2000), max_message_bytes=4096)
assert len(MESSAGES) >= 3 and len(MODEL_MESSAGES) >= 3
HEADER_FIELDS = json.loads(MESSAGES[0][8 : 8 + struct.unpack(">I", MESSAGES[0][4:8])[0]])


def verifies(signature: bytes, signed: bytes) -> bool:
    try:
        CLIENT_KEY.public_key().verify(signature, signed)
    except InvalidSignature:
        return False
    return True


def decode(value: bytes | None) -> UpdateChunk | Rejection:
    result = decode_update_chunk(value, KEY, 8192)
    return checked(result, UpdateChunk)


def decode_model(value: bytes | None) -> ModelChunk | Rejection:
    return checked(decode_model_chunk(value, 8192), ModelChunk)


def checked(result: Any, kind: type) -> Any:
    assert isinstance(result, kind | Rejection), type(result)
    if isinstance(result, Rejection):
        assert isinstance(result.reason, RejectionReason) and isinstance(result.detail, str)
    return result


def chunk_value(header: dict[str, Any] | bytes, index: int, body: bytes, magic: bytes = UPDATE_CHUNK_MAGIC) -> bytes:
    header_json = header if isinstance(header, bytes) else json.dumps(header).encode()
    return magic + struct.pack(">I", len(header_json)) + header_json + UNSIGNED + struct.pack(">I", index) + body


def header_for(layout: dict[str, Any], fields: dict[str, Any] = HEADER_FIELDS) -> dict[str, Any]:
    return {**fields, "layout": layout, "payload_sha256": chunks_root(layout["chunk_sha256"])}


def one_tensor_layout(encoding: Encoding, values: int, body: bytes) -> dict[str, Any]:
    return {
        "encoding": encoding.value,
        "tensors": [{"name": "v", "shape": [values]}],
        "chunk_elements": values,
        "chunk_sha256": [sha256_hex(body)],
    }


# --- arbitrary bytes and framing -----------------------------------------------------------------------------------


@settings(FAST, max_examples=500)
@given(st.binary(max_size=1024))
def test_arbitrary_bytes_are_rejected(value: bytes) -> None:
    assert isinstance(decode(value), Rejection)
    assert isinstance(decode(UPDATE_CHUNK_MAGIC + value), Rejection)
    assert isinstance(decode_model(MODEL_CHUNK_MAGIC + value), Rejection)


@settings(FAST, max_examples=300)
@given(
    st.sampled_from([0, 1, MAX_CHUNK_HEADER_BYTES, MAX_CHUNK_HEADER_BYTES + 1, 2**31, 2**32 - 1])
    | st.integers(0, 2**32 - 1),
    st.binary(max_size=512),
)
def test_header_lengths_at_the_uint32_edges_are_rejected(length: int, rest: bytes) -> None:
    result = decode(UPDATE_CHUNK_MAGIC + struct.pack(">I", length) + rest)
    assert isinstance(result, Rejection)


@settings(FAST, max_examples=300)
@given(st.sampled_from(range(len(MESSAGES))), st.data())
def test_every_truncation_is_rejected(which: int, data: st.DataObject) -> None:
    message = MESSAGES[which]
    length = data.draw(st.integers(0, len(message) - 1))
    assert isinstance(decode(message[:length]), Rejection)


@settings(FAST, max_examples=1000)
@given(st.sampled_from(range(len(MESSAGES))), st.data())
def test_a_bit_flip_never_yields_a_chunk_whose_signature_verifies(which: int, data: st.DataObject) -> None:
    message = MESSAGES[which]
    bit = data.draw(st.integers(0, 8 * len(message) - 1))
    flipped = bytearray(message)
    flipped[bit // 8] ^= 1 << (bit % 8)
    result = decode(bytes(flipped))
    if isinstance(result, UpdateChunk):
        # only the header JSON (to another valid header) or the signature can change and still decode
        header_end = 8 + struct.unpack(">I", message[4:8])[0]
        assert 8 <= bit // 8 < header_end + SIGNATURE_BYTES
        assert result.body == decode(message).body  # type: ignore[union-attr]
        assert not verifies(result.signature, result.signed_bytes)
        others = [decode(value) for index, value in enumerate(MESSAGES) if index != which]
        assembled = checked(assemble_update([*others, result]), DecodedUpdate)  # type: ignore[list-item]
        assert isinstance(assembled, Rejection), "another assembly_id than its siblings"


@settings(FAST, max_examples=300)
@given(st.sampled_from([0, 1, 2, len(MESSAGES) - 1, len(MESSAGES), 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1))
def test_indices_at_the_edges(index: int) -> None:
    message = MESSAGES[0]
    position = 8 + struct.unpack(">I", message[4:8])[0] + SIGNATURE_BYTES
    result = decode(message[:position] + struct.pack(">I", index) + message[position + 4 :])
    if index == 0:
        assert isinstance(result, UpdateChunk)
    elif index >= len(MESSAGES):
        assert isinstance(result, Rejection) and result.reason is RejectionReason.MALFORMED_ENVELOPE
    else:
        assert isinstance(result, Rejection) and result.reason is RejectionReason.PAYLOAD_HASH_MISMATCH


@settings(FAST, max_examples=300)
@given(st.sampled_from(range(len(MODEL_MESSAGES))), st.data())
def test_model_chunk_mutations_never_raise(which: int, data: st.DataObject) -> None:
    message = bytearray(MODEL_MESSAGES[which])
    for position, value in data.draw(st.lists(st.tuples(st.integers(0, len(message) - 1), st.integers(0, 255)))):
        message[position] = value
    result = decode_model(bytes(message))
    if isinstance(result, ModelChunk):
        others = [decode_model(value) for index, value in enumerate(MODEL_MESSAGES) if index != which]
        checked(assemble_model([*others, result]), DecodedModel)  # type: ignore[list-item]


# --- body contents -------------------------------------------------------------------------------------------------

special_scales = st.sampled_from(
    [float("nan"), float("inf"), float("-inf"), -1.0, -0.0, 0.0, 1e-45, 1e-40, float(np.finfo(np.float32).max)]
) | st.floats(width=32)


@settings(FAST, max_examples=300)
@given(special_scales, st.binary(min_size=1, max_size=16))
def test_int8_bodies_with_any_scale(scale: float, values: bytes) -> None:
    body = struct.pack("<f", scale) + values
    result = decode(chunk_value(header_for(one_tensor_layout(Encoding.INT8, len(values), body)), 0, body))
    if np.isfinite(scale) and scale >= 0:
        assert isinstance(result, UpdateChunk), str(result)
        assembled = checked(assemble_update([result]), DecodedUpdate)
        assert isinstance(assembled, DecodedUpdate), str(assembled)
        assert assembled.delta["v"].dtype == np.float32 and assembled.delta["v"].shape == (len(values),)
    else:
        assert isinstance(result, Rejection) and result.reason is RejectionReason.MALFORMED_PAYLOAD


float16_specials = st.sampled_from([0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFFFF, 0x0001, 0x8000, 0x7BFF]) | st.integers(
    0, 0xFFFF
)


@settings(FAST, max_examples=300)
@given(st.lists(float16_specials, min_size=1, max_size=8))
def test_float16_bodies_with_any_bit_pattern_decode(patterns: list[int]) -> None:
    body = struct.pack(f"<{len(patterns)}H", *patterns)
    result = decode(chunk_value(header_for(one_tensor_layout(Encoding.FLOAT16, len(patterns), body)), 0, body))
    assert isinstance(result, UpdateChunk), str(result)
    assembled = assemble_update([result])
    assert isinstance(assembled, DecodedUpdate), str(assembled)
    expected = np.frombuffer(body, dtype="<f2").astype(np.float32)
    assert assembled.delta["v"].dtype == np.float32
    assert assembled.delta["v"].tobytes() == expected.tobytes()  # non-finite values pass; validation rejects them


@settings(FAST, max_examples=300)
@given(st.sampled_from(list(Encoding)), st.integers(1, 6), st.binary(max_size=40))
def test_bodies_of_any_length_decode_or_are_malformed(encoding: Encoding, values: int, body: bytes) -> None:
    layout = ChunkLayout.model_validate(one_tensor_layout(encoding, values, body))
    result = decode_chunk_body(layout, 0, body)
    if isinstance(result, Rejection):
        assert result.reason is RejectionReason.MALFORMED_PAYLOAD
    else:
        assert result.dtype == np.float32 and result.shape == (values,)


# --- layouts at their limits ---------------------------------------------------------------------------------------


@settings(FAST, max_examples=50)
@given(st.sampled_from([1, 2, 2**31 - 1, 2**31]), st.sampled_from([0, 1, 2**31]), st.binary(max_size=16))
def test_layouts_with_extreme_chunk_elements(chunk_elements: int, index: int, body: bytes) -> None:
    count = 2 if chunk_elements < 2**31 else 1
    layout = {
        "encoding": "float32",
        "tensors": [{"name": "v", "shape": [chunk_elements * count]}],
        "chunk_elements": chunk_elements,
        "chunk_sha256": [sha256_hex(body)] * count,
    }
    result = decode(chunk_value(header_for(layout), index, body))
    if isinstance(result, UpdateChunk):
        checked(assemble_update([result]), DecodedUpdate)
        assert len(body) == 4 * chunk_elements


@settings(FAST, max_examples=20)
@given(
    st.sampled_from(["chunks", "tensors", "both"]),
    st.sampled_from([0, MAX_CHUNKS - 1, MAX_CHUNKS]) | st.integers(0, 2**32 - 1),
    st.none() | st.binary(max_size=8),
)
def test_layouts_with_the_most_chunks_and_tensors(edge: str, index: int, drawn: bytes | None) -> None:
    tensor_count = MAX_TENSORS if edge in ("tensors", "both") else 1
    chunk_count = MAX_CHUNKS if edge in ("chunks", "both") else 1
    # None stands for a body of the right length (zeros), so the valid case is exercised at every edge
    body = bytes(4 * (max(tensor_count, chunk_count) // chunk_count)) if drawn is None else drawn
    tensors_json = [{"name": f"t{i}", "shape": [1]} for i in range(tensor_count)]
    if tensor_count < chunk_count:
        tensors_json = [{"name": "v", "shape": [chunk_count]}]
    layout = {
        "encoding": "float32",
        "tensors": tensors_json,
        "chunk_elements": max(tensor_count, chunk_count) // chunk_count,
        "chunk_sha256": [sha256_hex(body)] * chunk_count,
    }
    header_json = json.dumps(header_for(layout), separators=(",", ":")).encode()
    assert len(header_json) <= MAX_CHUNK_HEADER_BYTES
    result = decode_update_chunk(chunk_value(header_json, index, body), KEY)  # no size limit: the header is large
    checked(result, UpdateChunk)
    if drawn is None and index < chunk_count:
        assert isinstance(result, UpdateChunk), str(result)
    too_many = {**layout, "chunk_sha256": [sha256_hex(body)] * (MAX_CHUNKS + 1)}
    assert isinstance(decode(chunk_value(header_for(too_many), 0, body)), Rejection)
    if isinstance(result, UpdateChunk):
        chunks = [result] * 2  # the other indices are missing and this one repeats
        assert isinstance(checked(assemble_update(chunks), DecodedUpdate), Rejection)


layout_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@settings(FAST, max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(["encoding", "tensors", "chunk_elements", "chunk_sha256", "extra"]), layout_values, max_size=3
    ),
    st.booleans(),
)
def test_arbitrary_layout_fields_decode_or_are_rejected(overrides: dict[str, Any], magic_is_model: bool) -> None:
    body = b"\x00" * 8
    layout = {**one_tensor_layout(Encoding.FLOAT32, 2, body), **overrides}
    hashes = layout.get("chunk_sha256")
    fields = {**HEADER_FIELDS, "layout": layout}
    if isinstance(hashes, list) and all(isinstance(h, str) and len(h) == 64 for h in hashes):
        with contextlib.suppress(ValueError):  # not hex: the header's own hash stays, and is rejected
            fields["payload_sha256"] = chunks_root(hashes)
    result = decode(chunk_value(fields, 0, body))
    if isinstance(result, UpdateChunk):
        checked(assemble_update([result]), DecodedUpdate)
    model_fields = {**json.loads(MODEL_MESSAGES[0][8 : 8 + struct.unpack(">I", MODEL_MESSAGES[0][4:8])[0]])}
    model_fields.update(layout=layout, payload_sha256=fields["payload_sha256"])
    model = decode_model(chunk_value(model_fields, 0, body, MODEL_CHUNK_MAGIC))
    if isinstance(model, ModelChunk):
        checked(assemble_model([model]), DecodedModel)
