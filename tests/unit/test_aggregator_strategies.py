import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import (
    EmptyBufferError,
    InvalidConfigError,
    InvalidStalenessError,
    InvalidUpdateError,
    NaiveDatetimeError,
    PendingUpdate,
    ServerSGD,
    ShapeMismatchError,
    StalenessPolicy,
    StaleUpdateError,
    ZeroWeightError,
    aggregation_weights,
    fedasync_step,
    fedavg_step,
    fedbuff_step,
    make_server_optimizer,
    partition_by_staleness,
)
from schemas.tensors import Tensors

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
CONSTANT = StalenessPolicy("constant", max_staleness=None)
SQRT = StalenessPolicy("polynomial", exponent=0.5, max_staleness=None)


def weights(*values: float) -> Tensors:
    return {"w": np.array(values, dtype=np.float32)}


def update(
    update_id: str,
    delta: Tensors,
    base_version: int = 0,
    sample_count: int = 1,
) -> PendingUpdate:
    return PendingUpdate(
        update_id=update_id,
        delta=delta,
        base_version=base_version,
        sample_count=sample_count,
        received_at=T0 + timedelta(seconds=len(update_id)),
    )


def model(seed: int) -> Tensors:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(0, 1, size=(3, 2, 2)).astype(np.float32),
        "conv.bias": rng.normal(0, 1, size=3).astype(np.float32),
        "head.weight": rng.normal(0, 1, size=(4, 3)).astype(np.float32),
    }


def random_updates(count: int, base_version: int, seed: int) -> list[PendingUpdate]:
    rng = np.random.default_rng(seed)
    return [
        update(f"u{index}", model(seed * 100 + index), base_version, int(rng.integers(1, 500)))
        for index in range(count)
    ]


def assert_weights_equal(actual: Tensors, expected: Tensors) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key])


# ---------------------------------------------------------------- aggregation_weights


def test_weights_hand_computed_staleness_only() -> None:
    # current version 3; stalenesses 0 and 3; f = (1 + s) ** -0.5 -> [1, 1/2]; equal shares [1/2, 1/2]
    # -> [1/2, 1/4]: the stale update counts half, and the buffer as a whole moves the model less
    updates = [update("a", weights(0.0), base_version=3), update("b", weights(0.0), base_version=0)]
    assert aggregation_weights(updates, 3, SQRT, weight_by_sample_count=False) == pytest.approx([1 / 2, 1 / 4])


def test_weights_hand_computed_with_sample_counts() -> None:
    # shares n / sum(n) = [10/50, 40/50]; times f(s) = [1, 1/2] -> [0.2, 0.4]
    updates = [
        update("a", weights(0.0), base_version=3, sample_count=10),
        update("b", weights(0.0), base_version=0, sample_count=40),
    ]
    assert aggregation_weights(updates, 3, SQRT, weight_by_sample_count=True) == pytest.approx([0.2, 0.4])


def test_weights_hinge_hand_computed() -> None:
    # hinge a = 10, b = 4 at version 10: stalenesses [0, 4, 5] -> f [1, 1, 1/11]; shares 1/3 each
    # -> [1/3, 1/3, 1/33]
    policy = StalenessPolicy("hinge", hinge_a=10.0, hinge_b=4, max_staleness=None)
    updates = [update(name, weights(0.0), base_version=version) for name, version in [("a", 10), ("b", 6), ("c", 5)]]
    assert aggregation_weights(updates, 10, policy, weight_by_sample_count=False) == pytest.approx(
        [1 / 3, 1 / 3, 1 / 33]
    )


def test_empty_buffer_raises() -> None:
    with pytest.raises(EmptyBufferError, match="version 7"):
        aggregation_weights([], 7, SQRT, weight_by_sample_count=True)


def test_all_zero_sample_counts_raise_zero_weight() -> None:
    updates = [update("a", weights(1.0), sample_count=0), update("b", weights(1.0), sample_count=0)]
    with pytest.raises(ZeroWeightError, match=r"\[0, 0\]"):
        aggregation_weights(updates, 0, SQRT, weight_by_sample_count=True)


def test_zero_sample_count_is_fine_without_sample_weighting() -> None:
    updates = [update("a", weights(1.0), sample_count=0), update("b", weights(1.0), sample_count=0)]
    assert aggregation_weights(updates, 0, SQRT, weight_by_sample_count=False) == [0.5, 0.5]


def test_one_zero_sample_count_gets_weight_zero() -> None:
    updates = [update("a", weights(1.0), sample_count=0), update("b", weights(1.0), sample_count=5)]
    assert aggregation_weights(updates, 0, SQRT, weight_by_sample_count=True) == [0.0, 1.0]


