from datetime import UTC, datetime

import numpy as np
import pytest

from aggregator import (
    AggregationConfig,
    DeltasInMemory,
    InvalidConfigError,
    PendingUpdate,
    RobustPolicy,
    StalenessPolicy,
    clip_factor,
    coordinate_median,
    fedbuff_step,
    krum_scores,
    krum_select,
    l2_norm,
    make_strategy,
    trimmed_mean,
)
from schemas.tensors import decode_tensors, encode_tensors, parameter_hash
from streaming_jobs.aggregation import recompute_parameters

NOW = datetime(2025, 3, 1, tzinfo=UTC)


def weights(*values: float) -> dict[str, np.ndarray]:
    return {"w": np.array(values, dtype=np.float32)}


def pending(index: int, delta: dict[str, np.ndarray], base_version: int = 3, count: int = 10) -> PendingUpdate:
    return PendingUpdate(f"u{index}", delta, base_version, count, NOW)


def test_coordinate_median_by_hand() -> None:
    deltas = [weights(1, 10), weights(2, -5), weights(100, 0)]
    np.testing.assert_array_equal(coordinate_median(deltas)["w"], [2, 0])
    even = [weights(1), weights(2), weights(3), weights(100)]
    np.testing.assert_array_equal(coordinate_median(even)["w"], [2.5])


def test_trimmed_mean_by_hand() -> None:
    deltas = [weights(1, 0), weights(2, 4), weights(3, 8), weights(4, 100), weights(-50, 12)]
    # n = 5, trim 0.2 -> cut 1 at each end: column 0 keeps 1, 2, 3 and column 1 keeps 4, 8, 12
    np.testing.assert_allclose(trimmed_mean(deltas, 0.2)["w"], [2.0, 8.0])
    np.testing.assert_allclose(trimmed_mean(deltas, 0.0)["w"], [-8.0, 124 / 5], rtol=1e-6)
    # too few to cut 0.4 * 2 = 0 ... and 0.49 * 3 = 1 keeps one: the median
    np.testing.assert_allclose(trimmed_mean(deltas[:3], 0.49)["w"], [2.0, 4.0])


def test_krum_scores_by_hand_and_outlier_excluded() -> None:
    deltas = [weights(0.0), weights(1.0), weights(2.0), weights(50.0)]
    # n = 4, f = 1 -> n - f - 2 = 1 nearest neighbour
    assert krum_scores(deltas, 1) == [1.0, 1.0, 1.0, 48.0**2]
    assert krum_select(deltas, 1, 1) == [0]
    assert krum_select(deltas, 1) == [0, 1, 2]


def test_krum_excludes_an_obvious_outlier_in_many_dimensions() -> None:
    rng = np.random.default_rng(0)
    honest = [{"w": rng.normal(0, 0.1, 50).astype(np.float32)} for _ in range(8)]
    attacker = {"w": (rng.normal(0, 0.1, 50) * 100 + 5).astype(np.float32)}
    deltas = [*honest[:3], attacker, *honest[3:]]
    assert 3 not in krum_select(deltas, 2, 6)
    assert krum_select(deltas, 2, 1) != [3]


def test_clip_factor_bounds_every_norm() -> None:
    rng = np.random.default_rng(1)
    policy = RobustPolicy(max_update_norm=1.5)
    deltas = [{"w": rng.normal(0, scale, 20).astype(np.float32)} for scale in (0.01, 0.5, 3.0, 100.0)]
    applied = policy.applied_weights(DeltasInMemory(deltas), [1.0] * 4)
    for delta, weight in zip(deltas, applied, strict=True):
        assert weight * l2_norm(delta) <= 1.5 * (1 + 1e-9)
    assert applied[0] == 1.0
    assert clip_factor(4.0, 2.0) == 0.5 and clip_factor(1.0, None) == 1.0


def test_default_policy_changes_nothing() -> None:
    updates = [pending(i, weights(float(i), -float(i)), count=i + 1) for i in range(4)]
    staleness = StalenessPolicy("polynomial", exponent=0.5, max_staleness=None)
    params = weights(1.0, 1.0)
    plain = fedbuff_step(params, 4, updates, staleness, True, AggregationConfig().make_optimizer())
    explicit = fedbuff_step(
        params, 4, updates, staleness, True, AggregationConfig().make_optimizer(), robust=RobustPolicy()
    )
    assert parameter_hash(plain.new_params) == parameter_hash(explicit.new_params)
    assert plain.weights == explicit.weights


