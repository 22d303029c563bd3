"""validate_update: every reason an update cannot join the current global model, all of them at once."""

from datetime import UTC, datetime

import numpy as np
import pytest

from schemas.messages import UpdateHeader
from schemas.rejections import Rejection, RejectionReason
from schemas.validation import validate_update
from schemas.wire import DecodedUpdate

MODEL = "har.mlp"


def reference() -> dict[str, np.ndarray]:
    return {
        "dense.weight": np.zeros((4, 3), dtype=np.float32),
        "dense.bias": np.zeros(4, dtype=np.float32),
        "head.weight": np.zeros((2, 4), dtype=np.float32),
    }


def good_delta() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(array.shape).astype(np.float32) for name, array in reference().items()}


def update(
    delta: dict[str, np.ndarray] | None = None, *, base_version: int = 10, model_name: str = MODEL
) -> DecodedUpdate:
    header = UpdateHeader(
        update_id="0123456789abcdef0123456789abcdef",
        client_id="client-007",
        model_name=model_name,
        base_version=base_version,
        sample_count=64,
        created_at=datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
        payload_sha256="0" * 64,
    )
    return DecodedUpdate(header=header, delta=good_delta() if delta is None else delta)


def validate(candidate: DecodedUpdate, *, current_version: int = 10, max_staleness: int | None = 5) -> list[Rejection]:
    return validate_update(
        candidate, model_name=MODEL, reference=reference(), current_version=current_version, max_staleness=max_staleness
    )


def reasons(problems: list[Rejection]) -> list[RejectionReason]:
    return [problem.reason for problem in problems]


def test_a_matching_finite_current_update_is_accepted() -> None:
    assert validate(update()) == []


def test_a_zero_delta_is_accepted() -> None:
    assert validate(update(reference())) == []


def test_an_update_for_another_model_is_unknown_and_nothing_else_is_checked() -> None:
    problems = validate(update({"x": np.full(1, np.nan, dtype=np.float64)}, model_name="other.model", base_version=99))
    assert reasons(problems) == [RejectionReason.UNKNOWN_MODEL]
    assert "'other.model'" in problems[0].detail
    assert f"'{MODEL}'" in problems[0].detail


def test_a_missing_tensor_is_a_shape_mismatch_naming_it() -> None:
    delta = good_delta()
    del delta["dense.bias"]
    problems = validate(update(delta))
    assert reasons(problems) == [RejectionReason.SHAPE_MISMATCH]
    assert "missing tensors ['dense.bias']" in problems[0].detail
    assert "unexpected []" in problems[0].detail


def test_an_unexpected_tensor_is_a_shape_mismatch_naming_it() -> None:
    delta = {**good_delta(), "lora.adapter": np.zeros(2, dtype=np.float32)}
    problems = validate(update(delta))
    assert reasons(problems) == [RejectionReason.SHAPE_MISMATCH]
    assert "unexpected ['lora.adapter']" in problems[0].detail
    assert "missing tensors []" in problems[0].detail


def test_missing_and_unexpected_tensors_are_reported_together_and_the_rest_still_checked() -> None:
    delta = good_delta()
    del delta["head.weight"]
    delta["head.weights"] = np.zeros((2, 4), dtype=np.float32)
    delta["dense.bias"] = np.array([np.nan, 0, 0, 0], dtype=np.float32)
    problems = validate(update(delta))
    assert reasons(problems) == [RejectionReason.SHAPE_MISMATCH, RejectionReason.NON_FINITE]
    assert "missing tensors ['head.weight'], unexpected ['head.weights']" in problems[0].detail
    assert problems[1].detail.startswith("dense.bias:")


def test_an_empty_delta_misses_every_tensor() -> None:
    problems = validate(update({}))
    assert reasons(problems) == [RejectionReason.SHAPE_MISMATCH]
    assert "missing tensors ['dense.bias', 'dense.weight', 'head.weight']" in problems[0].detail


@pytest.mark.parametrize("shape", [(3, 4), (12,), (4, 3, 1), (4, 4), ()])
def test_a_wrong_shape_is_a_shape_mismatch_naming_tensor_and_shapes(shape: tuple[int, ...]) -> None:
    delta = {**good_delta(), "dense.weight": np.zeros(shape, dtype=np.float32)}
    problems = validate(update(delta))
    assert reasons(problems) == [RejectionReason.SHAPE_MISMATCH]
    assert problems[0].detail == f"dense.weight: shape {shape}, expected (4, 3)"


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.uint8])
def test_a_wrong_dtype_is_a_dtype_mismatch_naming_it(dtype: type[np.generic]) -> None:
    delta = {**good_delta(), "dense.bias": np.zeros(4, dtype=dtype)}
    problems = validate(update(delta))
    assert reasons(problems) == [RejectionReason.DTYPE_MISMATCH]
    assert problems[0].detail == f"dense.bias: {np.dtype(dtype)}, expected float32"