def test_base_version_in_the_future_raises() -> None:
    updates = [update("a", weights(1.0), base_version=2), update("late", weights(1.0), base_version=6)]
    with pytest.raises(InvalidStalenessError, match="'late' has base_version 6 after the current version 5"):
        aggregation_weights(updates, 5, SQRT, weight_by_sample_count=False)


def test_update_beyond_max_staleness_raises_naming_it() -> None:
    policy = StalenessPolicy("polynomial", max_staleness=3)
    updates = [update("ok", weights(1.0), base_version=7), update("old", weights(1.0), base_version=3)]
    # at version 7: staleness 0 and 4 > 3
    with pytest.raises(StaleUpdateError, match=r"'old' \(staleness 4\)"):
        aggregation_weights(updates, 7, policy, weight_by_sample_count=False)


def test_max_staleness_is_inclusive() -> None:
    policy = StalenessPolicy("constant", max_staleness=3)
    updates = [update("a", weights(1.0), base_version=4), update("b", weights(1.0), base_version=7)]
    assert aggregation_weights(updates, 7, policy, weight_by_sample_count=False) == [0.5, 0.5]


def test_partition_by_staleness_splits_usable_and_stale() -> None:
    policy = StalenessPolicy("polynomial", max_staleness=2)
    updates = [update(name, weights(1.0), base_version=v) for name, v in [("a", 10), ("b", 7), ("c", 8), ("d", 6)]]
    usable, too_stale = partition_by_staleness(updates, 10, policy)
    assert [u.update_id for u in usable] == ["a", "c"]
    assert [u.update_id for u in too_stale] == ["b", "d"]


def test_duplicate_update_ids_raise() -> None:
    updates = [update("a", weights(1.0)), update("b", weights(1.0)), update("a", weights(2.0))]
    with pytest.raises(InvalidUpdateError, match=r"\['a'\]"):
        aggregation_weights(updates, 0, SQRT, weight_by_sample_count=False)


update_lists = st.lists(
    st.tuples(st.integers(min_value=0, max_value=30), st.integers(min_value=0, max_value=10_000)),
    min_size=1,
    max_size=12,
).filter(lambda items: any(count > 0 for _, count in items))


@settings(max_examples=200)
@given(items=update_lists, function=st.sampled_from(["constant", "polynomial", "hinge", "inverse_sqrt"]))
def test_data_shares_are_normalised_and_staleness_only_shrinks(items: list[tuple[int, int]], function: str) -> None:
    policy = StalenessPolicy(function, max_staleness=None)
    updates = [update(f"u{i}", weights(0.0), 30 - staleness, count) for i, (staleness, count) in enumerate(items)]
    for by_count in (True, False):
        result = aggregation_weights(updates, 30, policy, weight_by_sample_count=by_count)
        assert len(result) == len(updates)
        assert all(w >= 0 for w in result)
        shares = [w / policy.weight(s) for w, (s, _) in zip(result, items, strict=True)]
        assert math.isclose(math.fsum(shares), 1.0, rel_tol=1e-12)
        assert math.fsum(result) <= 1.0 + 1e-12
        fresh = aggregation_weights(
            [update(u.update_id, u.delta, 30, u.sample_count) for u in updates], 30, policy, by_count
        )
        assert math.isclose(math.fsum(fresh), 1.0, rel_tol=1e-12)


@settings(max_examples=200)
@given(items=update_lists, data=st.data())
def test_weights_are_permutation_invariant(items: list[tuple[int, int]], data: st.DataObject) -> None:
    updates = [update(f"u{i}", weights(0.0), 30 - staleness, count) for i, (staleness, count) in enumerate(items)]
    permuted = data.draw(st.permutations(updates))
    original = dict(zip([u.update_id for u in updates], aggregation_weights(updates, 30, SQRT, True), strict=True))
    shuffled = dict(zip([u.update_id for u in permuted], aggregation_weights(permuted, 30, SQRT, True), strict=True))
    assert original == shuffled  # exact: the total is summed with math.fsum


@settings(max_examples=100)
@given(items=update_lists)
def test_staler_never_outweighs_fresher_with_equal_counts(items: list[tuple[int, int]]) -> None:
    updates = [update(f"u{i}", weights(0.0), 30 - staleness, 7) for i, (staleness, _) in enumerate(items)]
    result = aggregation_weights(updates, 30, SQRT, weight_by_sample_count=True)
    for (s_i, _), w_i in zip(items, result, strict=True):
        for (s_j, _), w_j in zip(items, result, strict=True):
            if s_i < s_j:
                assert w_i >= w_j


# ---------------------------------------------------------------- FedBuff


