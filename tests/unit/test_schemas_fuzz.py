"""Property tests: decoding and validation turn any input into data (an update or a rejection), never a crash.

What is guaranteed for a mutated valid message: the payload hash is checked after the header is parsed, so a
change anywhere outside the header JSON cannot decode; a change inside the header JSON may yield another header,
which is acceptable only because that header validates and still names the untouched payload by its hash.
"""

import json
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from schemas.messages import ClientMetrics, UpdateHeader
from schemas.rejections import Rejection, RejectionReason
from schemas.tensors import sha256_hex
from schemas.validation import validate_update
from schemas.wire import (
    SIGNATURE_BYTES,
    UNSIGNED,
    UPDATE_MAGIC,
    DecodedUpdate,
    decode_update,
    encode_update,
    tensors_payload,
)

MODEL = "har.mlp"
CLIENT = "client-007"
KEY = CLIENT.encode()
REFERENCE = {
    "dense.weight": np.zeros((3, 2), dtype=np.float32),
    "dense.bias": np.zeros(3, dtype=np.float32),
}
DELTA = {
    "dense.weight": np.array([[0.5, -0.25], [1.0, 2.0], [-0.0, 3.5]], dtype=np.float32),
    "dense.bias": np.array([0.125, -1.0, 4.0], dtype=np.float32),
}
PAYLOAD, PAYLOAD_HASH = tensors_payload(DELTA)
HEADER = UpdateHeader(
    update_id="0123456789abcdef0123456789abcdef",
    client_id=CLIENT,
    model_name=MODEL,
    base_version=12,
    sample_count=345,
    created_at=datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
    payload_sha256=PAYLOAD_HASH,
    metrics=ClientMetrics(validation_loss=0.69, validation_accuracy=0.5, validation_count=40),
)
CLIENT_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
MESSAGE = encode_update(HEADER, PAYLOAD, CLIENT_KEY.sign)
HEADER_START = 8  # magic and big-endian length
HEADER_END = HEADER_START + struct.unpack(">I", MESSAGE[4:8])[0]
PAYLOAD_START = HEADER_END + SIGNATURE_BYTES
assert MESSAGE[PAYLOAD_START:] == PAYLOAD


def signature_verifies(result: DecodedUpdate) -> bool:
    try:
        CLIENT_KEY.public_key().verify(result.signature, result.signed_bytes)
    except InvalidSignature:
        return False
    return True


FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode(value: bytes) -> DecodedUpdate | Rejection:
    result = decode_update(value, key=KEY)
    assert isinstance(result, DecodedUpdate | Rejection), type(result)
    if isinstance(result, Rejection):
        assert isinstance(result.reason, RejectionReason)
        assert isinstance(result.detail, str)
    return result


def assert_is_the_original_payload(result: DecodedUpdate) -> None:
    assert result.header.payload_sha256 == PAYLOAD_HASH
    assert set(result.delta) == set(DELTA)
    for name, array in DELTA.items():
        assert result.delta[name].dtype == array.dtype
        assert result.delta[name].shape == array.shape
        assert result.delta[name].tobytes() == array.tobytes()


def assert_header_validates(header: UpdateHeader) -> None:
    assert UpdateHeader.model_validate(header.model_dump()) == header
    assert UpdateHeader.model_validate_json(header.model_dump_json()) == header


def framed(header_json: bytes, payload: bytes) -> bytes:
    return UPDATE_MAGIC + struct.pack(">I", len(header_json)) + header_json + UNSIGNED + payload


# --- (a) arbitrary bytes -------------------------------------------------------------------------------------------


@settings(FAST, max_examples=1000)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_decode_to_an_update_or_a_rejection(value: bytes) -> None:
    assert isinstance(decode(value), Rejection)


@settings(FAST, max_examples=1000)
@given(st.binary(max_size=1024), st.binary(max_size=1024))
def test_arbitrary_bytes_behind_valid_framing_are_rejected_not_raised(header_json: bytes, payload: bytes) -> None:
    assert isinstance(decode(framed(header_json, payload)), Rejection)