def test_nan_and_inf_values_are_non_finite_with_their_count() -> None:
    weight = good_delta()["dense.weight"]
    weight[0, 0] = np.nan
    weight[1, 2] = np.inf
    weight[3, 1] = -np.inf
    problems = validate(update({**good_delta(), "dense.weight": weight}))
    assert reasons(problems) == [RejectionReason.NON_FINITE]
    assert problems[0].detail == "dense.weight: 3 NaN/Inf values"


def test_every_non_finite_tensor_is_reported_in_name_order() -> None:
    delta = good_delta()
    delta["head.weight"][:] = np.nan
    delta["dense.bias"][1] = np.inf
    problems = validate(update(delta))
    assert [problem.detail for problem in problems] == ["dense.bias: 1 NaN/Inf values", "head.weight: 8 NaN/Inf values"]


def test_the_largest_finite_float32_is_accepted() -> None:
    delta = {**good_delta(), "dense.bias": np.full(4, np.finfo(np.float32).max, dtype=np.float32)}
    assert validate(update(delta)) == []


def test_a_base_version_newer_than_the_current_one_is_from_the_future() -> None:
    problems = validate(update(base_version=11), current_version=10)
    assert reasons(problems) == [RejectionReason.FUTURE_BASE_VERSION]
    assert "base_version 11" in problems[0].detail
    assert "current version 10" in problems[0].detail


def test_a_future_base_version_is_rejected_even_without_a_staleness_limit() -> None:
    problems = validate(update(base_version=11), current_version=10, max_staleness=None)
    assert reasons(problems) == [RejectionReason.FUTURE_BASE_VERSION]


def test_staleness_above_the_limit_is_too_stale() -> None:
    problems = validate(update(base_version=4), current_version=10, max_staleness=5)
    assert reasons(problems) == [RejectionReason.TOO_STALE]
    assert problems[0].detail == "staleness 6 (base 4, current 10) exceeds 5"


def test_staleness_exactly_at_the_limit_is_accepted() -> None:
    assert validate(update(base_version=5), current_version=10, max_staleness=5) == []


def test_max_staleness_zero_accepts_only_the_current_version() -> None:
    assert validate(update(base_version=10), current_version=10, max_staleness=0) == []
    assert reasons(validate(update(base_version=9), current_version=10, max_staleness=0)) == [RejectionReason.TOO_STALE]


@pytest.mark.parametrize("current_version", [0, 10, 1_000_000])
def test_without_a_staleness_limit_no_update_is_too_stale(current_version: int) -> None:
    assert validate(update(base_version=0), current_version=current_version, max_staleness=None) == []


def test_an_update_with_several_problems_reports_all_of_them() -> None:
    delta = good_delta()
    delta["dense.weight"] = np.zeros((3, 4), dtype=np.float32)
    delta["head.weight"][0, 0] = np.nan
    delta["dense.bias"] = delta["dense.bias"].astype(np.float64)
    problems = validate(update(delta, base_version=1), current_version=10, max_staleness=5)
    assert sorted(reasons(problems)) == sorted(
        [
            RejectionReason.DTYPE_MISMATCH,
            RejectionReason.SHAPE_MISMATCH,
            RejectionReason.NON_FINITE,
            RejectionReason.TOO_STALE,
        ]
    )
    details = " | ".join(problem.detail for problem in problems)
    for fragment in ("dense.bias: float64", "dense.weight: shape (3, 4)", "head.weight: 1 NaN/Inf", "staleness 9"):
        assert fragment in details


def test_validation_does_not_modify_the_update() -> None:
    candidate = update()
    before = {name: array.copy() for name, array in candidate.delta.items()}
    validate(candidate)
    assert all(np.array_equal(candidate.delta[name], before[name]) for name in before)


def test_a_0d_reference_tensor_is_compared_as_0d() -> None:
    scalar_reference = {"temperature": np.array(1.5, dtype=np.float32)}

    def check(value: np.ndarray) -> list[Rejection]:
        return validate_update(
            update({"temperature": value}),
            model_name=MODEL,
            reference=scalar_reference,
            current_version=10,
            max_staleness=None,
        )

    assert check(np.array(0.25, dtype=np.float32)) == []
    assert reasons(check(np.array([0.25], dtype=np.float32))) == [RejectionReason.SHAPE_MISMATCH]
    assert reasons(check(np.array(np.nan, dtype=np.float32))) == [RejectionReason.NON_FINITE]
