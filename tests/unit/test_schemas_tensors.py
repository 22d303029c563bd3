"""Safetensors encoding and the canonical parameter hash."""

import hashlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from schemas.tensors import decode_tensors, encode_tensors, parameter_hash, sha256_hex


def parameters() -> dict[str, np.ndarray]:
    return {
        "dense.weight": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "dense.bias": np.array([0.25, -0.5], dtype=np.float32),
        "optimizer.step": np.array(41, dtype=np.int64),
    }


def test_the_hash_is_64_lower_case_hex_digits() -> None:
    digest = parameter_hash(parameters())
    assert len(digest) == 64
    assert set(digest) <= set("0123456789abcdef")


def test_the_hash_does_not_depend_on_insertion_order() -> None:
    forward = parameters()
    backward = dict(reversed(list(forward.items())))
    assert list(forward) != list(backward)
    assert parameter_hash(forward) == parameter_hash(backward)


def test_the_hash_does_not_depend_on_memory_layout() -> None:
    c_order = parameters()
    fortran = {**c_order, "dense.weight": np.asfortranarray(c_order["dense.weight"])}
    assert not fortran["dense.weight"].flags.c_contiguous
    strided = np.arange(12, dtype=np.float32)[::2]
    assert parameter_hash(fortran) == parameter_hash(c_order)
    assert parameter_hash({"w": strided}) == parameter_hash({"w": strided.copy()})


def test_the_hash_is_deterministic_across_copies() -> None:
    assert parameter_hash(parameters()) == parameter_hash({k: v.copy() for k, v in parameters().items()})


def test_the_hash_changes_when_one_value_changes() -> None:
    changed = parameters()
    changed["dense.weight"][1, 2] = np.nextafter(changed["dense.weight"][1, 2], np.float32(np.inf))
    assert parameter_hash(changed) != parameter_hash(parameters())


def test_the_hash_tells_negative_zero_from_zero() -> None:
    assert parameter_hash({"w": np.array([0.0], np.float32)}) != parameter_hash({"w": np.array([-0.0], np.float32)})


def test_the_hash_changes_when_one_dtype_changes_over_the_same_bytes() -> None:
    original = parameters()
    reinterpreted = {**original, "dense.bias": original["dense.bias"].view(np.int32)}
    assert reinterpreted["dense.bias"].tobytes() == original["dense.bias"].tobytes()
    assert parameter_hash(reinterpreted) != parameter_hash(original)


def test_the_hash_changes_when_one_dtype_changes_with_equal_values() -> None:
    original = parameters()
    widened = {**original, "dense.bias": original["dense.bias"].astype(np.float64)}
    assert np.array_equal(widened["dense.bias"], original["dense.bias"])
    assert parameter_hash(widened) != parameter_hash(original)


@pytest.mark.parametrize("shape", [(3, 2), (6,), (1, 6), (6, 1), (2, 3, 1)])
def test_the_hash_changes_when_one_shape_changes_over_the_same_bytes(shape: tuple[int, ...]) -> None:
    original = parameters()
    reshaped = {**original, "dense.weight": original["dense.weight"].reshape(shape)}
    assert reshaped["dense.weight"].tobytes() == original["dense.weight"].tobytes()
    assert parameter_hash(reshaped) != parameter_hash(original)


def test_the_hash_tells_a_scalar_from_a_one_element_vector() -> None:
    step = np.array(41, dtype=np.int64)
    assert parameter_hash({"step": step}) != parameter_hash({"step": step.reshape(1)})


def test_the_hash_changes_when_one_name_changes() -> None:
    original = parameters()
    renamed = {("dense.kernel" if name == "dense.weight" else name): array for name, array in original.items()}
    assert parameter_hash(renamed) != parameter_hash(original)


def test_the_hash_changes_when_a_tensor_is_added_or_removed() -> None:
    original = parameters()
    fewer = {name: array for name, array in original.items() if name != "dense.bias"}
    more = {**original, "extra": np.zeros(0, dtype=np.float32)}
    hashes = {parameter_hash(original), parameter_hash(fewer), parameter_hash(more)}
    assert len(hashes) == 3


def test_moving_bytes_between_tensors_changes_the_hash() -> None:
    # same names, dtypes and total bytes; only the split between tensors differs
    first = {"a": np.array([1, 2], np.float32), "b": np.array([3], np.float32)}
    second = {"a": np.array([1], np.float32), "b": np.array([2, 3], np.float32)}
    assert parameter_hash(first) != parameter_hash(second)


def test_two_different_parameter_sets_never_share_a_hash_even_with_nul_in_names() -> None:
    first = {"x": np.frombuffer(b"abcd", dtype="<f4").copy(), "y": np.zeros(0, np.uint8)}
    second = {"x\x00<f4\x00(1,)\x00abcdy": np.zeros(0, np.uint8)}
    assert parameter_hash(first) != parameter_hash(second)


def test_sha256_hex_is_the_plain_digest_of_the_bytes() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_hex(b"fedstream") == hashlib.sha256(b"fedstream").hexdigest()


# --- encode / decode -----------------------------------------------------------------------------------------------


