"""FedNova: FedBuff's weights times ``tau_eff / tau_i``, registered as ``fednova``."""

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import AggregationConfig, AsyncServer, InvalidConfigError, PendingUpdate, make_strategy, strategy_names
from aggregator.strategies.fednova import FedNova, step_normalisation
from schemas.tensors import parameter_hash
from streaming_jobs.aggregation import recompute_parameters

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _update(index: int, delta: np.ndarray, steps: int, *, base_version: int = 0, count: int = 10) -> PendingUpdate:
    return PendingUpdate(
        f"u{index}", {"w": delta.astype(np.float32)}, base_version, count, T0, f"c{index}", training_steps=steps
    )


def _config(**fields: object) -> AggregationConfig:
    return AggregationConfig.from_dict({"strategy": "fednova", "max_wait_seconds": None, **fields})


def test_fednova_is_registered_and_configured_by_name() -> None:
    assert "fednova" in strategy_names()
    config = _config(buffer_size=4, weight_by_sample_count=False)
    assert config.strategy == "fednova" and json.loads(json.dumps(config.to_dict()))["mode"] == "fednova"
    assert isinstance(make_strategy(config), FedNova)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"robust_aggregation": "median"}, "runs in mode 'fedbuff' only, got mode 'fednova'"),
        (
            {"dp_noise_multiplier": 1.0, "weight_by_sample_count": False},
            "differential privacy runs in mode 'fedbuff' only",
        ),
    ],
)
def test_fednova_refuses_combinations_that_would_undo_its_normalisation_or_its_privacy(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        _config(**fields)


def test_each_client_counts_with_its_per_step_direction_not_its_step_count() -> None:
    """Two clients with the same data share: one took 1 step along g1, the other 9 along g2."""
    g1, g2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    updates = [_update(0, 1 * g1, steps=1), _update(1, 9 * g2, steps=9)]
    params = {"w": np.zeros(2, dtype=np.float32)}
    config = _config(buffer_size=2, weight_by_sample_count=False, staleness_function="constant")
    result = make_strategy(config).aggregate(params, 0, updates, config.make_optimizer())
    assert result.weights == pytest.approx((5.0 / 2, 5.0 / 18)), "tau_eff = 5; weights p_i * tau_eff / tau_i"
    np.testing.assert_allclose(result.new_params["w"], 5.0 * (g1 + g2) / 2, rtol=1e-6)
    fedbuff = make_strategy(AggregationConfig.from_dict({**{**config.to_dict(), "mode": "fedbuff"}}))
    buffered = fedbuff.aggregate(params, 0, updates, config.make_optimizer())
    np.testing.assert_allclose(buffered.new_params["w"], (g1 + 9 * g2) / 2, rtol=1e-6)


def test_staleness_and_sample_counts_still_weigh_as_in_fedbuff() -> None:
    updates = [
        _update(0, np.ones(2), steps=4, base_version=3, count=30),
        _update(1, np.ones(2), steps=2, base_version=0, count=10),
    ]
    config = _config(buffer_size=2, staleness_exponent=1.0)
    weights = make_strategy(config).weights(updates, 3)
    shares, factors = [0.75, 0.25], [3.5 / 4, 3.5 / 2]  # tau_eff = 0.75 * 4 + 0.25 * 2
    assert weights == pytest.approx([1.0 * shares[0] * factors[0], 0.25 * shares[1] * factors[1]])


@pytest.mark.parametrize("steps", [[7, 7, 7], [0, 0, 0], [5, 0, 5]])
def test_equal_or_unreported_steps_make_fednova_exactly_fedbuff(steps: list[int]) -> None:
    rng = np.random.default_rng(3)
    updates = [_update(index, rng.normal(size=4), s, base_version=index) for index, s in enumerate(steps)]
    params = {"w": rng.normal(size=4).astype(np.float32)}
    nova = _config(buffer_size=3, server_optimizer="adam", server_learning_rate=0.1)
    buff = AggregationConfig.from_dict({**{**nova.to_dict(), "mode": "fedbuff"}})
    first = make_strategy(nova).aggregate(params, 2, updates, nova.make_optimizer())
    second = make_strategy(buff).aggregate(params, 2, updates, buff.make_optimizer())
    assert first.weights == second.weights
    np.testing.assert_array_equal(first.new_params["w"], second.new_params["w"])


def test_an_update_without_reported_steps_keeps_its_fedbuff_weight() -> None:
    updates = [_update(0, np.ones(1), 2), _update(1, np.ones(1), 6), _update(2, np.ones(1), 0)]
    assert step_normalisation(updates, weight_by_sample_count=False) == pytest.approx([2.0, 2 / 3, 1.0])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 100)), min_size=1, max_size=6), st.randoms())
def test_weights_do_not_depend_on_the_order_of_the_buffer(pairs: list[tuple[int, int]], rng: object) -> None:
    updates = [_update(index, np.ones(1), steps, count=count) for index, (steps, count) in enumerate(pairs)]
    strategy = make_strategy(_config(buffer_size=6))
    weights = dict(zip([u.update_id for u in updates], strategy.weights(updates, 0), strict=True))
    shuffled = list(updates)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    again = dict(zip([u.update_id for u in shuffled], strategy.weights(shuffled, 0), strict=True))
    assert again == pytest.approx(weights)


def test_the_server_runs_fednova_and_an_audit_recomputes_its_versions() -> None:
    rng = np.random.default_rng(5)
    config = _config(buffer_size=3, server_optimizer="momentum", server_momentum=0.5, server_learning_rate=0.5)
    server = AsyncServer(config, {"w": np.zeros(4, dtype=np.float32)})
    made = []
    for index in range(9):
        server.receive(_update(index, rng.normal(size=4), steps=1 + index % 4, base_version=max(0, server.version - 1)))
        made += server.ready_versions(T0)
    assert len(made) == 3
    parent, optimizer = {"w": np.zeros(4, dtype=np.float32)}, config.make_optimizer()
    for version in made:
        recomputed = recompute_parameters(
            parent, [update.delta for update in version.updates], list(version.weights), config, optimizer
        )
        assert parameter_hash(recomputed) == parameter_hash(version.parameters)
        parent = version.parameters
