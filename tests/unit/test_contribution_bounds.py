"""One update per client per version under DP: the shared selection, the job's aggregation and the simulator."""

import logging
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import producers.data.heart  # noqa: F401  (registers heart-mlp, a fast model for the simulator)
from aggregator import (
    AggregationConfig,
    AsyncServer,
    BufferPolicy,
    InvalidUpdateError,
    PendingUpdate,
    StalenessPolicy,
    Strategy,
    fedbuff_step,
    one_per_client,
)
from schemas.tensors import parameter_hash
from streaming_jobs.aggregation import aggregate_ready_versions
from streaming_jobs.global_state import GlobalState

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DP = {"dp_noise_multiplier": 1.0, "dp_clip_norm": 0.5, "weight_by_sample_count": False, "dp_seed": 3}


# ---------------------------------------------------------------- the shared pure selection


def test_a_second_update_of_a_client_is_skipped_and_kafka_order_kept() -> None:
    assert one_per_client(["a", "a", "b", "c", "b", "d"], 3) == (0, 2, 3)
    assert one_per_client(["a", "a", "a"], 3) == (0,)
    assert one_per_client([], 3) == ()
    assert one_per_client(["a", "b"], 0) == ()


def test_an_update_without_a_client_cannot_be_bounded() -> None:
    with pytest.raises(InvalidUpdateError, match="position 1 has client_id None"):
        one_per_client(["a", None, "b"], 3)


@given(st.lists(st.sampled_from("abcde"), max_size=30), st.integers(min_value=0, max_value=6))
def test_selection_takes_each_clients_first_update_in_order(client_ids: list[str], limit: int) -> None:
    chosen = one_per_client(client_ids, limit)
    assert list(chosen) == sorted(chosen)
    picked = [client_ids[position] for position in chosen]
    assert len(picked) == len(set(picked)) == min(limit, len(set(client_ids)))
    for position in chosen:
        assert client_ids.index(client_ids[position]) == position, "a client's first pending update goes first"
    if chosen:  # nothing before the last pick was passed over except repeats
        skipped = set(range(chosen[-1])) - set(chosen)
        assert all(client_ids[position] in picked for position in skipped)


def test_the_buffer_is_full_with_k_distinct_clients_and_the_deadline_takes_what_there_is() -> None:
    policy = BufferPolicy(buffer_size=3, max_wait_seconds=30.0)
    fresh, old = NOW - timedelta(seconds=1), NOW - timedelta(seconds=31)
    assert policy.next_version(["a", "a", "b"], fresh, NOW, bound_clients=True) == ()
    assert policy.next_version(["a", "a", "b"], fresh, NOW, bound_clients=False) == (0, 1, 2)
    assert policy.next_version(["a", "a", "b", "c"], fresh, NOW, bound_clients=True) == (0, 2, 3)
    assert policy.next_version(["a", "a", "b"], old, NOW, bound_clients=True) == (0, 2)
    assert policy.next_version(["a", "a", "b"], old, NOW, bound_clients=True, deadline=False) == ()
    assert policy.next_version([], None, NOW, bound_clients=True) == ()


def _pending(update_id: str, client_id: str | None, base_version: int = 0, scale: float = 0.1) -> PendingUpdate:
    rng = np.random.default_rng(abs(hash(update_id)) % 2**32)
    delta = {"w": (scale * rng.standard_normal(4)).astype(np.float32)}
    return PendingUpdate(update_id, delta, base_version, 1, NOW, client_id=client_id)


def test_the_private_step_itself_refuses_two_updates_of_one_client_or_an_unknown_one() -> None:
    optimizer = AggregationConfig.from_dict({"buffer_size": 2, **DP}).make_optimizer()
    params = {"w": np.zeros(4, dtype=np.float32)}
    staleness = StalenessPolicy("constant", max_staleness=None)
    with pytest.raises(InvalidUpdateError, match=r"clients \['a'\] have more"):
        fedbuff_step(params, 0, [_pending("u1", "a"), _pending("u2", "a")], staleness, False, optimizer)
    with pytest.raises(InvalidUpdateError, match=r"updates \['u2'\] name no client"):
        fedbuff_step(params, 0, [_pending("u1", "a"), _pending("u2", None)], staleness, False, optimizer)


