"""A version encoded as chunks from a stream of its values: the same messages as from the whole tensors."""

from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest

from schemas.chunks import assemble_model, decode_model_chunk, encode_model_chunks, encode_model_chunks_streamed
from schemas.messages import ModelHeader
from schemas.tensors import parameter_hash, parameter_hash_streamed

HEADER = ModelHeader(
    model_name="har.cnn",
    version=3,
    parent_version=2,
    parent_parameter_hash="a" * 64,
    parameter_hash="b" * 64,
    payload_sha256="0" * 64,
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
    update_count=4,
)
LIMIT = 100_000


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "body": rng.normal(size=(300, 1001)).astype(np.float32),
        "bias": rng.normal(size=7).astype(np.float32),
        "scale": np.asarray(rng.normal(), dtype=np.float32),  # 0-d
    }


def _flat(model: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([model[name].reshape(-1) for name in sorted(model)])


def _pieces(flat: np.ndarray, sizes: list[int]) -> Iterator[np.ndarray]:
    start = 0
    for size in sizes:
        yield flat[start : start + size]
        start += size
    yield flat[start:]


@pytest.mark.parametrize("sizes", [[], [1], [1, 0, 5000, 123_457] * 3, [24_990] * 12])
def test_streamed_chunks_are_the_whole_encoders_byte_for_byte(sizes: list[int]) -> None:
    model = _model()
    shapes = {name: array.shape for name, array in model.items()}
    flat = _flat(model)
    whole = encode_model_chunks(HEADER, dict(sorted(model.items())), max_message_bytes=LIMIT)
    streamed = list(encode_model_chunks_streamed(HEADER, shapes, lambda: _pieces(flat, sizes), max_message_bytes=LIMIT))
    assert len(streamed) > 10 and streamed == whole
    chunks = [decode_model_chunk(value, LIMIT) for value in reversed(streamed)]
    assembled = assemble_model(chunks)  # type: ignore[arg-type]
    assert not hasattr(assembled, "reason")
    assert all(np.array_equal(assembled.parameters[name], model[name]) for name in model)  # type: ignore[union-attr]


def test_values_that_change_between_the_passes_are_refused() -> None:
    model = _model()
    flat = _flat(model)
    passes = iter([flat, flat + 1])
    with pytest.raises(ValueError, match="changed between the two passes"):
        list(
            encode_model_chunks_streamed(
                HEADER, {n: a.shape for n, a in model.items()}, lambda: [next(passes)], max_message_bytes=LIMIT
            )
        )


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (np.zeros(10, np.float32), "the values number 10"),
        (np.zeros(300 * 1001 + 9, np.float32), "the values number"),
        (np.full(300 * 1001 + 8, np.nan, np.float32), "finite"),
    ],
)
def test_a_wrong_count_or_a_non_finite_value_is_refused(values: np.ndarray, problem: str) -> None:
    shapes = {name: array.shape for name, array in _model().items()}
    with pytest.raises(ValueError, match=problem):
        list(encode_model_chunks_streamed(HEADER, shapes, lambda: [values], max_message_bytes=LIMIT))


@pytest.mark.parametrize("sizes", [[], [1] * 50, [3, 0, 1000, 7]])
def test_the_parameter_hash_of_streamed_values_is_the_whole_tensors(sizes: list[int]) -> None:
    model = {**_model(), "empty": np.zeros((0, 3), np.float32)}
    shapes = {name: array.shape for name, array in model.items()}
    assert parameter_hash_streamed(shapes, _pieces(_flat(model), sizes)) == parameter_hash(model)
    with pytest.raises(ValueError, match="end inside"):
        parameter_hash_streamed(shapes, [_flat(model)[:-1]])
    with pytest.raises(ValueError, match="beyond"):
        parameter_hash_streamed(shapes, [_flat(model), np.zeros(2, np.float32)])