@settings(FAST, max_examples=500)
@given(st.binary(min_size=4, max_size=4), st.binary(max_size=600))
def test_arbitrary_length_fields_are_rejected_not_raised(length: bytes, rest: bytes) -> None:
    assert isinstance(decode(UPDATE_MAGIC + length + rest), Rejection)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
HEADER_FIELDS = [*UpdateHeader.model_fields, "note"]


@settings(FAST, max_examples=500)
@given(
    st.dictionaries(st.sampled_from(HEADER_FIELDS), json_values, max_size=4), st.sets(st.sampled_from(HEADER_FIELDS))
)
def test_arbitrary_header_field_values_decode_to_a_valid_header_or_a_rejection(
    overrides: dict[str, Any], removed: set[str]
) -> None:
    fields = {**json.loads(HEADER.model_dump_json()), **overrides}
    for name in removed - set(overrides):
        fields.pop(name, None)
    result = decode(framed(json.dumps(fields).encode(), PAYLOAD))
    if isinstance(result, DecodedUpdate):
        assert_header_validates(result.header)
        assert_is_the_original_payload(result)
        assert result.header.client_id == CLIENT
        assert "note" not in fields


tensor_specs = st.dictionaries(
    st.text(max_size=8),
    st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["F32", "F64", "F16", "BF16", "I64", "U8", "BOOL", "C64", "F8_E4M3", "X"]),
            "shape": st.lists(st.integers(-2, 2**64), max_size=3),
            "data_offsets": st.lists(st.integers(-1, 2**64), min_size=0, max_size=3),
        }
    ),
    max_size=3,
)


@settings(FAST, max_examples=500)
@given(tensor_specs, st.binary(max_size=64), st.integers(-2, 2))
def test_crafted_safetensors_behind_a_matching_hash_decode_or_are_malformed(
    specs: dict[str, Any], data: bytes, length_error: int
) -> None:
    tensor_header = json.dumps(specs).encode()
    payload = struct.pack("<Q", max(0, len(tensor_header) + length_error)) + tensor_header + data
    header = HEADER.model_copy(update={"payload_sha256": sha256_hex(payload)})
    result = decode(encode_update(header, payload))
    if isinstance(result, Rejection):
        assert result.reason is RejectionReason.MALFORMED_PAYLOAD
        return
    problems = validate_update(result, model_name=MODEL, reference=REFERENCE, current_version=12, max_staleness=4)
    assert all(isinstance(problem, Rejection) for problem in problems)
    assert problems or set(result.delta) == set(REFERENCE)


# --- (b) mutations of a valid message ------------------------------------------------------------------------------

REGIONS = {"magic": (0, 4), "length": (4, HEADER_START), "header": (HEADER_START, HEADER_END)}
REGIONS["signature"] = (HEADER_END, PAYLOAD_START)
REGIONS["payload"] = (PAYLOAD_START, len(MESSAGE))


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, str, int, bytes]:
    """(kind, region, position, mutated message) for one flip, insert, delete or truncation."""
    kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
    region = draw(st.sampled_from(list(REGIONS)))
    start, end = REGIONS[region]
    position = draw(st.integers(start, end - 1))
    if kind == "flip":
        mask = draw(st.integers(1, 255))
        mutated = MESSAGE[:position] + bytes([MESSAGE[position] ^ mask]) + MESSAGE[position + 1 :]
    elif kind == "insert":
        mutated = MESSAGE[:position] + bytes([draw(st.integers(0, 255))]) + MESSAGE[position:]
    elif kind == "delete":
        mutated = MESSAGE[:position] + MESSAGE[position + 1 :]
    else:
        mutated = MESSAGE[:position]
    assert mutated != MESSAGE
    return kind, region, position, mutated