# ---------------------------------------------------------------- the streaming job's aggregation


def _state(config: AggregationConfig, clients: list[str]) -> GlobalState:
    params = {"w": np.zeros(4, dtype=np.float32)}
    pending = [_pending(f"{index:032x}", client) for index, client in enumerate(clients)]
    return GlobalState(
        model_name="m", server=AsyncServer(config, params, pending=pending), parameter_hash=parameter_hash(params)
    )


def _numbers(update_ids: list[str]) -> list[int]:
    """The positions in the original pending list (update ids are those positions in hex)."""
    return [int(update_id, 16) for update_id in update_ids]


def _pending_numbers(state: GlobalState) -> list[int]:
    return _numbers([update.update_id for update in state.pending])


def test_with_dp_a_fast_clients_second_update_waits_for_the_next_version() -> None:
    config = AggregationConfig.from_dict({"buffer_size": 3, "max_wait_seconds": None, **DP})
    clients = ["a", "a", "b", "c", "d", "a"]
    state = _state(config, clients)
    rows = aggregate_ready_versions(state, now=NOW, batch_id=7, time_trigger=False)
    assert [_numbers(row.update_ids) for row in rows] == [[0, 2, 3]]
    assert _pending_numbers(state) == [1, 4, 5], "in Kafka order"
    state.server.receive(_pending(f"{6:032x}", "e"))
    rows = aggregate_ready_versions(state, now=NOW, batch_id=8, time_trigger=False)
    assert [_numbers(row.update_ids) for row in rows] == [[1, 4, 6]]
    assert _pending_numbers(state) == [5]


def test_without_dp_a_buffer_may_hold_two_updates_of_one_client() -> None:
    config = AggregationConfig.from_dict({"buffer_size": 3, "max_wait_seconds": None})
    state = _state(config, ["a", "a", "b"])
    rows = aggregate_ready_versions(state, now=NOW, batch_id=1, time_trigger=False)
    assert [_numbers(row.update_ids) for row in rows] == [[0, 1, 2]]
    assert rows[0].epsilon is None and rows[0].epsilon_assumption is None
    assert rows[0].privacy_budget_exhausted is None


def test_the_deadline_still_makes_versions_one_update_per_client_each() -> None:
    config = AggregationConfig.from_dict({"buffer_size": 5, "max_wait_seconds": 10.0, **DP})
    state = _state(config, ["a", "a", "b"])
    assert aggregate_ready_versions(state, now=NOW, batch_id=1, time_trigger=True) == []
    later = NOW + timedelta(seconds=11)
    assert aggregate_ready_versions(state, now=later, batch_id=2, time_trigger=False) == []
    rows = aggregate_ready_versions(state, now=later, batch_id=-1, time_trigger=True)
    assert [_numbers(row.update_ids) for row in rows] == [[0, 2], [1]], "the held update waited too: its own version"
    assert [row.version for row in rows] == [1, 2] and state.pending == ()
    assert rows[0].epsilon is not None and rows[1].epsilon is not None and 0 < rows[0].epsilon < rows[1].epsilon
    assert {row.epsilon_assumption for row in rows} == {"no_amplification"}


def test_versions_record_the_sampling_assumption_their_epsilon_rests_on() -> None:
    config = AggregationConfig.from_dict(
        {"buffer_size": 2, "max_wait_seconds": None, "dp_participation": "random_check_in", "dp_population": 40, **DP}
    )
    state = _state(config, ["a", "b", "c", "d"])
    rows = aggregate_ready_versions(state, now=NOW, batch_id=1, time_trigger=False)
    assert [row.epsilon_assumption for row in rows] == ["poisson_subsampling q=0.05"] * 2
    policy = config.privacy
    assert policy is not None
    assert [row.epsilon for row in rows] == [policy.epsilon(1, 2), policy.epsilon(2, 2)]


# ---------------------------------------------------------------- the epsilon budget