def test_fedbuff_hand_computed() -> None:
    # version 3; a: s = 0, n = 10, delta [1, 0];  b: s = 3, n = 40, delta [0, 3]
    # shares [0.2, 0.8] times f(s) [1, 1/2] -> weights [0.2, 0.4]
    # aggregated delta = 0.2 [1, 0] + 0.4 [0, 3] = [0.2, 1.2]; SGD lr 0.5: theta + 0.5 * that
    # theta = [1, 1] -> [1.1, 1.6]
    updates = [
        update("a", weights(1.0, 0.0), base_version=3, sample_count=10),
        update("b", weights(0.0, 3.0), base_version=0, sample_count=40),
    ]
    result = fedbuff_step(weights(1.0, 1.0), 3, updates, SQRT, True, ServerSGD(0.5))
    np.testing.assert_allclose(result.new_params["w"], [1.1, 1.6], rtol=1e-6)
    assert result.update_ids == ("a", "b")
    assert result.weights == pytest.approx((0.2, 0.4))
    assert result.stalenesses == (0, 3)
    assert result.mean_staleness == 1.5
    assert result.max_staleness == 3


@pytest.mark.parametrize("by_count", [True, False])
@pytest.mark.parametrize("function", ["constant", "polynomial", "hinge", "inverse_sqrt"])
def test_fedbuff_with_k_equal_n_and_staleness_zero_equals_fedavg(by_count: bool, function: str) -> None:
    global_params = model(1)
    updates = random_updates(5, base_version=4, seed=2)
    policy = StalenessPolicy(function, max_staleness=0)
    buffered = fedbuff_step(global_params, 4, updates, policy, by_count, make_server_optimizer("sgd", 1.0))
    averaged = fedavg_step(global_params, updates, by_count)
    assert_weights_equal(buffered.new_params, averaged.new_params)
    assert buffered.weights == averaged.weights
    assert buffered.update_ids == averaged.update_ids
    assert buffered.stalenesses == averaged.stalenesses == (0,) * 5


def test_fedavgm_with_zero_momentum_and_lr_one_equals_fedavg_over_rounds() -> None:
    optimizer = make_server_optimizer("sgd", 1.0, momentum=0.0)
    buffered_params = averaged_params = model(3)
    for version in range(4):
        updates = random_updates(3, base_version=version, seed=10 + version)
        buffered_params = fedbuff_step(buffered_params, version, updates, CONSTANT, True, optimizer).new_params
        averaged_params = fedavg_step(averaged_params, updates, True).new_params
        assert_weights_equal(buffered_params, averaged_params)


def test_fedavgm_with_momentum_departs_from_fedavg_on_round_two() -> None:
    optimizer = make_server_optimizer("momentum", 1.0, momentum=0.9)
    buffered_params = averaged_params = model(3)
    for version in range(2):
        updates = random_updates(3, base_version=version, seed=10 + version)
        buffered_params = fedbuff_step(buffered_params, version, updates, CONSTANT, True, optimizer).new_params
        averaged_params = fedavg_step(averaged_params, updates, True).new_params
        if version == 0:
            assert_weights_equal(buffered_params, averaged_params)  # v = g on the first step
    assert not np.array_equal(buffered_params["conv.bias"], averaged_params["conv.bias"])


def test_fedbuff_is_permutation_invariant_up_to_rounding() -> None:
    global_params = model(5)
    updates = [
        update(u.update_id, u.delta, base_version=i % 3, sample_count=u.sample_count)
        for i, u in enumerate(random_updates(6, 0, seed=6))
    ]
    first = fedbuff_step(global_params, 3, updates, SQRT, True, ServerSGD(1.0))
    second = fedbuff_step(global_params, 3, updates[::-1], SQRT, True, ServerSGD(1.0))
    for key in global_params:
        np.testing.assert_allclose(first.new_params[key], second.new_params[key], rtol=1e-6, atol=1e-7)


def test_fedbuff_does_not_modify_its_inputs() -> None:
    global_params = model(1)
    snapshot = {key: value.copy() for key, value in global_params.items()}
    updates = random_updates(2, 0, seed=1)
    deltas = [{key: value.copy() for key, value in u.delta.items()} for u in updates]
    fedbuff_step(global_params, 0, updates, SQRT, True, ServerSGD(1.0))
    assert_weights_equal(global_params, snapshot)
    for u, delta in zip(updates, deltas, strict=True):
        assert_weights_equal(u.delta, delta)


def test_fedbuff_rejects_a_delta_of_the_wrong_shape_naming_the_update() -> None:
    updates = [update("good", weights(1.0, 2.0)), update("bad", weights(1.0, 2.0, 3.0))]
    optimizer = ServerSGD(1.0)
    with pytest.raises(ShapeMismatchError, match="'bad'"):
        fedbuff_step(weights(0.0, 0.0), 0, updates, SQRT, False, optimizer)
    assert optimizer.step_count == 0