@settings(FAST, max_examples=2000)
@given(mutations())
def test_a_mutated_signed_message_never_decodes_to_an_update_whose_signature_verifies(
    mutation: tuple[str, str, int, bytes],
) -> None:
    kind, region, position, mutated = mutation
    result = decode(mutated)
    event(f"{kind} in {region}: {'decoded' if isinstance(result, DecodedUpdate) else result.reason.value}")
    if isinstance(result, DecodedUpdate):
        # only a same-length change inside the header or the signature can decode: anything else moves or alters
        # the payload; and then the signature no longer verifies, so the job rejects it as bad_signature
        assert kind == "flip" and region in ("header", "signature"), (kind, region, position)
        assert not signature_verifies(result)
        assert_header_validates(result.header)
        assert_is_the_original_payload(result)
        assert result.header.client_id == CLIENT  # the key is checked
        problems = validate_update(
            result, model_name=MODEL, reference=REFERENCE, current_version=20, max_staleness=None
        )
        assert all(isinstance(problem, Rejection) for problem in problems)
        return
    if region == "magic":
        # inserting the magic's own last byte keeps the magic and shifts the length field instead
        assert result.reason is RejectionReason.MALFORMED_ENVELOPE, str(result)
    elif region == "payload" or (region == "signature" and kind in ("insert", "delete")):
        assert result.reason is RejectionReason.PAYLOAD_HASH_MISMATCH, str(result)
    elif kind == "truncate":
        assert result.reason is RejectionReason.MALFORMED_ENVELOPE, str(result)


def test_a_header_flip_can_yield_another_valid_header_over_the_same_payload() -> None:
    """The acceptable survivor: base_version 12 -> 13 is a valid header, and the payload is still the client's."""
    position = MESSAGE.index(b'"base_version":12') + len(b'"base_version":1')
    mutated = MESSAGE[:position] + b"3" + MESSAGE[position + 1 :]
    result = decode(mutated)
    assert isinstance(result, DecodedUpdate), str(result)
    assert result.header.base_version == 13
    assert result.header.model_copy(update={"base_version": 12}) == HEADER
    assert_is_the_original_payload(result)
    assert not signature_verifies(result), "the signature covers the header: the job refuses this one"


def test_the_unmutated_signed_message_verifies() -> None:
    result = decode(MESSAGE)
    assert isinstance(result, DecodedUpdate)
    assert result.is_signed and signature_verifies(result)


def test_a_header_flip_to_another_payload_hash_is_caught() -> None:
    position = MESSAGE.index(PAYLOAD_HASH.encode())
    replacement = b"0" if MESSAGE[position : position + 1] != b"0" else b"1"
    mutated = MESSAGE[:position] + replacement + MESSAGE[position + 1 :]
    result = decode(mutated)
    assert isinstance(result, Rejection)
    assert result.reason is RejectionReason.PAYLOAD_HASH_MISMATCH


# --- (c) validation of decoded updates -----------------------------------------------------------------------------

delta_dtypes = st.sampled_from(["<f4", "<f8", "<f2", "<i8", "<u1", "|b1", "<c8"]).map(np.dtype)
delta_arrays = st.one_of(
    st.sampled_from(list(REFERENCE)).map(lambda name: (name, np.dtype(np.float32), REFERENCE[name].shape)),
    st.tuples(
        st.sampled_from([*REFERENCE, "extra"]),
        delta_dtypes,
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3),
    ),
).flatmap(lambda spec: st.tuples(st.just(spec[0]), hnp.arrays(spec[1], spec[2])))
deltas = st.lists(delta_arrays, max_size=4).map(dict)


def expected_reasons(
    delta: dict[str, np.ndarray], base_version: int, current_version: int, max_staleness: int | None
) -> list[RejectionReason]:
    """The specification of validate_update, written independently of its code."""
    found = []
    if set(delta) != set(REFERENCE):
        found.append(RejectionReason.SHAPE_MISMATCH)
    for name in set(delta) & set(REFERENCE):
        if delta[name].dtype != REFERENCE[name].dtype:
            found.append(RejectionReason.DTYPE_MISMATCH)
        elif delta[name].shape != REFERENCE[name].shape:
            found.append(RejectionReason.SHAPE_MISMATCH)
        elif np.isnan(delta[name]).any() or np.isinf(delta[name]).any():
            found.append(RejectionReason.NON_FINITE)
    staleness = current_version - base_version
    if staleness < 0:
        found.append(RejectionReason.FUTURE_BASE_VERSION)
    elif max_staleness is not None and staleness > max_staleness:
        found.append(RejectionReason.TOO_STALE)
    return sorted(found)


