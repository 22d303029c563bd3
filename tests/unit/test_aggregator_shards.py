"""Shards: a version computed shard by shard is bit-identical to the same version computed whole.

Every strategy, robust rule, server optimizer and differential privacy is run twice from the same parent,
updates and optimizer state: whole (:meth:`aggregator.Strategy.aggregate`, the driver's path) and shard by
shard (decisions from per-shard partials, each shard computed alone, as executors do). Parameters and the
optimizer state must agree to the last bit, and so must the recorded weights.
"""

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from aggregator import (
    SHARD_VALUES,
    AggregationConfig,
    PendingUpdate,
    ShardPlan,
    gaussian_noise,
    l2_norm,
    make_strategy,
)
from aggregator.errors import InvalidConfigError, ShapeMismatchError
from aggregator.shard_step import ShardStatistics, compute_shard, next_scalar_state, shard_state, split_state
from aggregator.shards import pairwise_partials, scaled_float32, shard_bounds, squared_sum
from schemas.tensors import Tensors

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BIG = (3, SHARD_VALUES - 5)
"""A tensor of three shards, the last one short: every shard boundary falls inside a row."""


def _model(seed: int, scale: float = 1.0) -> Tensors:
    rng = np.random.default_rng(seed)
    return {
        "body.weight": (scale * rng.normal(size=BIG)).astype(np.float32),
        "body.bias": (scale * rng.normal(size=7)).astype(np.float32),
        "head.weight": (scale * rng.normal(size=(5, 3))).astype(np.float32),
    }


def _updates(count: int, first_seed: int, base_versions: list[int]) -> list[PendingUpdate]:
    """``count`` updates; the second is large (clipped, and Krum's outlier)."""
    rng = np.random.default_rng(first_seed)
    return [
        PendingUpdate(
            update_id=f"u{index}",
            delta=_model(first_seed + index, 0.02 * (1 + 40 * (index == 1))),
            base_version=base_versions[index],
            sample_count=int(rng.integers(5, 50)),
            received_at=T0,
            client_id=f"client-{index}",
            training_steps=int(rng.integers(1, 4)),
        )
        for index in range(count)
    ]


CONFIGS = {
    "fedbuff-sgd": {"mode": "fedbuff", "buffer_size": 4},
    "fedbuff-adam-clipped": {"mode": "fedbuff", "buffer_size": 4, "server_optimizer": "adam",
                             "server_learning_rate": 0.01, "max_update_norm": 1.0},
    "fedbuff-yogi-trimmed": {"mode": "fedbuff", "buffer_size": 4, "server_optimizer": "yogi",
                             "server_learning_rate": 0.01, "robust_aggregation": "trimmed_mean",
                             "trim_fraction": 0.25, "max_update_norm": 1.0},
    "fedbuff-adagrad-median": {"mode": "fedbuff", "buffer_size": 4, "server_optimizer": "adagrad",
                               "server_learning_rate": 0.1, "robust_aggregation": "median"},
    "fedbuff-momentum-krum": {"mode": "fedbuff", "buffer_size": 4, "server_optimizer": "momentum",
                              "server_momentum": 0.9, "robust_aggregation": "krum", "krum_byzantine": 1,
                              "max_update_norm": 3.0},
    "fedbuff-multi-krum": {"mode": "fedbuff", "buffer_size": 4, "robust_aggregation": "multi_krum",
                           "krum_byzantine": 1},
    "fedbuff-dp-adaptive-adam": {"mode": "fedbuff", "buffer_size": 4, "server_optimizer": "adam",
                                 "server_learning_rate": 0.01, "dp_noise_multiplier": 1.0, "dp_clip_norm": 0.5,
                                 "dp_adaptive_clipping": True, "dp_seed": 7,
                                 "weight_by_sample_count": False},
    "fedbuff-dp-clipped": {"mode": "fedbuff", "buffer_size": 4, "dp_noise_multiplier": 0.5, "dp_clip_norm": 2.0,
                           "max_update_norm": 1.0, "dp_seed": 8, "weight_by_sample_count": False},
    "fednova": {"mode": "fednova", "buffer_size": 4, "server_optimizer": "adam", "server_learning_rate": 0.01},
    "fedasync": {"mode": "fedasync", "buffer_size": 1, "mixing": 0.6},
    "fedavg": {"mode": "fedavg", "buffer_size": 4},
}  # fmt: skip


