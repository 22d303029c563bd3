"""Framing and decoding of fedstream's Kafka messages: one crafted input per rejection reason."""

import json
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from schemas.messages import ModelHeader, UpdateHeader
from schemas.rejections import Rejection, RejectionReason
from schemas.tensors import encode_tensors, parameter_hash, sha256_hex
from schemas.wire import (
    MAX_HEADER_BYTES,
    MODEL_MAGIC,
    UNSIGNED,
    UPDATE_MAGIC,
    DecodedModel,
    DecodedUpdate,
    decode_model,
    decode_update,
    encode_model,
    encode_update,
    frame,
    tensors_payload,
)

CREATED_AT = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
UPDATE_ID = "0123456789abcdef0123456789abcdef"


def delta() -> dict[str, np.ndarray]:
    return {
        "dense.weight": np.array([[0.5, -0.0], [np.float32(1e-38), 3.25]], dtype=np.float32),
        "dense.bias": np.array([-1.5, 2.0**-140], dtype=np.float32),
    }


def header_fields(payload: bytes, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "schema_version": 1,
        "update_id": UPDATE_ID,
        "client_id": "client-007",
        "model_name": "har.mlp",
        "base_version": 12,
        "sample_count": 345,
        "created_at": CREATED_AT.isoformat(),
        "payload_sha256": sha256_hex(payload),
        "metrics": {
            "validation_loss": 0.6931,
            "validation_accuracy": 0.5,
            "validation_count": 40,
            "training_loss": 0.25,
            "training_steps": 30,
        },
    }
    fields.update(overrides)
    return fields


def raw_message(header: dict[str, Any] | bytes, payload: bytes) -> bytes:
    """A message framed by hand, so the header can be anything the encoder would refuse to write."""
    header_json = header if isinstance(header, bytes) else json.dumps(header).encode()
    return UPDATE_MAGIC + struct.pack(">I", len(header_json)) + header_json + UNSIGNED + payload


def valid_message() -> tuple[bytes, UpdateHeader, bytes]:
    payload, payload_hash = tensors_payload(delta())
    header = UpdateHeader.model_validate(header_fields(payload, payload_sha256=payload_hash))
    return encode_update(header, payload), header, payload


def rejected(result: DecodedUpdate | Rejection, reason: RejectionReason) -> Rejection:
    assert isinstance(result, Rejection), f"expected {reason}, got a decoded update"
    assert result.reason is reason, str(result)
    return result


# --- round trip ----------------------------------------------------------------------------------------------------


def test_update_round_trip_keeps_every_header_field_and_bit_identical_tensors() -> None:
    message, header, _ = valid_message()
    result = decode_update(message, key=b"client-007")
    assert isinstance(result, DecodedUpdate), str(result)
    assert result.header == header
    assert result.header.model_dump() == header.model_dump()
    assert result.header.created_at == CREATED_AT
    assert result.header.metrics.validation_loss == 0.6931
    assert result.header.metrics.training_steps == 30
    original = delta()
    assert set(result.delta) == set(original)
    for name, array in original.items():
        assert result.delta[name].dtype == np.float32
        assert result.delta[name].shape == array.shape
        assert result.delta[name].tobytes() == array.tobytes(), name  # -0.0 and subnormals survive


def test_round_trip_keeps_the_instant_of_a_non_utc_created_at() -> None:
    payload, _ = tensors_payload(delta())
    created_at = datetime(2025, 3, 1, 13, 30, tzinfo=timezone(timedelta(hours=1, minutes=30)))
    header = UpdateHeader.model_validate(header_fields(payload, created_at=created_at))
    result = decode_update(encode_update(header, payload))
    assert isinstance(result, DecodedUpdate), str(result)
    assert result.header.created_at == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert result.header.created_at.utcoffset() == timedelta(0), "headers carry created_at in UTC"


def test_round_trip_keeps_the_instant_of_a_created_at_with_a_sub_minute_offset() -> None:
    payload, _ = tensors_payload(delta())
    created_at = datetime(2025, 3, 1, 12, 19, 32, tzinfo=timezone(timedelta(minutes=19, seconds=32)))
    header = UpdateHeader.model_validate(header_fields(payload, created_at=created_at))
    result = decode_update(encode_update(header, payload))
    assert isinstance(result, DecodedUpdate), str(result)
    assert result.header.created_at == created_at


def test_decoding_without_a_key_skips_the_key_check() -> None:
    message, header, _ = valid_message()
    result = decode_update(message)
    assert isinstance(result, DecodedUpdate)
    assert result.header == header