@settings(FAST, max_examples=300)
@given(
    deltas,
    st.integers(0, 50),
    st.integers(0, 50),
    st.none() | st.integers(0, 10),
    st.sampled_from([MODEL, "other.model"]),
)
def test_validation_of_any_decoded_update_reports_exactly_what_is_wrong(
    delta: dict[str, np.ndarray], base_version: int, current_version: int, max_staleness: int | None, model: str
) -> None:
    payload, payload_hash = tensors_payload(delta)
    header = HEADER.model_copy(
        update={"payload_sha256": payload_hash, "base_version": base_version, "model_name": model}
    )
    result = decode(encode_update(header, payload))
    assert isinstance(result, DecodedUpdate), str(result)
    problems = validate_update(
        result, model_name=MODEL, reference=REFERENCE, current_version=current_version, max_staleness=max_staleness
    )
    assert all(isinstance(problem, Rejection) and problem.detail for problem in problems)
    if model != MODEL:
        assert [problem.reason for problem in problems] == [RejectionReason.UNKNOWN_MODEL]
    else:
        assert sorted(problem.reason for problem in problems) == expected_reasons(
            delta, base_version, current_version, max_staleness
        )


# --- headers round trip --------------------------------------------------------------------------------------------

identifiers = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True)
minute_offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda minutes: timezone(timedelta(minutes=minutes)))
finite = st.floats(allow_nan=False, allow_infinity=False)
headers = st.builds(
    UpdateHeader,
    update_id=st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
    client_id=identifiers,
    model_name=identifiers,
    base_version=st.integers(0, 2**63 - 1),
    sample_count=st.integers(1, 2**63 - 1),
    created_at=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC) | minute_offsets
    ),
    payload_sha256=st.just(PAYLOAD_HASH),
    metrics=st.builds(
        ClientMetrics,
        validation_loss=st.none() | finite,
        validation_accuracy=st.none() | st.floats(0.0, 1.0),
        validation_count=st.integers(0, 2**31),
        training_loss=st.none() | finite,
        training_steps=st.integers(0, 2**31),
    ),
)


@settings(FAST, max_examples=300)
@given(headers)
def test_every_valid_header_round_trips_unchanged(header: UpdateHeader) -> None:
    result = decode_update(encode_update(header, PAYLOAD), key=header.client_id.encode())
    assert isinstance(result, DecodedUpdate), str(result)
    assert result.header == header
    assert result.header.created_at.utcoffset() == header.created_at.utcoffset()
    assert_is_the_original_payload(result)


# --- (d) every field over its full range ---------------------------------------------------------------------------

second_offsets = st.integers(-(24 * 3600 - 1), 24 * 3600 - 1).map(lambda seconds: timezone(timedelta(seconds=seconds)))
any_datetime_text = (
    st.datetimes(
        min_value=datetime(1, 1, 1),
        max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
        timezones=st.none() | second_offsets,
    )
    | st.builds(
        datetime.replace,
        st.sampled_from([datetime.min, datetime.max, datetime(1970, 1, 1), datetime(9999, 12, 30)]),
        tzinfo=st.none() | second_offsets,
    )
).map(datetime.isoformat)
edge_integers = st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1])
any_integer = edge_integers | st.integers() | st.integers(-(10**400), 10**400)
any_json = st.recursive(
    st.none() | st.booleans() | any_integer | st.floats() | st.text(max_size=40) | any_datetime_text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
VALID_FIELDS = json.loads(HEADER.model_dump_json())
full_range_fields = {
    "schema_version": st.just(1) | any_json,
    "update_id": st.just(HEADER.update_id) | any_json,
    "client_id": st.just(CLIENT) | identifiers | any_json,
    "model_name": st.just(MODEL) | identifiers | any_json,
    "base_version": any_integer | any_json,
    "sample_count": any_integer | any_json,
    "created_at": any_datetime_text | any_json,
    "payload_sha256": st.just(PAYLOAD_HASH) | any_json,
    "metrics": st.fixed_dictionaries(
        {},
        optional={
            "validation_loss": st.none() | st.floats() | any_json,
            "validation_accuracy": st.none() | st.floats() | any_json,
            "validation_count": any_integer | any_json,
            "training_loss": st.none() | st.floats() | any_json,
            "training_steps": any_integer | any_json,
        },
    )
    | any_json,
}


def assert_fits_every_column(header: UpdateHeader) -> None:
    """What the job writes from a header must fit Delta's types: LONG counters, timestamps of years 1-9999."""
    from streaming_jobs.update_batch import _update_row

    assert 0 <= header.base_version <= 2**63 - 1 and 0 < header.sample_count <= 2**63 - 1
    assert header.created_at.utcoffset() == timedelta(0)
    assert datetime(1970, 1, 1, tzinfo=UTC) <= header.created_at <= datetime(9999, 12, 30, tzinfo=UTC)
    assert 0 <= header.metrics.validation_count <= 2**63 - 1 and 0 <= header.metrics.training_steps <= 2**63 - 1
    message = _KafkaMessage(topic="fl.updates", partition=0, offset=2**63 - 1, timestamp=datetime.now(UTC))
    decoded = DecodedUpdate(header=header, delta=DELTA, payload=PAYLOAD)
    row = _update_row(message, decoded, datetime.now(UTC), batch_id=2**63 - 1)  # type: ignore[arg-type]
    assert row.client_created_at == header.created_at


class _KafkaMessage:
    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)