def _whole_then_sharded(
    config: AggregationConfig,
) -> tuple[Tensors, Tensors, dict[str, np.ndarray], dict[str, np.ndarray], list[float], list[float]]:
    """Version 2 made whole and shard by shard from the same version 1 (so the optimizer has slots)."""
    strategy = make_strategy(config)
    count = config.buffer.buffer_size
    synchronous = config.strategy == "fedavg"
    optimizer = config.make_optimizer()
    first = strategy.aggregate(_model(1), 0, _updates(count, 100, [0] * count), optimizer)
    parent, parent_state = first.new_params, optimizer.state_dict()
    updates = _updates(count, 200, [1 if synchronous or index % 2 else 0 for index in range(count)])

    whole_optimizer = config.make_optimizer()
    whole_optimizer.load_state_dict(parent_state)
    whole = strategy.aggregate(parent, 1, updates, whole_optimizer)

    plan = ShardPlan.of(parent)
    assert len(plan.shards) == 5  # three of body.weight, one each of the small tensors
    deltas = [plan_slices(plan, update.delta) for update in updates]
    squared = [[squared_sum(values) for values in delta] for delta in deltas]

    def distance_partials(factors: list[float]) -> list[np.ndarray]:
        return [
            pairwise_partials([scaled_float32(delta[s.ordinal], f) for delta, f in zip(deltas, factors, strict=True)])
            for s in plan.shards
        ]

    statistics = ShardStatistics(squared, distance_partials)
    decided = config.make_optimizer()
    decided.load_state_dict(parent_state)
    applied = strategy.applied_weights(statistics, strategy.weights(updates, 1), decided)

    scalars, slots = split_state(parent_state, decided)
    values: dict[int, np.ndarray] = {}
    new_slots: dict[str, dict[int, np.ndarray]] = {}
    for shard in plan.shards:
        slot_values = {slot: plan.cut(by_name, shard)[shard.tensor] for slot, by_name in slots.items()}
        new, shard_slots = compute_shard(
            config,
            shard,
            plan.cut(parent, shard)[shard.tensor],
            [delta[shard.ordinal] for delta in deltas],
            applied,
            shard_state(scalars, slot_values, shard),
            version=2,
            delta_norms=statistics.norms(),
        )
        values[shard.ordinal] = new
        for slot, slot_value in shard_slots.items():
            new_slots.setdefault(slot, {})[shard.ordinal] = slot_value
    state = next_scalar_state(config, scalars, applied, version=2, delta_norms=statistics.norms())
    for slot, by_ordinal in new_slots.items():
        state |= {f"{slot}/{name}": array for name, array in plan.assemble(by_ordinal).items()}
    return whole.new_params, plan.assemble(values), whole_optimizer.state_dict(), state, list(whole.weights), applied


def plan_slices(plan: ShardPlan, tensors: Tensors) -> list[np.ndarray]:
    return [plan.cut(tensors, shard)[shard.tensor] for shard in plan.shards]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_version_computed_shard_by_shard_is_bit_identical_to_the_whole_one(name: str) -> None:
    config = AggregationConfig.from_dict(CONFIGS[name])
    whole, sharded, whole_state, sharded_state, whole_weights, sharded_weights = _whole_then_sharded(config)
    assert sharded_weights == whole_weights
    assert sorted(sharded) == sorted(whole)
    for key in whole:
        assert sharded[key].dtype == whole[key].dtype and sharded[key].tobytes() == whole[key].tobytes(), key
    assert sorted(sharded_state) == sorted(whole_state)
    for key in whole_state:
        assert np.asarray(sharded_state[key]).tobytes() == np.asarray(whole_state[key]).tobytes(), key
    assert any(not np.array_equal(whole[key], _model(1)[key]) for key in whole)  # the version moved


def test_krum_and_clipping_decide_from_whole_norms_not_a_shards() -> None:
    """The decision the shard-wise path takes is the one the whole deltas call for (Krum drops the outlier)."""
    config = AggregationConfig.from_dict(CONFIGS["fedbuff-momentum-krum"])
    *_, whole_weights, sharded_weights = _whole_then_sharded(config)
    assert sharded_weights[1] == 0.0 and sum(weight > 0 for weight in sharded_weights) == 1
    assert sharded_weights == whole_weights