def test_encode_update_refuses_a_header_whose_hash_does_not_name_the_payload() -> None:
    payload, _ = tensors_payload(delta())
    wrong = "f" * 64
    header = UpdateHeader.model_validate(header_fields(payload, payload_sha256=wrong))
    with pytest.raises(ValueError, match=wrong):
        encode_update(header, payload)
    with pytest.raises(ValueError, match="does not match"):
        encode_update(header, payload + b"\x00")


def test_frame_layout_is_magic_big_endian_length_header_payload() -> None:
    value = frame(UPDATE_MAGIC, b"{}", b"PAYLOAD")
    assert value == b"FSU1" + b"\x00\x00\x00\x02" + b"{}" + b"PAYLOAD"


# --- one crafted input per rejection reason ------------------------------------------------------------------------


def test_value_none_is_a_malformed_envelope() -> None:
    rejection = rejected(decode_update(None, key=b"client-007"), RejectionReason.MALFORMED_ENVELOPE)
    assert "no value" in rejection.detail


@pytest.mark.parametrize("value", [b"", b"FSU", b"FSU1\x00\x00\x00"])
def test_a_message_shorter_than_magic_and_length_is_a_malformed_envelope(value: bytes) -> None:
    rejection = rejected(decode_update(value), RejectionReason.MALFORMED_ENVELOPE)
    assert f"message of {len(value)} bytes is too short" in rejection.detail


def test_wrong_magic_is_a_malformed_envelope_naming_the_magic() -> None:
    message, _, _ = valid_message()
    for magic in (MODEL_MAGIC, b"FSU2", b"\x00\x00\x00\x00"):
        rejection = rejected(decode_update(magic + message[4:]), RejectionReason.MALFORMED_ENVELOPE)
        assert repr(magic) in rejection.detail
        assert repr(UPDATE_MAGIC) in rejection.detail


def test_header_length_beyond_the_message_is_a_malformed_envelope() -> None:
    message, _, _ = valid_message()
    (header_length,) = struct.unpack(">I", message[4:8])
    too_long = len(message) - 8 + 1
    mutated = message[:4] + struct.pack(">I", too_long) + message[8:]
    rejection = rejected(decode_update(mutated), RejectionReason.MALFORMED_ENVELOPE)
    assert str(too_long) in rejection.detail
    assert str(len(message)) in rejection.detail
    assert header_length < too_long


def test_header_length_above_the_header_limit_is_a_malformed_envelope_even_inside_the_message() -> None:
    header_json = b" " * (MAX_HEADER_BYTES + 1)
    rejection = rejected(decode_update(raw_message(header_json, b"")), RejectionReason.MALFORMED_ENVELOPE)
    assert str(MAX_HEADER_BYTES + 1) in rejection.detail


def test_header_exactly_at_the_header_limit_is_framed() -> None:
    payload, _ = tensors_payload(delta())
    fields = json.dumps(header_fields(payload)).encode()
    header_json = fields + b" " * (MAX_HEADER_BYTES - len(fields))  # trailing whitespace is valid JSON
    assert len(header_json) == MAX_HEADER_BYTES
    assert isinstance(decode_update(raw_message(header_json, payload)), DecodedUpdate)


@pytest.mark.parametrize("header_json", [b"{not json", b"", b'{"schema_version": 1', b"\x80\xff{}"])
def test_header_that_is_not_json_is_an_invalid_header(header_json: bytes) -> None:
    rejection = rejected(decode_update(raw_message(header_json, b"")), RejectionReason.INVALID_HEADER)
    assert "not JSON" in rejection.detail


@pytest.mark.parametrize(("header_json", "kind"), [(b"[1, 2]", "list"), (b"1", "int"), (b'"header"', "str")])
def test_header_json_that_is_not_an_object_is_an_invalid_header(header_json: bytes, kind: str) -> None:
    rejection = rejected(decode_update(raw_message(header_json, b"")), RejectionReason.INVALID_HEADER)
    assert f"JSON {kind}, not an object" in rejection.detail


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_other_schema_versions_are_unsupported(version: object) -> None:
    payload, _ = tensors_payload(delta())
    message = raw_message(header_fields(payload, schema_version=version), payload)
    rejection = rejected(decode_update(message), RejectionReason.UNSUPPORTED_SCHEMA_VERSION)
    assert f"schema_version {version!r}" in rejection.detail


