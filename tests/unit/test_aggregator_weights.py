import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from aggregator import (
    EmptyBufferError,
    InvalidConfigError,
    ShapeMismatchError,
    add,
    check_same_structure,
    l2_norm,
    parameter_count,
    scale,
    subtract,
    weighted_sum,
    zeros_like,
)
from schemas.tensors import Tensors

A: Tensors = {"w": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), "b": np.array([0.5], np.float32)}
B: Tensors = {"w": np.array([[0.5, 0.5], [-1.0, 2.0]], np.float32), "b": np.array([-0.5], np.float32)}


def test_add_and_subtract() -> None:
    np.testing.assert_array_equal(add(A, B)["w"], [[1.5, 2.5], [2.0, 6.0]])
    np.testing.assert_array_equal(subtract(A, B)["b"], [1.0])
    assert all(value.dtype == np.float32 for value in add(A, B).values())


def test_scale() -> None:
    np.testing.assert_array_equal(scale(A, -2.0)["w"], [[-2.0, -4.0], [-6.0, -8.0]])
    with pytest.raises(InvalidConfigError, match="nan"):
        scale(A, math.nan)


def test_weighted_sum_hand_computed() -> None:
    # 0.25 * A + 0.75 * B: w = [[0.25 + 0.375, 0.5 + 0.375], [0.75 - 0.75, 1 + 1.5]], b = [0.125 - 0.375]
    result = weighted_sum([A, B], [0.25, 0.75])
    np.testing.assert_allclose(result["w"], [[0.625, 0.875], [0.0, 2.5]])
    np.testing.assert_allclose(result["b"], [-0.25])
    assert result["w"].dtype == np.float32


def test_weighted_sum_accumulates_in_float64() -> None:
    # In float32, 1e8 + 1 - 1e8 = 0; in float64 it is exactly 1.
    big = {"w": np.array([1e8], np.float32)}
    one = {"w": np.array([1.0], np.float32)}
    assert weighted_sum([big, one, big], [1.0, 1.0, -1.0])["w"][0] == 1.0


def test_weighted_sum_errors() -> None:
    with pytest.raises(EmptyBufferError):
        weighted_sum([], [])
    with pytest.raises(InvalidConfigError, match="2 sets of weights but 1 coefficients"):
        weighted_sum([A, B], [1.0])
    with pytest.raises(InvalidConfigError, match="inf"):
        weighted_sum([A, B], [1.0, math.inf])
    with pytest.raises(ShapeMismatchError, match="'b'"):
        weighted_sum([A, {"w": A["w"]}], [0.5, 0.5])


def test_check_same_structure_names_the_difference() -> None:
    check_same_structure(A, B)
    with pytest.raises(ShapeMismatchError, match=r"only in first \['b'\]"):
        check_same_structure(A, {"w": A["w"]})
    with pytest.raises(ShapeMismatchError, match=r"'w' has shape \(2, 2\) in first and \(4,\)"):
        check_same_structure(A, {"w": np.zeros(4, np.float32), "b": A["b"]})


def test_l2_norm_and_parameter_count() -> None:
    # sqrt(1 + 4 + 9 + 16 + 0.25) = sqrt(30.25) = 5.5
    assert l2_norm(A) == pytest.approx(5.5)
    assert parameter_count(A) == 5
    assert parameter_count({}) == 0


def test_zeros_like() -> None:
    zeros = zeros_like(A)
    assert zeros.keys() == A.keys()
    assert zeros["w"].shape == (2, 2)
    assert not zeros["w"].any()


@given(
    first=arrays(np.float32, 5, elements=st.floats(-1e3, 1e3, width=32)),
    second=arrays(np.float32, 5, elements=st.floats(-1e3, 1e3, width=32)),
)
def test_subtract_then_add_recovers_within_rounding(first: np.ndarray, second: np.ndarray) -> None:
    a, b = {"x": first}, {"x": second}
    np.testing.assert_allclose(add(subtract(a, b), b)["x"], first, rtol=1e-6, atol=1e-4)
