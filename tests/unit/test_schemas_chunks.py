"""Chunked updates and global versions: round trips, sizes, and one crafted input per way a chunk can be wrong."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime

import numpy as np
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.chunks import (
    MODEL_CHUNK_MAGIC,
    UPDATE_CHUNK_MAGIC,
    ModelChunk,
    UpdateChunk,
    assemble_model,
    assemble_update,
    chunk_elements_for,
    chunks_root,
    decode_chunk_body,
    decode_model_chunk,
    decode_update_chunk,
    encode_chunk_bodies,
    encode_model_chunks,
    encode_update_chunks,
    is_model_chunk,
    is_update_chunk,
    tensors_from_flat,
)
from schemas.messages import MAX_CHUNKS, ChunkLayout, Encoding, ModelHeader, UpdateHeader
from schemas.rejections import Rejection, RejectionReason
from schemas.tensors import sha256_hex
from schemas.wire import (
    SIGNATURE_BYTES,
    UNSIGNED,
    DecodedModel,
    DecodedUpdate,
    decode_model_message,
    decode_update,
    encode_model,
    encode_update,
    frame,
    tensors_payload,
)

CLIENT = "client-007"
KEY = CLIENT.encode()
CLIENT_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
HEADER = UpdateHeader(
    update_id="0123456789abcdef0123456789abcdef",
    client_id=CLIENT,
    model_name="har.mlp",
    base_version=12,
    sample_count=345,
    created_at=datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
    payload_sha256="0" * 64,
)
MODEL_HEADER = ModelHeader(
    model_name="har.mlp",
    version=3,
    parent_version=2,
    parent_parameter_hash="1" * 64,
    parameter_hash="2" * 64,
    payload_sha256="0" * 64,
    created_at=datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
)
BIG = 1 << 20


def tensors(seed: int = 0, size: int = 1000) -> dict[str, np.ndarray]:
    """Normal tensors mixed with a 0-d one and ones with an empty dimension."""
    rng = np.random.default_rng(seed)
    return {
        "dense.weight": rng.normal(size=(size // 10, 10)).astype(np.float32),
        "step": np.array(7.25, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "dense.bias": rng.normal(size=(size % 10 + 3,)).astype(np.float32),
        "nothing": np.zeros((3, 0), dtype=np.float32),
    }


def update_chunks(
    delta: dict[str, np.ndarray], limit: int = 4096, encoding: Encoding = Encoding.FLOAT32, signed: bool = True
) -> list[bytes]:
    return encode_update_chunks(
        HEADER, delta, max_message_bytes=limit, encoding=encoding, signer=CLIENT_KEY.sign if signed else None
    )


def decoded(messages: list[bytes]) -> list[UpdateChunk]:
    chunks = [decode_update_chunk(message, KEY, max(map(len, messages))) for message in messages]
    assert all(isinstance(chunk, UpdateChunk) for chunk in chunks), [str(c) for c in chunks]
    return chunks  # type: ignore[return-value]


def assembled(messages: list[bytes]) -> DecodedUpdate:
    result = assemble_update(decoded(messages))
    assert isinstance(result, DecodedUpdate), str(result)
    return result


def rejected(result: object, reason: RejectionReason) -> Rejection:
    assert isinstance(result, Rejection), f"expected {reason}, got {type(result).__name__}"
    assert result.reason is reason, str(result)
    return result


def verifies(signature: bytes, signed: bytes) -> bool:
    try:
        CLIENT_KEY.public_key().verify(signature, signed)
    except InvalidSignature:
        return False
    return True


def assert_same_shapes(result: dict[str, np.ndarray], original: dict[str, np.ndarray]) -> None:
    assert list(result) == sorted(original), "the layout orders tensors by name"
    for name, array in original.items():
        assert result[name].dtype == np.float32, name
        assert result[name].shape == array.shape, name


def regions(message: bytes) -> dict[str, int]:
    """One byte position inside each region of a chunk message."""
    header_end = 8 + struct.unpack(">I", message[4:8])[0]
    return {
        "header": header_end - 20,
        "signature": header_end + 10,
        "index": header_end + SIGNATURE_BYTES + 3,
        "body": header_end + SIGNATURE_BYTES + 4 + 5,
    }


def flipped(message: bytes, position: int, mask: int = 0x01) -> bytes:
    return message[:position] + bytes([message[position] ^ mask]) + message[position + 1 :]


# --- round trips ---------------------------------------------------------------------------------------------------


def test_float32_round_trip_is_bit_exact_with_0d_and_empty_tensors() -> None:
    original = tensors()
    original["dense.weight"][0, :3] = [-0.0, 1e-45, np.finfo(np.float32).max]
    messages = update_chunks(original)
    assert len(messages) > 1
    result = assembled(messages)
    assert_same_shapes(result.delta, original)
    for name, array in original.items():
        assert result.delta[name].tobytes() == array.tobytes(), name
    assert result.header.layout is not None
    assert result.header.payload_sha256 == chunks_root(result.header.layout.chunk_sha256)
    assert result.header.model_copy(update={"layout": None, "payload_sha256": HEADER.payload_sha256}) == HEADER
    assert result.payload == tensors_payload(result.delta)[0]  # float32 safetensors of the delta, not chunk bodies


def test_float16_round_trip_within_half_precision() -> None:
    original = tensors(1)
    original["dense.bias"][:2] = [65504.0, -65504.0]
    result = assembled(update_chunks(original, encoding=Encoding.FLOAT16))
    assert_same_shapes(result.delta, original)
    for name, array in original.items():
        expected = array.astype(np.float16).astype(np.float32)
        assert result.delta[name].tobytes() == expected.tobytes(), name
        np.testing.assert_allclose(result.delta[name], array, rtol=2**-11, atol=2**-24)


def test_int8_round_trip_within_half_a_scale_per_value() -> None:
    original = tensors(2, size=5000)
    messages = update_chunks(original, limit=3000, encoding=Encoding.INT8)
    assert len(messages) > 1
    chunks = decoded(messages)
    result = assemble_update(chunks)
    assert isinstance(result, DecodedUpdate), str(result)
    assert_same_shapes(result.delta, original)
    layout = chunks[0].layout
    flat = np.concatenate([original[name].reshape(-1) for name in sorted(original)])
    decoded_flat = np.concatenate([array.reshape(-1) for array in result.delta.values()])
    for chunk in chunks:
        start, stop = layout.chunk_bounds(chunk.index)
        (scale,) = struct.unpack("<f", chunk.body[:4])
        assert scale == pytest.approx(np.max(np.abs(flat[start:stop])) / 127, rel=1e-6)
        error = np.abs(decoded_flat[start:stop].astype(np.float64) - flat[start:stop])
        assert (error <= scale / 2 * (1 + 1e-6)).all(), chunk.index


def test_int8_of_an_all_zero_chunk_has_scale_zero() -> None:
    layout, bodies = encode_chunk_bodies({"z": np.zeros(5, dtype=np.float32)}, Encoding.INT8, 10)
    assert bodies == [struct.pack("<f", 0.0) + bytes(5)]
    values = decode_chunk_body(layout, 0, bodies[0])
    assert isinstance(values, np.ndarray) and values.dtype == np.float32 and not values.any()


def test_int8_keeps_tiny_and_huge_peaks_finite_and_within_half_a_scale() -> None:
    for peak in (1e-45, 3e-44, 1e-38, 1.0, float(np.finfo(np.float32).max)):
        values = np.array([peak, -peak, peak / 3, 0.0], dtype=np.float32)
        layout, bodies = encode_chunk_bodies({"v": values}, Encoding.INT8, 4)
        (scale,) = struct.unpack("<f", bodies[0][:4])
        result = decode_chunk_body(layout, 0, bodies[0])
        assert isinstance(result, np.ndarray)
        assert np.isfinite(result).all(), peak
        assert (np.abs(result.astype(np.float64) - values) <= scale / 2 * (1 + 1e-6) + 1e-45).all(), peak


def test_single_chunk_and_many_chunks() -> None:
    one = update_chunks(tensors(), limit=BIG)
    assert len(one) == 1
    assert assembled(one).delta["step"].shape == ()
    # 7000 values in chunks of 7: 1000 chunks, just under MAX_CHUNKS (10k values would need 1429)
    layout, bodies = encode_chunk_bodies({"v": np.arange(7000, dtype=np.float32)}, Encoding.FLOAT32, 7)
    assert layout.chunk_count == len(bodies) == 1000
    values = [decode_chunk_body(layout, index, body) for index, body in enumerate(bodies)]
    assert all(isinstance(part, np.ndarray) for part in values)
    flat = np.concatenate(values)  # type: ignore[arg-type]
    assert tensors_from_flat(layout, flat)["v"].tobytes() == np.arange(7000, dtype=np.float32).tobytes()
    with pytest.raises(ValueError, match=str(MAX_CHUNKS)):
        encode_chunk_bodies({"v": np.arange(10_000, dtype=np.float32)}, Encoding.FLOAT32, 7)


def test_many_small_chunks_assemble_in_any_order() -> None:
    original = {"v": np.arange(20_000, dtype=np.float32), "s": np.array(-1.0, dtype=np.float32)}
    messages = update_chunks(original, limit=8192)
    assert len(messages) > 10
    chunks = decoded(messages)
    rng = np.random.default_rng(3)
    for _ in range(3):
        order = rng.permutation(len(chunks))
        result = assemble_update([chunks[i] for i in order])
        assert isinstance(result, DecodedUpdate), str(result)
        assert result.delta["v"].tobytes() == original["v"].tobytes()
        assert result.delta["s"].shape == () and result.delta["s"] == -1.0


def test_model_round_trip() -> None:
    parameters = tensors(4)
    messages = encode_model_chunks(MODEL_HEADER, parameters, max_message_bytes=2048, signer=CLIENT_KEY.sign)
    chunks = [decode_model_chunk(message, 2048) for message in messages]
    assert all(isinstance(chunk, ModelChunk) for chunk in chunks)
    result = assemble_model(chunks[::-1])  # type: ignore[arg-type]
    assert isinstance(result, DecodedModel), str(result)
    assert_same_shapes(result.parameters, parameters)
    for name, array in parameters.items():
        assert result.parameters[name].tobytes() == array.tobytes()
    assert result.header.layout is not None and result.header.layout.encoding is Encoding.FLOAT32
    assert result.signed_bytes.startswith(MODEL_CHUNK_MAGIC) and verifies(result.signature, result.signed_bytes)


def test_tensors_from_flat_reverses_the_flattening() -> None:
    original = tensors(5)
    layout, _ = encode_chunk_bodies(original, Encoding.FLOAT32, 100)
    flat = np.concatenate([original[name].reshape(-1) for name in sorted(original)])
    result = tensors_from_flat(layout, flat)
    for name, array in original.items():
        assert result[name].shape == array.shape and result[name].tobytes() == array.tobytes()
    with pytest.raises(ValueError):
        tensors_from_flat(layout, flat[:-1])


# --- sizes ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", list(Encoding))
@pytest.mark.parametrize(("limit", "size"), [(4096, 2000), (16 * 1024, 20_000), (BIG, 600_000)])
def test_every_chunk_fits_the_limit(encoding: Encoding, limit: int, size: int) -> None:
    messages = update_chunks(tensors(6, size=size), limit=limit, encoding=encoding)
    assert max(map(len, messages)) <= limit
    if len(messages) > 1:
        assert max(map(len, messages)) > limit * 0.8, "the estimate should not waste much room"
    models = encode_model_chunks(MODEL_HEADER, tensors(6, size=size), max_message_bytes=limit)
    assert max(map(len, models)) <= limit


def test_chunk_elements_for_refuses_what_cannot_fit() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        chunk_elements_for({"v": np.zeros(10, np.float32)}, Encoding.FLOAT32, 500, 400)
    with pytest.raises(ValueError, match=str(MAX_CHUNKS)):
        # only the shapes count: a broadcast view stands for 300M values without the memory
        huge = np.broadcast_to(np.float32(0), (300_000_000,))
        chunk_elements_for({"v": huge}, Encoding.FLOAT32, BIG, 400)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"do not fit|more than 1024"):  # past the best chunk count either way
        chunk_elements_for({"v": np.zeros(8_000_000, np.float32)}, Encoding.FLOAT32, 80_000, 400)
    with pytest.raises(ValueError, match="no values"):
        chunk_elements_for({"v": np.zeros(0, np.float32)}, Encoding.FLOAT32, BIG, 400)


def test_encoding_refuses_values_it_cannot_carry() -> None:
    for encoding in Encoding:
        for bad in (np.nan, np.inf, -np.inf):
            with pytest.raises(ValueError, match="finite"):
                update_chunks({"v": np.array([1.0, bad], dtype=np.float32)}, encoding=encoding)
    with pytest.raises(ValueError, match="float16"):
        update_chunks({"v": np.array([65505.0], dtype=np.float32)}, encoding=Encoding.FLOAT16)
    with pytest.raises(ValueError, match="a signature is 64 bytes"):
        encode_update_chunks(HEADER, tensors(), max_message_bytes=BIG, signer=lambda _: b"short")


# --- signatures ----------------------------------------------------------------------------------------------------


def test_every_chunk_carries_one_signature_over_magic_and_header() -> None:
    messages = update_chunks(tensors())
    chunks = decoded(messages)
    assert len({chunk.assembly_id for chunk in chunks}) == 1
    for chunk in chunks:
        assert chunk.signed_bytes.startswith(UPDATE_CHUNK_MAGIC)
        assert verifies(chunk.signature, chunk.signed_bytes)
        unassembled = chunk.as_unassembled_update()
        assert unassembled.delta == {} and unassembled.is_signed and unassembled.header == chunk.header
    result = assemble_update(chunks)
    assert isinstance(result, DecodedUpdate) and verifies(result.signature, result.signed_bytes)


def test_unsigned_chunks_carry_zeros() -> None:
    chunks = decoded(update_chunks(tensors(), signed=False))
    assert all(chunk.signature == UNSIGNED for chunk in chunks)
    assert not chunks[0].as_unassembled_update().is_signed


# --- tampering -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("region", ["header", "signature", "index", "body"])
def test_tampering_with_any_region_is_detected(region: str) -> None:
    messages = update_chunks(tensors(size=2000))
    assert len(messages) >= 3
    position = regions(messages[1])[region]
    tampered = flipped(messages[1], position)
    result = decode_update_chunk(tampered, KEY)
    if region == "signature":
        assert isinstance(result, UpdateChunk)
        assert not verifies(result.signature, result.signed_bytes)
        others = decoded([messages[0], *messages[2:]])
        rejected(assemble_update([*others, result]), RejectionReason.MALFORMED_PAYLOAD)  # a different assembly_id
    elif region == "index":
        # chunk 1 now claims index 0 (bit flip 1 -> 0), which its body's hash does not match
        rejected(result, RejectionReason.PAYLOAD_HASH_MISMATCH)
    elif region == "body":
        rejected(result, RejectionReason.PAYLOAD_HASH_MISMATCH)
    else:
        assert isinstance(result, Rejection), "a flip inside a hash or a value of the header"


def test_a_header_change_that_still_parses_breaks_the_signature_and_the_assembly() -> None:
    messages = update_chunks(tensors())
    tampered = messages[0].replace(b'"base_version":12', b'"base_version":13')
    chunk = decode_update_chunk(tampered, KEY)
    assert isinstance(chunk, UpdateChunk) and chunk.header.base_version == 13
    assert not verifies(chunk.signature, chunk.signed_bytes)
    rejected(assemble_update([chunk, *decoded(messages[1:])]), RejectionReason.MALFORMED_PAYLOAD)


def test_an_index_beyond_the_layout_is_malformed() -> None:
    message = update_chunks(tensors())[0]
    position = regions(message)["index"] - 3
    for index in (len(update_chunks(tensors())), 2**32 - 1):
        value = message[:position] + struct.pack(">I", index) + message[position + 4 :]
        rejected(decode_update_chunk(value, KEY), RejectionReason.MALFORMED_ENVELOPE)


# --- assembly ------------------------------------------------------------------------------------------------------


def test_duplicate_missing_and_mixed_chunks_are_rejected() -> None:
    chunks = decoded(update_chunks(tensors()))
    duplicate = rejected(assemble_update([*chunks, chunks[1]]), RejectionReason.MALFORMED_PAYLOAD)
    assert "duplicate indices 1" in duplicate.detail
    missing = rejected(assemble_update(chunks[:1] + chunks[2:]), RejectionReason.MALFORMED_PAYLOAD)
    assert "missing indices 1" in missing.detail
    rejected(assemble_update([]), RejectionReason.MALFORMED_PAYLOAD)
    other_header = HEADER.model_copy(update={"update_id": "f" * 32})
    other = encode_update_chunks(other_header, tensors(), max_message_bytes=4096, signer=CLIENT_KEY.sign)
    mixed = [*chunks[:1], *decoded(other)[1:]]
    assert len(mixed) == len(chunks)
    assert "different" in rejected(assemble_update(mixed), RejectionReason.MALFORMED_PAYLOAD).detail


def test_assembly_of_hand_built_chunks_never_raises() -> None:
    chunk = decoded(update_chunks(tensors()))[0]
    broken = UpdateChunk(
        header=HEADER, index=0, body=chunk.body, signature=chunk.signature, signed_bytes=chunk.signed_bytes
    )
    rejected(assemble_update([broken]), RejectionReason.MALFORMED_PAYLOAD)
    short = UpdateChunk(
        header=chunk.header, index=0, body=b"", signature=chunk.signature, signed_bytes=chunk.signed_bytes
    )
    rejected(assemble_update([short]), RejectionReason.MALFORMED_PAYLOAD)


# --- decoding checks in order --------------------------------------------------------------------------------------


def chunk_value(header_json: bytes, index: int, body: bytes, magic: bytes = UPDATE_CHUNK_MAGIC) -> bytes:
    return magic + struct.pack(">I", len(header_json)) + header_json + UNSIGNED + struct.pack(">I", index) + body


def layout_header(body: bytes, encoding: Encoding = Encoding.FLOAT32, header: UpdateHeader = HEADER) -> bytes:
    layout = {"encoding": encoding.value, "tensors": [{"name": "v", "shape": [2]}], "chunk_elements": 2}
    layout["chunk_sha256"] = [sha256_hex(body)]
    fields = json.loads(header.model_dump_json())
    fields.update(layout=layout, payload_sha256=chunks_root([sha256_hex(body)]))
    return json.dumps(fields).encode()


def test_each_decoding_check_has_its_reason() -> None:
    body = np.array([1.0, 2.0], dtype="<f4").tobytes()
    good = chunk_value(layout_header(body), 0, body)
    assert isinstance(decode_update_chunk(good, KEY, len(good)), UpdateChunk)
    rejected(decode_update_chunk(None), RejectionReason.MALFORMED_ENVELOPE)
    rejected(decode_update_chunk(good[:7]), RejectionReason.MALFORMED_ENVELOPE)
    rejected(decode_update_chunk(b"FSU1" + good[4:]), RejectionReason.MALFORMED_ENVELOPE)
    rejected(
        decode_update_chunk(good[:4] + struct.pack(">I", 2**32 - 1) + good[8:]), RejectionReason.MALFORMED_ENVELOPE
    )
    rejected(decode_update_chunk(good, KEY, len(good) - 1), RejectionReason.OVERSIZED)
    fields = json.loads(layout_header(body))
    newer = chunk_value(json.dumps({**fields, "schema_version": 2}).encode(), 0, body)
    rejected(decode_update_chunk(newer), RejectionReason.UNSUPPORTED_SCHEMA_VERSION)
    no_layout = HEADER.model_dump_json().encode()
    assert (
        "layout"
        in rejected(decode_update_chunk(chunk_value(no_layout, 0, body)), RejectionReason.INVALID_HEADER).detail
    )
    rejected(decode_update_chunk(good, b"someone-else"), RejectionReason.KEY_MISMATCH)
    other_root = chunk_value(json.dumps({**fields, "payload_sha256": "e" * 64}).encode(), 0, body)
    rejected(decode_update_chunk(other_root), RejectionReason.PAYLOAD_HASH_MISMATCH)
    rejected(decode_update_chunk(chunk_value(layout_header(body), 1, body)), RejectionReason.MALFORMED_ENVELOPE)
    rejected(
        decode_update_chunk(chunk_value(layout_header(body), 0, body[::-1])), RejectionReason.PAYLOAD_HASH_MISMATCH
    )
    short = body[:6]
    rejected(decode_update_chunk(chunk_value(layout_header(short), 0, short)), RejectionReason.MALFORMED_PAYLOAD)


def test_int8_scales_that_are_not_finite_and_non_negative_are_malformed() -> None:
    for scale in (float("nan"), float("inf"), -1.0, -1e-45):
        body = struct.pack("<f", scale) + bytes([1, 255])
        rejected(
            decode_update_chunk(chunk_value(layout_header(body, Encoding.INT8), 0, body)),
            RejectionReason.MALFORMED_PAYLOAD,
        )


def test_model_chunks_are_float32_only_and_not_update_chunks() -> None:
    body = np.array([1.0, 2.0], dtype="<f2").tobytes()
    fields = json.loads(layout_header(body, Encoding.FLOAT16))
    model_fields = {**json.loads(MODEL_HEADER.model_dump_json()), "layout": fields["layout"]}
    model_fields["payload_sha256"] = fields["payload_sha256"]
    value = chunk_value(json.dumps(model_fields).encode(), 0, body, MODEL_CHUNK_MAGIC)
    assert "float32" in rejected(decode_model_chunk(value), RejectionReason.INVALID_HEADER).detail
    update_value = update_chunks(tensors())[0]
    rejected(decode_model_chunk(update_value), RejectionReason.MALFORMED_ENVELOPE)
    assert is_update_chunk(update_value) and not is_model_chunk(update_value)
    assert is_model_chunk(value) and not is_update_chunk(value)
    assert not is_update_chunk(None) and not is_model_chunk(None) and not is_update_chunk(b"FU")


def test_decode_chunk_body_refuses_a_bad_index_or_length() -> None:
    layout, bodies = encode_chunk_bodies({"v": np.arange(10, dtype=np.float32)}, Encoding.FLOAT32, 4)
    assert layout.chunk_count == 3 and len(bodies[2]) == 8
    rejected(decode_chunk_body(layout, 3, bodies[2]), RejectionReason.MALFORMED_ENVELOPE)
    rejected(decode_chunk_body(layout, -1, bodies[2]), RejectionReason.MALFORMED_ENVELOPE)
    rejected(decode_chunk_body(layout, 1, bodies[2]), RejectionReason.MALFORMED_PAYLOAD)


def test_chunks_root_is_the_hash_of_the_digests() -> None:
    hashes = [sha256_hex(b"a"), sha256_hex(b"b")]
    assert chunks_root(hashes) == sha256_hex(bytes.fromhex(hashes[0]) + bytes.fromhex(hashes[1]))
    layout = ChunkLayout(
        encoding=Encoding.FLOAT32, tensors=[{"name": "v", "shape": [2]}], chunk_elements=1, chunk_sha256=hashes
    )
    assert layout.chunk_count == 2


# --- whole messages are unchanged ----------------------------------------------------------------------------------


def test_a_whole_update_without_layout_has_the_bytes_it_always_had() -> None:
    payload, payload_hash = tensors_payload(tensors())
    header = HEADER.model_copy(update={"payload_sha256": payload_hash})
    header_json = header.model_dump_json(exclude={"layout"}).encode()
    assert b"layout" not in header_json
    assert encode_update(header, payload) == frame(b"FSU1", header_json, UNSIGNED + payload)
    result = decode_update(encode_update(header, payload), KEY)
    assert isinstance(result, DecodedUpdate) and result.header == header


def test_a_whole_model_without_layout_has_the_bytes_it_always_had() -> None:
    payload, payload_hash = tensors_payload(tensors())
    header = MODEL_HEADER.model_copy(update={"payload_sha256": payload_hash})
    header_json = header.model_dump_json(exclude={"layout"}).encode()
    assert encode_model(header, payload) == frame(b"FSM2", header_json, UNSIGNED + payload)
    assert isinstance(decode_model_message(encode_model(header, payload)), DecodedModel)


def test_a_whole_message_with_a_layout_is_refused_both_ways() -> None:
    chunked = decoded(update_chunks(tensors()))[0].header
    payload, payload_hash = tensors_payload(tensors())
    with pytest.raises(ValueError, match="layout"):
        encode_update(chunked, payload)
    header_json = chunked.model_copy(update={"payload_sha256": payload_hash}).model_dump_json().encode()
    result = decode_update(frame(b"FSU1", header_json, UNSIGNED + payload), KEY)
    assert "layout" in rejected(result, RejectionReason.INVALID_HEADER).detail
    model_chunk = decode_model_chunk(encode_model_chunks(MODEL_HEADER, tensors(), max_message_bytes=BIG)[0])
    assert isinstance(model_chunk, ModelChunk)
    with pytest.raises(ValueError, match="layout"):
        encode_model(model_chunk.header, payload)
    model_json = model_chunk.header.model_copy(update={"payload_sha256": payload_hash}).model_dump_json().encode()
    result_model = decode_model_message(frame(b"FSM2", model_json, UNSIGNED + payload))
    assert "layout" in rejected(result_model, RejectionReason.INVALID_HEADER).detail