def test_a_header_without_schema_version_is_unsupported() -> None:
    payload, _ = tensors_payload(delta())
    fields = header_fields(payload)
    del fields["schema_version"]
    rejection = rejected(decode_update(raw_message(fields, payload)), RejectionReason.UNSUPPORTED_SCHEMA_VERSION)
    assert "None" in rejection.detail


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"client_id": "Alice Smith"}, "client_id"),
        ({"client_id": "alice\n"}, "client_id"),
        ({"client_id": ""}, "client_id"),
        ({"client_id": "a" * 65}, "client_id"),
        ({"client_id": "-alice"}, "client_id"),
        ({"model_name": "har/mlp"}, "model_name"),
        ({"update_id": UPDATE_ID.upper()}, "update_id"),
        ({"update_id": UPDATE_ID[:-1]}, "update_id"),
        ({"payload_sha256": "not-a-hash"}, "payload_sha256"),
        ({"note": "patient reports knee pain"}, "note"),
        ({"created_at": "2025-03-01T12:00:00"}, "created_at"),
        ({"base_version": -1}, "base_version"),
        ({"sample_count": 0}, "sample_count"),
        ({"sample_count": -3}, "sample_count"),
        ({"metrics": {"validation_loss": float("nan")}}, "metrics.validation_loss"),
        ({"metrics": {"training_loss": float("inf")}}, "metrics.training_loss"),
        ({"metrics": {"validation_accuracy": float("nan")}}, "metrics.validation_accuracy"),
        ({"metrics": {"validation_accuracy": 1.5}}, "metrics.validation_accuracy"),
        ({"metrics": {"training_steps": -1}}, "metrics.training_steps"),
        ({"metrics": {"free_text": "lives at 1 Main St"}}, "metrics.free_text"),
    ],
)
def test_invalid_header_fields_are_rejected_naming_the_field(overrides: dict[str, Any], field: str) -> None:
    payload, _ = tensors_payload(delta())
    message = raw_message(header_fields(payload, **overrides), payload)  # json.dumps writes NaN and Infinity
    rejection = rejected(decode_update(message, key=b"client-007"), RejectionReason.INVALID_HEADER)
    assert rejection.detail.startswith(f"{field}:") or f"; {field}:" in rejection.detail, rejection.detail


def test_a_header_missing_a_required_field_is_an_invalid_header() -> None:
    payload, _ = tensors_payload(delta())
    fields = header_fields(payload)
    del fields["sample_count"]
    rejection = rejected(decode_update(raw_message(fields, payload)), RejectionReason.INVALID_HEADER)
    assert "sample_count" in rejection.detail


def test_every_invalid_field_is_named_in_one_rejection() -> None:
    payload, _ = tensors_payload(delta())
    fields = header_fields(payload, base_version=-1, sample_count=0, note="free text")
    rejection = rejected(decode_update(raw_message(fields, payload)), RejectionReason.INVALID_HEADER)
    for field in ("base_version", "sample_count", "note"):
        assert field in rejection.detail


def test_a_key_other_than_the_client_id_is_a_key_mismatch() -> None:
    message, _, _ = valid_message()
    rejection = rejected(decode_update(message, key=b"client-008"), RejectionReason.KEY_MISMATCH)
    assert "b'client-008'" in rejection.detail
    assert "'client-007'" in rejection.detail
    rejected(decode_update(message, key=b""), RejectionReason.KEY_MISMATCH)


def test_one_flipped_payload_byte_is_a_payload_hash_mismatch() -> None:
    message, header, payload = valid_message()
    last = len(message) - 1
    tampered = message[:last] + bytes([message[last] ^ 0x01])
    rejection = rejected(decode_update(tampered, key=b"client-007"), RejectionReason.PAYLOAD_HASH_MISMATCH)
    assert header.payload_sha256 in rejection.detail
    assert sha256_hex(tampered[len(message) - len(payload) :]) in rejection.detail


def test_a_payload_swapped_for_another_update_is_a_payload_hash_mismatch() -> None:
    _, _, payload = valid_message()
    other, _ = tensors_payload({name: array + 1 for name, array in delta().items()})
    message = raw_message(header_fields(payload), other)
    rejected(decode_update(message), RejectionReason.PAYLOAD_HASH_MISMATCH)


@pytest.mark.parametrize("payload", [b"", b"not safetensors", b"\xff" * 8 + b"{}", encode_tensors(delta())[:-1]])
def test_a_payload_that_is_not_safetensors_is_malformed_even_when_its_hash_matches(payload: bytes) -> None:
    message = raw_message(header_fields(payload), payload)
    rejection = rejected(decode_update(message, key=b"client-007"), RejectionReason.MALFORMED_PAYLOAD)
    assert rejection.detail.startswith("not a safetensors payload")
    assert len(rejection.detail) <= 300