def test_the_budget_holds_the_buffer_marks_the_last_version_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    plain = AggregationConfig.from_dict({"buffer_size": 2, "max_wait_seconds": None, **DP})
    policy = plain.privacy
    assert policy is not None
    budget = (policy.epsilon(2, 2) + policy.epsilon(3, 2)) / 2  # room for exactly two versions
    config = AggregationConfig.from_dict(
        {"buffer_size": 2, "max_wait_seconds": None, "dp_epsilon_budget": budget, **DP}
    )
    clients = ["a", "b", "c", "d", "e", "f", "g", "h"]
    state = _state(config, clients)
    with caplog.at_level(logging.WARNING, logger="aggregator.server"):
        rows = aggregate_ready_versions(state, now=NOW, batch_id=1, time_trigger=False)
        again = aggregate_ready_versions(state, now=NOW, batch_id=2, time_trigger=True)
    assert [row.version for row in rows] == [1, 2] and again == []
    assert [row.privacy_budget_exhausted for row in rows] == [False, True], "the last version says it is the last"
    assert all(row.epsilon is not None and row.epsilon <= budget for row in rows)
    assert state.version == 2 and _pending_numbers(state) == [4, 5, 6, 7]
    refusal = state.privacy_refusal
    assert refusal is not None and not refusal.allows_next and refusal.version == 2
    assert refusal.spent == pytest.approx(policy.epsilon(2, 2)) and refusal.next_epsilon > budget
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "privacy budget exhausted" in warnings[0] and "4 updates held" in warnings[0]


def test_a_budget_already_spent_at_start_refuses_the_first_version() -> None:
    config = AggregationConfig.from_dict({"buffer_size": 2, "max_wait_seconds": None, "dp_epsilon_budget": 0.01, **DP})
    state = _state(config, ["a", "b"])
    assert aggregate_ready_versions(state, now=NOW, batch_id=1, time_trigger=True) == []
    assert state.version == 0 and len(state.pending) == 2
    assert state.privacy_refusal is not None and state.privacy_refusal.spent == 0.0


# ---------------------------------------------------------------- the simulator


def test_the_simulator_bounds_contributions_under_dp_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from producers.client import LocalData
    from producers.fleet import DeviceSpeeds
    from producers.training import LocalTrainingConfig
    from simulation import NetworkSpeeds, Simulator, StrategyConfig

    versions: list[list[str | None]] = []
    real_aggregate = Strategy.aggregate

    def recording_aggregate(self, parameters, current_version, updates, optimizer):  # type: ignore[no-untyped-def]
        versions.append([update.client_id for update in updates])
        return real_aggregate(self, parameters, current_version, updates, optimizer)

    monkeypatch.setattr(Strategy, "aggregate", recording_aggregate)
    rng = np.random.default_rng(7)
    clients = {}
    for index in range(4):
        features = rng.standard_normal((24, 22)).astype(np.float32)
        labels = (features[:, 0] > 0).astype(np.int64)
        clients[f"c{index}"] = LocalData(features[:16], labels[:16], features[16:], labels[16:])
    # one device ten times faster than the rest: it finishes twice while the others train once
    speeds = DeviceSpeeds(median_seconds=1.0, sigma=0.0, straggler_fraction=0.75, straggler_factor=10.0, seed=2)
    training = LocalTrainingConfig(epochs=1, batch_size=8, learning_rate=0.05)

    def run(options: dict[str, object]) -> tuple[list[list[str | None]], object]:
        versions.clear()
        aggregation = AggregationConfig.from_dict(
            {"mode": "fedbuff", "buffer_size": 3, "max_wait_seconds": None, **options}
        )  # type: ignore[arg-type]
        simulator = Simulator(
            "heart-mlp",
            clients,
            StrategyConfig("s", aggregation, training, concurrency=3),
            speeds=speeds,
            network=NetworkSpeeds(median_bytes_per_second=None),
            jitter_sigma=0.0,
            seed=2,
        )
        result = simulator.run(18, eval_every_updates=18)
        return list(versions), result

    plain_versions, _ = run({"weight_by_sample_count": False})
    assert any(len(made) != len(set(made)) for made in plain_versions), "the scenario has a client twice in a buffer"
    private_versions, result = run(DP)
    assert private_versions and all(len(made) == len(set(made)) for made in private_versions)
    assert sum(len(made) for made in private_versions) == 18, "held updates are aggregated later, none lost"
    assert result.epsilon is not None and result.epsilon_assumption == "no_amplification"  # type: ignore[attr-defined]
    assert not result.privacy_budget_exhausted  # type: ignore[attr-defined]