@settings(FAST, max_examples=3000)
@given(st.fixed_dictionaries({}, optional=full_range_fields), st.sampled_from(["compact", "spaced", "ascii"]))
def test_every_field_over_its_full_range_decodes_or_is_rejected(fields: dict[str, Any], style: str) -> None:
    header_json = json.dumps(
        fields, separators=(",", ":") if style == "compact" else None, ensure_ascii=style == "ascii"
    )
    result = decode(framed(header_json.encode(), PAYLOAD))
    event(f"{'decoded' if isinstance(result, DecodedUpdate) else result.reason.value}")
    if isinstance(result, DecodedUpdate):
        assert_header_validates(result.header)
        assert_fits_every_column(result.header)


@settings(FAST, max_examples=1000)
@given(any_datetime_text, st.sampled_from(["created_at"]))
def test_created_at_anywhere_from_year_1_to_9999_with_any_offset_decodes_or_is_rejected(
    moment: str, field: str
) -> None:
    result = decode(framed(json.dumps({**VALID_FIELDS, field: moment}).encode(), PAYLOAD))
    if isinstance(result, Rejection):
        assert result.reason is RejectionReason.INVALID_HEADER, str(result)
    else:
        assert_fits_every_column(result.header)


def test_created_at_at_the_edges_of_datetime_is_rejected_not_raised() -> None:
    """Normalising these to UTC leaves datetime's range: they once raised OverflowError out of decoding."""
    for moment in (
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
    ):
        result = decode(framed(json.dumps({**VALID_FIELDS, "created_at": moment}).encode(), PAYLOAD))
        assert isinstance(result, Rejection), moment
        assert result.reason is RejectionReason.INVALID_HEADER and "created_at" in result.detail, str(result)


@settings(FAST, max_examples=300)
@given(st.binary(min_size=1, max_size=256).filter(lambda raw: not _is_utf8(raw)), st.sampled_from(list(VALID_FIELDS)))
def test_non_utf8_bytes_in_any_field_are_rejected(raw: bytes, field: str) -> None:
    text = json.dumps({**VALID_FIELDS, field: "@@"}).encode()
    header_json = text.replace(b'"@@"', b'"' + raw.replace(b'"', b"").replace(b"\\", b"") + b'"', 1)
    result = decode(framed(header_json, PAYLOAD))
    assert isinstance(result, Rejection)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_huge_arrays_and_deep_nesting_in_a_field_are_rejected() -> None:
    for value in ([0] * 20_000, "x" * 60_000, [[[[[[[[0]]]]]]]] * 1000):
        header_json = json.dumps({**VALID_FIELDS, "base_version": value}).encode()
        result = decode(framed(header_json, PAYLOAD))
        assert isinstance(result, Rejection)
        assert result.reason in (RejectionReason.INVALID_HEADER, RejectionReason.MALFORMED_ENVELOPE), str(result)
    deep = ("[" * 100_000 + "]" * 100_000).encode()[: 60 * 1024]
    assert isinstance(decode(framed(deep, PAYLOAD)), Rejection)