def test_a_message_above_max_message_bytes_is_oversized() -> None:
    message, _, _ = valid_message()
    rejection = rejected(decode_update(message, max_message_bytes=len(message) - 1), RejectionReason.OVERSIZED)
    assert rejection.detail == f"{len(message)} bytes exceeds {len(message) - 1}"
    assert isinstance(decode_update(message, max_message_bytes=len(message)), DecodedUpdate)


def test_size_is_checked_before_anything_else() -> None:
    rejected(decode_update(b"garbage" * 10, max_message_bytes=8), RejectionReason.OVERSIZED)


def test_a_deeply_nested_header_is_an_invalid_header_not_a_crash() -> None:
    result = decode_update(raw_message(b"[" * 50_000, b""))
    rejected(result, RejectionReason.INVALID_HEADER)


def test_a_header_with_a_huge_integer_is_an_invalid_header_not_a_crash() -> None:
    payload, _ = tensors_payload(delta())
    huge = '"base_version": ' + "9" * 5000
    fields = json.dumps(header_fields(payload, base_version=0)).replace('"base_version": 0', huge)
    assert huge in fields and len(fields) < MAX_HEADER_BYTES
    result = decode_update(raw_message(fields.encode(), payload))
    rejected(result, RejectionReason.INVALID_HEADER)


def test_rejection_str_is_reason_then_detail() -> None:
    assert str(Rejection(RejectionReason.TOO_STALE, "staleness 9")) == "too_stale: staleness 9"


# --- global model messages -----------------------------------------------------------------------------------------


def model_message(parent_version: int | None = 6) -> tuple[bytes, ModelHeader, dict[str, np.ndarray]]:
    parameters = {**delta(), "optimizer.step": np.array(7, dtype=np.int64)}
    payload, payload_hash = tensors_payload(parameters)
    header = ModelHeader(
        model_name="har.mlp",
        version=7,
        parent_version=parent_version,
        parent_parameter_hash=None if parent_version is None else "ab" * 32,
        parameter_hash=parameter_hash(parameters),
        payload_sha256=payload_hash,
        created_at=CREATED_AT,
        update_count=4,
    )
    return encode_model(header, payload), header, parameters


@pytest.mark.parametrize("parent_version", [6, None])
def test_model_round_trip(parent_version: int | None) -> None:
    message, header, parameters = model_message(parent_version)
    assert message.startswith(MODEL_MAGIC)
    decoded = decode_model(message)
    assert isinstance(decoded, DecodedModel)
    assert decoded.header == header
    assert decoded.header.parent_version == parent_version
    assert set(decoded.parameters) == set(parameters)
    for name, array in parameters.items():
        assert decoded.parameters[name].dtype == array.dtype
        assert decoded.parameters[name].shape == array.shape
        assert decoded.parameters[name].tobytes() == array.tobytes()
    assert parameter_hash(decoded.parameters) == header.parameter_hash


def test_encode_model_refuses_a_header_whose_hash_does_not_name_the_payload() -> None:
    _, header, _ = model_message()
    with pytest.raises(ValueError, match="does not match"):
        encode_model(header, b"other payload")


def test_decode_model_raises_on_a_flipped_payload_byte() -> None:
    message, _, _ = model_message()
    tampered = message[:-1] + bytes([message[-1] ^ 0x80])
    with pytest.raises(ValueError, match="model version 7: payload does not match its hash"):
        decode_model(tampered)


def test_decode_model_raises_on_an_update_message() -> None:
    message, _, _ = valid_message()
    with pytest.raises(ValueError, match="magic"):
        decode_model(message)


@pytest.mark.parametrize("value", [b"", b"FSM1", b"FSM1\x00\x00\xff\xff{}"])
def test_decode_model_raises_on_bad_framing(value: bytes) -> None:
    with pytest.raises(ValueError, match="malformed_envelope"):
        decode_model(value)


def test_decode_model_raises_on_an_invalid_header() -> None:
    message, header, _ = model_message()
    payload = message[8 + struct.unpack(">I", message[4:8])[0] :]
    fields = json.loads(header.model_dump_json())
    fields["version"] = -1
    header_json = json.dumps(fields).encode()
    with pytest.raises(ValueError, match="version"):
        decode_model(MODEL_MAGIC + struct.pack(">I", len(header_json)) + header_json + payload)


def test_decode_model_raises_on_a_payload_that_is_not_safetensors() -> None:
    _, header, _ = model_message()
    payload = b"not safetensors"
    header_json = header.model_copy(update={"payload_sha256": sha256_hex(payload)}).model_dump_json().encode()
    with pytest.raises(ValueError, match="not a safetensors payload"):
        decode_model(MODEL_MAGIC + struct.pack(">I", len(header_json)) + header_json + UNSIGNED + payload)