def test_l2_norm_sums_shards_and_equals_the_per_tensor_sum_below_one_shard() -> None:
    rng = np.random.default_rng(3)
    small = {"a": rng.normal(size=(64, 3, 3)).astype(np.float32), "b": rng.normal(size=11).astype(np.float32)}
    per_tensor = math.sqrt(math.fsum(float(np.sum(np.square(v.astype(np.float64)))) for v in small.values()))
    assert l2_norm(small) == per_tensor  # versions recorded before shards keep their clip factors
    big = {"w": rng.normal(size=BIG).astype(np.float32)}
    flat = big["w"].reshape(-1).astype(np.float64)
    partials = [float(np.sum(np.square(flat[a:b]))) for a, b in shard_bounds(flat.size)]
    assert l2_norm(big) == math.sqrt(math.fsum(partials))
    assert math.isclose(l2_norm(big), float(np.linalg.norm(flat)), rel_tol=1e-12)


def test_noise_drawn_per_shard_is_the_whole_noise_cut_into_shards() -> None:
    model = _model(5)
    whole = gaussian_noise(model, 0.3, seed=11, version=4)
    plan = ShardPlan.of(model)
    for shard in plan.shards:
        piece = gaussian_noise(plan.cut(model, shard), 0.3, seed=11, version=4, shard=shard)
        assert piece[shard.tensor].tobytes() == plan.cut(whole, shard)[shard.tensor].tobytes()
    assert not np.array_equal(whole["body.weight"], gaussian_noise(model, 0.3, seed=11, version=5)["body.weight"])
    one_stream = gaussian_noise(model, 0.3, seed=11, version=4, streams="model")
    assert not np.array_equal(one_stream["body.bias"], whole["body.bias"])
    with pytest.raises(InvalidConfigError):
        gaussian_noise(plan.cut(model, plan.shards[0]), 0.3, seed=11, version=4, streams="model", shard=plan.shards[0])
    with pytest.raises(ShapeMismatchError):
        gaussian_noise(plan.cut(model, plan.shards[0]), 0.3, seed=11, version=4, shard=plan.shards[1])


def test_recorded_dp_configs_without_noise_streams_read_as_one_stream() -> None:
    new = AggregationConfig.from_dict({"dp_noise_multiplier": 1.0, "dp_seed": 3, "weight_by_sample_count": False})
    assert new.privacy is not None and new.privacy.noise_streams == "shard"
    assert new.to_dict()["dp_noise_streams"] == "shard"  # always recorded, so an audit never has to guess
    assert AggregationConfig.from_recorded(new.to_dict()) == new
    old = {key: value for key, value in new.to_dict().items() if key != "dp_noise_streams"}
    recorded = AggregationConfig.from_recorded(old)
    assert recorded.privacy is not None and recorded.privacy.noise_streams == "model"
    assert "dp_noise_streams" not in AggregationConfig.from_dict({}).to_dict()
    with pytest.raises(InvalidConfigError, match="dp_noise_streams"):
        AggregationConfig.from_dict(
            {"dp_noise_multiplier": 1.0, "weight_by_sample_count": False, "dp_noise_streams": "tensor"}
        )


def test_shard_plan_cuts_and_assembles_any_shape() -> None:
    assert shard_bounds(0) == [(0, 0)]
    assert shard_bounds(10, 5) == [(0, 5), (5, 10)]
    assert shard_bounds(11, 5) == [(0, 5), (5, 10), (10, 11)]
    model = {
        "b": np.arange(12, dtype=np.float32).reshape(3, 4),
        "a": np.zeros((0, 3), np.float32),
        "c": np.ones(1, np.float32),
    }
    plan = ShardPlan.of(model, shard_values=5)
    assert [(s.tensor, s.index, s.start, s.stop) for s in plan.shards] == [
        ("a", 0, 0, 0), ("b", 0, 0, 5), ("b", 1, 5, 10), ("b", 2, 10, 12), ("c", 0, 0, 1)
    ]  # fmt: skip
    assert [s.ordinal for s in plan.shards] == list(range(5)) and plan.total_values == 13
    back = plan.assemble({s.ordinal: plan.cut(model, s)[s.tensor] for s in plan.shards})
    assert all(back[key].shape == model[key].shape and np.array_equal(back[key], model[key]) for key in model)
    with pytest.raises(ShapeMismatchError, match="missing"):
        plan.assemble({0: np.zeros(0)})
    with pytest.raises(ShapeMismatchError, match="holds 4 values"):
        plan.assemble({**{s.ordinal: plan.cut(model, s)[s.tensor] for s in plan.shards}, 1: np.zeros(4)})
    with pytest.raises(InvalidConfigError):
        ShardPlan((("b", (1,)), ("a", (1,))))