def test_fedbuff_empty_buffer_raises_without_stepping() -> None:
    optimizer = ServerSGD(1.0, momentum=0.9)
    with pytest.raises(EmptyBufferError):
        fedbuff_step(weights(0.0), 0, [], SQRT, True, optimizer)
    assert optimizer.step_count == 0


# ---------------------------------------------------------------- FedAsync


def test_fedasync_hand_computed() -> None:
    # version 8, base 5: s = 3, f = (1 + 3) ** -0.5 = 1/2; mixing 0.6 -> weight 0.3
    # theta = [1, -1] + 0.3 * [2, 4] = [1.6, 0.2]
    result = fedasync_step(weights(1.0, -1.0), 8, update("a", weights(2.0, 4.0), base_version=5), 0.6, SQRT)
    np.testing.assert_allclose(result.new_params["w"], [1.6, 0.2], rtol=1e-6)
    assert result.weights == pytest.approx((0.3,))
    assert result.update_ids == ("a",)
    assert result.stalenesses == (3,)
    assert result.max_staleness == 3


def test_fedasync_fresh_update_with_mixing_one_is_theta_plus_delta() -> None:
    result = fedasync_step(weights(1.0, -1.0), 2, update("a", weights(0.5, 0.25), base_version=2), 1.0, SQRT)
    np.testing.assert_array_equal(result.new_params["w"], np.array([1.5, -0.75], dtype=np.float32))


def test_fedasync_rejects_too_stale_update() -> None:
    policy = StalenessPolicy("polynomial", max_staleness=2)
    with pytest.raises(StaleUpdateError, match="staleness 3"):
        fedasync_step(weights(1.0), 3, update("a", weights(1.0), base_version=0), 0.5, policy)


@pytest.mark.parametrize("mixing", [0.0, -0.1, 1.5, float("nan")])
def test_fedasync_rejects_mixing_outside_unit_interval(mixing: float) -> None:
    with pytest.raises(InvalidConfigError, match="mixing"):
        fedasync_step(weights(1.0), 0, update("a", weights(1.0)), mixing, SQRT)


def test_fedasync_rejects_future_base_version() -> None:
    with pytest.raises(InvalidStalenessError, match="base_version 4"):
        fedasync_step(weights(1.0), 3, update("a", weights(1.0), base_version=4), 0.5, SQRT)


# ---------------------------------------------------------------- FedAvg


def test_fedavg_hand_computed() -> None:
    # sample counts 1 and 3 -> weights [1/4, 3/4]; mean delta = 1/4 [4, 0] + 3/4 [0, 4] = [1, 3]
    updates = [
        update("a", weights(4.0, 0.0), base_version=2, sample_count=1),
        update("b", weights(0.0, 4.0), base_version=2, sample_count=3),
    ]
    result = fedavg_step(weights(10.0, 10.0), updates, True)
    np.testing.assert_array_equal(result.new_params["w"], np.array([11.0, 13.0], dtype=np.float32))
    assert result.weights == (0.25, 0.75)
    unweighted = fedavg_step(weights(10.0, 10.0), updates, False)  # mean = [2, 2]
    np.testing.assert_array_equal(unweighted.new_params["w"], np.array([12.0, 12.0], dtype=np.float32))


def test_fedavg_rejects_mixed_base_versions() -> None:
    updates = [update("a", weights(1.0), base_version=2), update("b", weights(1.0), base_version=3)]
    with pytest.raises(InvalidStalenessError, match=r"\[2, 3\]"):
        fedavg_step(weights(0.0), updates, False)


def test_fedavg_empty_and_zero_weight_raise() -> None:
    with pytest.raises(EmptyBufferError):
        fedavg_step(weights(0.0), [], True)
    with pytest.raises(ZeroWeightError):
        fedavg_step(weights(0.0), [update("a", weights(1.0), sample_count=0)], True)


# ---------------------------------------------------------------- PendingUpdate


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"update_id": ""}, InvalidUpdateError, "''"),
        ({"base_version": -1}, InvalidUpdateError, "base_version.*-1"),
        ({"sample_count": -5}, InvalidUpdateError, "sample_count.*-5"),
        ({"sample_count": 2.5}, InvalidUpdateError, "2.5"),
        ({"received_at": datetime(2025, 1, 1)}, NaiveDatetimeError, "naive"),
    ],
)
def test_pending_update_rejects_bad_fields(kwargs: dict[str, object], error: type, message: str) -> None:
    fields: dict[str, object] = {
        "update_id": "u1",
        "delta": weights(1.0),
        "base_version": 0,
        "sample_count": 1,
        "received_at": T0,
    }
    fields.update(kwargs)
    with pytest.raises(error, match=message):
        PendingUpdate(**fields)