def test_round_trip_keeps_names_dtypes_shapes_and_bits() -> None:
    original = parameters()
    decoded = decode_tensors(encode_tensors(original))
    assert set(decoded) == set(original)
    for name, array in original.items():
        assert decoded[name].dtype == array.dtype, name
        assert decoded[name].shape == array.shape, name
        assert decoded[name].tobytes() == array.tobytes(), name
    assert parameter_hash(decoded) == parameter_hash(original)


def test_an_optimizer_step_counter_stays_a_0d_int64() -> None:
    decoded = decode_tensors(encode_tensors({"step": np.array(2**40 + 3, dtype=np.int64)}))
    step = decoded["step"]
    assert step.ndim == 0
    assert step.shape == ()
    assert step.dtype == np.int64
    assert int(step) == 2**40 + 3


def test_a_0d_float_stays_0d() -> None:
    decoded = decode_tensors(encode_tensors({"lr": np.array(0.125, dtype=np.float32)}))
    assert decoded["lr"].shape == ()
    assert decoded["lr"].dtype == np.float32
    assert float(decoded["lr"]) == 0.125


def test_nan_payloads_and_negative_zero_survive_bit_for_bit() -> None:
    bits = np.array([0x7FC00001, 0xFFC00000, 0x80000000, 0x7F800000, 0x00000001], dtype=np.uint32)
    original = {"w": bits.view(np.float32)}
    decoded = decode_tensors(encode_tensors(original))
    assert decoded["w"].view(np.uint32).tolist() == bits.tolist()


def test_non_contiguous_arrays_are_encoded_by_value() -> None:
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    decoded = decode_tensors(encode_tensors({"t": matrix.T, "s": matrix[:, ::2]}))
    assert np.array_equal(decoded["t"], matrix.T)
    assert np.array_equal(decoded["s"], matrix[:, ::2])


def test_encoding_is_deterministic_and_independent_of_insertion_order() -> None:
    forward = parameters()
    backward = dict(reversed(list(forward.items())))
    assert encode_tensors(forward) == encode_tensors(backward)


def test_an_empty_set_of_tensors_round_trips() -> None:
    assert decode_tensors(encode_tensors({})) == {}


def test_a_payload_is_never_pickle() -> None:
    payload = encode_tensors(parameters())
    (header_length,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8 : 8 + header_length])
    assert header["optimizer.step"]["dtype"] == "I64"
    assert header["optimizer.step"]["shape"] == []
    assert header["dense.weight"]["dtype"] == "F32"
    assert header["dense.weight"]["shape"] == [2, 3]
    assert not payload.startswith(b"\x80")  # pickle protocol 2+ opcode


def valid_payload() -> bytes:
    return encode_tensors(parameters())


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"garbage",
        b"\x00" * 8,
        b"\xff" * 16,
        struct.pack("<Q", 2) + b"[]",
        struct.pack("<Q", 4) + b"{}",
        struct.pack("<Q", 100) + b"{}",
        valid_payload()[:-1],
        valid_payload() + b"\x00",
        valid_payload()[:20],
    ],
    ids=["empty", "text", "zero-length", "ones", "json-list", "short-header", "long-header", "cut", "extra", "head"],
)
def test_decode_tensors_raises_value_error_on_garbage(payload: bytes) -> None:
    with pytest.raises(ValueError, match="not a safetensors payload"):
        decode_tensors(payload)


def crafted(header: object, data: bytes = b"") -> bytes:
    header_json = json.dumps(header).encode()
    return struct.pack("<Q", len(header_json)) + header_json + data


@pytest.mark.parametrize(
    "payload",
    [
        crafted({"a": {"dtype": "F32", "shape": [2**63, 2**63], "data_offsets": [0, 0]}}),
        crafted({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\x00" * 4),
        crafted({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\x00" * 4),
        crafted({"a": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}, b"\x00" * 2),
        crafted({"a": {"dtype": "NOPE", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4),
        crafted({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\x00" * 4),
    ],
    ids=["overflow", "short-data", "reversed-offsets", "bf16-no-numpy", "unknown-dtype", "negative-shape"],
)
def test_decode_tensors_raises_value_error_on_crafted_headers(payload: bytes) -> None:
    with pytest.raises(ValueError, match="not a safetensors payload"):
        decode_tensors(payload)


little_endian_dtypes = st.sampled_from(["<f4", "<f8", "<f2", "<i8", "<i4", "<u1", "|b1"]).map(np.dtype)
named_arrays = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(lambda name: name != "__metadata__"),
    little_endian_dtypes.flatmap(
        lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    ),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(named_arrays)
def test_round_trip_keeps_every_array_and_its_hash(tensors: dict[str, np.ndarray]) -> None:
    decoded = decode_tensors(encode_tensors(tensors))
    assert set(decoded) == set(tensors)
    for name, array in tensors.items():
        assert decoded[name].dtype == array.dtype
        assert decoded[name].shape == array.shape
        assert decoded[name].tobytes() == array.tobytes()
    assert parameter_hash(decoded) == parameter_hash(tensors)