def test_median_scales_by_the_staleness_weights() -> None:
    updates = [pending(i, weights(v), base_version=2) for i, v in enumerate((1.0, 2.0, 30.0))]
    staleness = StalenessPolicy("constant", max_staleness=None)
    result = fedbuff_step(
        weights(0.0), 2, updates, staleness, False, AggregationConfig().make_optimizer(), robust=RobustPolicy("median")
    )
    np.testing.assert_allclose(result.new_params["w"], [2.0])
    assert result.weights == pytest.approx((1 / 3, 1 / 3, 1 / 3))


def test_krum_records_zero_weight_for_the_excluded() -> None:
    updates = [pending(i, weights(v)) for i, v in enumerate((0.0, 1.0, 2.0, 50.0))]
    staleness = StalenessPolicy("constant", max_staleness=None)
    result = fedbuff_step(
        weights(0.0),
        3,
        updates,
        staleness,
        False,
        AggregationConfig().make_optimizer(),
        robust=RobustPolicy("multi_krum", krum_byzantine=1),
    )
    assert result.weights[3] == 0.0
    assert sum(result.weights) == pytest.approx(1.0)
    np.testing.assert_allclose(result.new_params["w"], [1.0])


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_update_norm": 0.5},
        {"robust_aggregation": "trimmed_mean", "trim_fraction": 0.2, "max_update_norm": 2.0},
        {"robust_aggregation": "median"},
        {"robust_aggregation": "krum", "krum_byzantine": 1},
        {"robust_aggregation": "multi_krum", "krum_byzantine": 2, "multi_krum_selected": 3, "max_update_norm": 1.0},
    ],
)
def test_recomputation_from_recorded_weights_reproduces_the_hash(options: dict[str, object]) -> None:
    rng = np.random.default_rng(7)
    params = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
    updates = [
        pending(i, {k: (rng.normal(size=v.shape) * (1 + 9 * (i == 2))).astype(np.float32) for k, v in params.items()},
                base_version=5 - i % 3, count=5 + i)
        for i in range(7)
    ]  # fmt: skip
    config = AggregationConfig.from_dict(
        {"buffer_size": 7, "server_optimizer": "adam", "server_learning_rate": 0.1, **options}
    )  # type: ignore[arg-type]
    optimizer = config.make_optimizer()
    parent_state = optimizer.state_dict()
    result = make_strategy(config).aggregate(params, 5, updates, optimizer)
    restored = AggregationConfig.from_dict(config.to_dict())
    audit_optimizer = restored.make_optimizer()
    audit_optimizer.load_state_dict(decode_tensors(encode_tensors(parent_state)))
    recomputed = recompute_parameters(
        decode_tensors(encode_tensors(params)),
        [decode_tensors(encode_tensors(update.delta)) for update in updates],
        list(result.weights),
        restored,
        audit_optimizer,
    )
    assert parameter_hash(recomputed) == parameter_hash(result.new_params)


def test_config_round_trips_robust_fields_and_validates() -> None:
    config = AggregationConfig.from_dict(
        {
            "robust_aggregation": "multi_krum",
            "krum_byzantine": 2,
            "multi_krum_selected": 4,
            "max_update_norm": 3,
            "trim_fraction": 0.2,
        }
    )
    data = config.to_dict()
    assert data["robust_aggregation"] == "multi_krum" and type(data["max_update_norm"]) is float
    assert AggregationConfig.from_dict(data) == config
    assert "robust_aggregation" not in AggregationConfig().to_dict()
    assert AggregationConfig().robust.is_default
    with pytest.raises(InvalidConfigError, match="robust_aggregation"):
        AggregationConfig.from_dict({"robust_aggregation": "mean"})
    with pytest.raises(InvalidConfigError, match="trim_fraction"):
        AggregationConfig.from_dict({"robust_aggregation": "trimmed_mean", "trim_fraction": 0.5})
    with pytest.raises(InvalidConfigError, match="max_update_norm"):
        AggregationConfig.from_dict({"max_update_norm": 0.0})
    with pytest.raises(InvalidConfigError, match="fedbuff"):
        AggregationConfig.from_dict({"mode": "fedavg", "robust_aggregation": "median"})
