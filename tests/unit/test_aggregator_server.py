"""The asynchronous server: staleness gate, buffer, contribution bounds, versions with provenance, the budget."""

import logging
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from aggregator import (
    AggregationConfig,
    AsyncServer,
    InvalidConfigError,
    InvalidStalenessError,
    InvalidUpdateError,
    PendingUpdate,
    ShapeMismatchError,
    strategy_class,
    strategy_names,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PARAMS = {"w": np.zeros(3, dtype=np.float32)}
DP = {"dp_noise_multiplier": 1.0, "dp_clip_norm": 0.5, "weight_by_sample_count": False, "dp_seed": 3}


def _update(index: int, base_version: int = 0, client: str | None = None, **fields: object) -> PendingUpdate:
    delta = {"w": np.full(3, 0.1 * (index + 1), dtype=np.float32)}
    return PendingUpdate(
        f"u{index}",
        delta,
        base_version,
        10,
        T0 + timedelta(seconds=index),
        client or f"c{index}",
        **fields,  # type: ignore[arg-type]
    )


def test_the_built_in_strategies_are_registered_by_name() -> None:
    assert {"fedbuff", "fedasync", "fedavg"} <= set(strategy_names())
    assert strategy_class("fedavg").synchronous and not strategy_class("fedbuff").synchronous
    with pytest.raises(InvalidConfigError, match=r"mode must be one of \[.*'fedbuff'.*\], got 'fedprox'"):
        AggregationConfig.from_dict({"mode": "fedprox"})


def test_strategy_is_another_name_for_mode_in_recorded_configs() -> None:
    assert AggregationConfig.from_dict({"strategy": "fedavg", "max_wait_seconds": None}).strategy == "fedavg"
    assert "strategy" not in AggregationConfig.from_dict({"strategy": "fedbuff"}).to_dict()
    with pytest.raises(InvalidConfigError, match="disagree"):
        AggregationConfig.from_dict({"strategy": "fedavg", "mode": "fedbuff"})


def test_the_staleness_gate_uses_max_staleness_and_synchronous_strategies_take_only_the_current_version() -> None:
    server = AsyncServer(AggregationConfig.from_dict({"max_staleness": 2}), PARAMS, version=5)
    assert [server.admits(base) for base in (2, 3, 5, 6)] == [False, True, True, False]
    synchronous = AsyncServer(AggregationConfig.from_dict({"mode": "fedavg"}), PARAMS, version=5)
    assert synchronous.intake_max_staleness == 0
    assert [synchronous.admits(base) for base in (4, 5)] == [False, True]
    unlimited = AsyncServer(AggregationConfig.from_dict({"max_staleness": None}), PARAMS, version=5)
    assert unlimited.admits(0)


def test_receive_refuses_what_cannot_be_buffered_naming_it() -> None:
    server = AsyncServer(AggregationConfig(), PARAMS, version=1)
    server.receive(_update(0, base_version=1))
    with pytest.raises(InvalidStalenessError, match="base_version 2 is newer than the current version 1"):
        server.receive(_update(1, base_version=2))
    with pytest.raises(InvalidUpdateError, match="'u0' is already pending"):
        server.receive(_update(0, base_version=1))
    wrong = PendingUpdate("u9", {"w": np.zeros(4, dtype=np.float32)}, 0, 1, T0)
    with pytest.raises(ShapeMismatchError, match="'u9'"):
        server.receive(wrong)
    assert [update.update_id for update in server.pending] == ["u0"]


def test_a_full_buffer_makes_a_version_with_its_provenance_and_the_next_waits() -> None:
    config = AggregationConfig.from_dict(
        {"buffer_size": 2, "max_wait_seconds": None, "server_optimizer": "adam", "server_learning_rate": 0.1}
    )
    server = AsyncServer(config, PARAMS, version=3)
    server.receive(_update(0, base_version=2, validation_loss=1.0, validation_accuracy=0.5, validation_count=10))
    assert server.ready_versions(T0) == []
    server.receive(_update(1, base_version=3, validation_loss=3.0, validation_accuracy=0.9, validation_count=30))
    server.receive(_update(2, base_version=3))
    (version,) = server.ready_versions(T0)
    assert (version.version, version.parent_version, server.version) == (4, 3, 4)
    assert version.update_ids == ("u0", "u1") and version.stalenesses == (1, 0) and version.max_staleness == 1
    assert version.weights[0] < version.weights[1], "the stale update weighs less"
    assert version.federated_validation_loss == pytest.approx(2.5)
    assert version.federated_validation_accuracy == pytest.approx(0.8)
    assert version.optimizer_state["step"] == 1 and "m/w" in version.optimizer_state
    assert version.epsilon is None and version.privacy_budget_exhausted is None
    assert server.parameters is version.parameters
    assert [update.update_id for update in server.pending] == ["u2"]


def test_the_wait_limit_makes_a_short_version_at_its_deadline() -> None:
    server = AsyncServer(AggregationConfig.from_dict({"buffer_size": 5, "max_wait_seconds": 10.0}), PARAMS)
    server.receive(_update(0))
    server.receive(_update(3))
    assert server.deadline() == T0 + timedelta(seconds=10)
    assert server.ready_versions(T0 + timedelta(seconds=9)) == []
    assert server.ready_versions(T0 + timedelta(seconds=10), deadline=False) == []
    (version,) = server.ready_versions(T0 + timedelta(seconds=10))
    assert version.update_ids == ("u0", "u3") and server.deadline() is None


def test_with_dp_a_version_takes_one_update_per_client_and_drain_keeps_the_bound() -> None:
    server = AsyncServer(AggregationConfig.from_dict({"buffer_size": 2, "max_wait_seconds": None, **DP}), PARAMS)
    for index, client in enumerate(["a", "a", "b", "a"]):
        server.receive(_update(index, client=client))
    (first,) = server.ready_versions(T0)
    assert first.update_ids == ("u0", "u2") and first.epsilon is not None
    assert first.epsilon_assumption == "no_amplification"
    drained = server.drain()
    assert [version.update_ids for version in drained] == [("u1",), ("u3",)]
    assert server.pending == () and drained[-1].epsilon > first.epsilon  # type: ignore[operator]


def test_close_round_makes_one_version_of_every_pending_update() -> None:
    server = AsyncServer(
        AggregationConfig.from_dict({"mode": "fedavg", "buffer_size": 10, "max_wait_seconds": None}), PARAMS
    )
    assert server.close_round() is None
    for index in range(3):
        server.receive(_update(index))
    version = server.close_round()
    assert version is not None and version.update_ids == ("u0", "u1", "u2")
    np.testing.assert_allclose(version.parameters["w"], [0.2, 0.2, 0.2], rtol=1e-6)


def test_the_budget_holds_the_buffer_and_says_why_once(caplog: pytest.LogCaptureFixture) -> None:
    config = AggregationConfig.from_dict({"buffer_size": 1, "max_wait_seconds": None, "dp_epsilon_budget": 5.0, **DP})
    server = AsyncServer(config, PARAMS)
    for index in range(4):
        server.receive(_update(index))
    with caplog.at_level(logging.WARNING, logger="aggregator.server"):
        made = server.ready_versions(T0)
        assert server.ready_versions(T0) == [] and server.drain() == [] and server.close_round() is None
    assert made and made[-1].privacy_budget_exhausted is True
    assert all(version.privacy_budget_exhausted is False for version in made[:-1])
    assert server.privacy_refusal is not None and not server.privacy_refusal.allows_next
    assert len(server.pending) == 4 - len(made)
    assert len([record for record in caplog.records if "privacy budget exhausted" in record.getMessage()]) == 1


def test_a_restarted_server_continues_from_the_recorded_state() -> None:
    config = AggregationConfig.from_dict(
        {"buffer_size": 2, "max_wait_seconds": None, "server_optimizer": "momentum", "server_momentum": 0.9}
    )
    updates = [_update(index) for index in range(4)]
    straight = AsyncServer(config, PARAMS)
    for update in updates:
        straight.receive(update)
    expected = straight.ready_versions(T0)
    first = AsyncServer(config, PARAMS, pending=updates[:2])
    (made,) = first.ready_versions(T0)
    restarted = AsyncServer(
        config, made.parameters, version=made.version, optimizer_state=made.optimizer_state, pending=updates[2:]
    )
    (again,) = restarted.ready_versions(T0)
    np.testing.assert_array_equal(again.parameters["w"], expected[1].parameters["w"])


def test_a_private_config_needs_its_seed_drawn_before_a_server_runs_it() -> None:
    unseeded = AggregationConfig.from_dict({"buffer_size": 2, **{**DP, "dp_seed": None}})
    with pytest.raises(InvalidConfigError, match="needs a dp_seed"):
        AsyncServer(unseeded, PARAMS)
    assert AsyncServer(unseeded.with_secret_dp_seed(), PARAMS).version == 0
