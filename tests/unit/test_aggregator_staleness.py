import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator import (
    InvalidConfigError,
    InvalidStalenessError,
    StalenessPolicy,
    constant,
    hinge,
    inverse_sqrt,
    polynomial,
)


@pytest.mark.parametrize("staleness", [0, 1, 7, 1000])
def test_constant_is_one_at_every_staleness(staleness: int) -> None:
    assert constant(staleness) == 1.0


@pytest.mark.parametrize(
    ("staleness", "exponent", "expected"),
    [
        (0, 0.5, 1.0),  # (1 + 0) ** -0.5 = 1
        (3, 0.5, 0.5),  # (1 + 3) ** -0.5 = 1 / sqrt(4) = 1/2
        (8, 0.5, 1 / 3),  # (1 + 8) ** -0.5 = 1 / sqrt(9) = 1/3
        (1, 2.0, 0.25),  # (1 + 1) ** -2 = 1/4
        (4, 1.0, 0.2),  # (1 + 4) ** -1 = 1/5
        (9, 0.0, 1.0),  # exponent 0: no decay
    ],
)
def test_polynomial_hand_computed(staleness: int, exponent: float, expected: float) -> None:
    assert polynomial(staleness, exponent) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("staleness", "expected"),
    [
        (0, 1.0),  # s <= b = 4: full weight
        (4, 1.0),  # s = b: still full weight
        (5, 1 / 11),  # 1 / (10 * (5 - 4) + 1) = 1/11
        (6, 1 / 21),  # 1 / (10 * (6 - 4) + 1) = 1/21
        (14, 1 / 101),  # 1 / (10 * 10 + 1) = 1/101
    ],
)
def test_hinge_hand_computed_with_defaults(staleness: int, expected: float) -> None:
    assert hinge(staleness, a=10.0, b=4) == pytest.approx(expected, rel=1e-12)


def test_hinge_other_parameters() -> None:
    # a = 0.5, b = 0: 1 / (0.5 * 2 + 1) = 1/2 at s = 2
    assert hinge(2, a=0.5, b=0) == pytest.approx(0.5)
    assert hinge(0, a=0.5, b=0) == 1.0


@pytest.mark.parametrize(
    ("staleness", "expected"),
    [(0, 1.0), (3, 0.5), (15, 0.25), (99, 0.1)],  # 1/sqrt(1), 1/sqrt(4), 1/sqrt(16), 1/sqrt(100)
)
def test_inverse_sqrt_hand_computed(staleness: int, expected: float) -> None:
    assert inverse_sqrt(staleness) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("function", [constant, inverse_sqrt, polynomial, hinge])
@pytest.mark.parametrize("bad", [-1, -10])
def test_negative_staleness_is_rejected_with_the_value(function: object, bad: int) -> None:
    with pytest.raises(InvalidStalenessError, match=str(bad)):
        function(bad)


@pytest.mark.parametrize("bad", [1.5, "3", None, True])
def test_non_integer_staleness_is_rejected(bad: object) -> None:
    with pytest.raises(InvalidStalenessError, match="integer"):
        polynomial(bad)


def test_numpy_integer_staleness_is_accepted() -> None:
    assert polynomial(np.int64(3), 0.5) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("policy", "staleness", "expected"),
    [
        (StalenessPolicy("constant"), 12, 1.0),
        (StalenessPolicy("polynomial", exponent=0.5), 3, 0.5),
        (StalenessPolicy("polynomial", exponent=1.0), 3, 0.25),
        (StalenessPolicy("hinge", hinge_a=10.0, hinge_b=4), 5, 1 / 11),
        (StalenessPolicy("hinge", hinge_a=2.0, hinge_b=1), 3, 0.2),  # 1 / (2 * 2 + 1)
        (StalenessPolicy("inverse_sqrt"), 15, 0.25),
    ],
)
def test_policy_dispatches_to_its_function(policy: StalenessPolicy, staleness: int, expected: float) -> None:
    assert policy.weight(staleness) == pytest.approx(expected, rel=1e-12)


def test_policy_weight_rejects_negative_staleness() -> None:
    with pytest.raises(InvalidStalenessError, match="-2"):
        StalenessPolicy("polynomial").weight(-2)
    with pytest.raises(InvalidStalenessError, match="-2"):
        StalenessPolicy("polynomial").is_too_stale(-2)


def test_max_staleness_boundary() -> None:
    policy = StalenessPolicy("polynomial", max_staleness=20)
    assert not policy.is_too_stale(0)
    assert not policy.is_too_stale(20)
    assert policy.is_too_stale(21)


def test_max_staleness_zero_accepts_only_fresh_updates() -> None:
    policy = StalenessPolicy("constant", max_staleness=0)
    assert not policy.is_too_stale(0)
    assert policy.is_too_stale(1)


def test_no_max_staleness_never_too_stale() -> None:
    assert not StalenessPolicy("constant", max_staleness=None).is_too_stale(10**9)


def test_weight_ignores_max_staleness() -> None:
    # rejection is is_too_stale's job; weight still reports f(s) = 1 / (1 + 24) ** 0.5 = 1/5
    assert StalenessPolicy("polynomial", max_staleness=20).weight(24) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"function": "exponential"}, "exponential"),
        ({"function": "polynomial", "exponent": -0.5}, "-0.5"),
        ({"function": "polynomial", "exponent": math.nan}, "nan"),
        ({"function": "hinge", "hinge_a": -1.0}, "-1.0"),
        ({"function": "hinge", "hinge_b": -3}, "-3"),
        ({"function": "hinge", "hinge_b": 2.5}, "2.5"),
        ({"function": "constant", "max_staleness": -1}, "-1"),
        ({"function": "constant", "max_staleness": True}, "True"),
    ],
)
def test_policy_validates_on_construction(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        StalenessPolicy(**kwargs)


@given(st.integers(min_value=0, max_value=10_000))
def test_every_function_is_in_unit_interval_and_one_at_zero(staleness: int) -> None:
    for function in ("constant", "polynomial", "hinge", "inverse_sqrt"):
        policy = StalenessPolicy(function)
        assert policy.weight(0) == 1.0
        assert 0.0 < policy.weight(staleness) <= 1.0


@given(st.integers(min_value=0, max_value=10_000))
def test_every_function_is_non_increasing(staleness: int) -> None:
    for function in ("constant", "polynomial", "hinge", "inverse_sqrt"):
        policy = StalenessPolicy(function)
        assert policy.weight(staleness + 1) <= policy.weight(staleness)
