"""Equivalence of the server core with the code it replaced, and the STYLE equivalences of its strategies.

- The server makes, on a fixed schedule, exactly the versions (parameters, weights, stalenesses, optimizer
  state, epsilon) that the job's aggregation made before the server core (``legacy_aggregation``).
- ``config_json`` recorded before the change still reads, and its versions recompute through the strategies.
- FedBuff with K = N and staleness 0 is FedAvg; a version does not depend on the order its updates arrived in.
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import AggregationConfig, AsyncServer, NewVersion, PendingUpdate, PrivateServerOptimizer, make_strategy
from schemas.tensors import Tensors, decode_tensors, encode_tensors, parameter_hash
from streaming_jobs.aggregation import recompute_parameters
from tests.unit import legacy_aggregation as legacy

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CLIENTS = ("a", "b", "c", "d", "e")


def _model(seed: int, scale: float = 1.0) -> Tensors:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": (scale * rng.normal(size=(3, 2, 2))).astype(np.float32),
        "conv.bias": (scale * rng.normal(size=3)).astype(np.float32),
        "head.weight": (scale * rng.normal(size=(4, 3))).astype(np.float32),
    }


@dataclass(frozen=True)
class Arrival:
    seconds: float
    client: str
    lag: int
    """How many versions behind the newest the client trained on."""
    delta: Tensors
    sample_count: int


def _schedule(count: int, seed: int) -> list[Arrival]:
    rng = np.random.default_rng(seed)
    seconds = np.cumsum(rng.exponential(1.5, size=count))
    return [
        Arrival(
            seconds=float(seconds[index]),
            client=CLIENTS[int(rng.integers(len(CLIENTS)))],
            lag=int(rng.choice([0, 0, 1, 2, 4])),
            delta=_model(seed * 1000 + index, scale=0.05 * (1 + 20 * (index % 7 == 3))),
            sample_count=int(rng.integers(1, 200)),
        )
        for index in range(count)
    ]


def _update(index: int, arrival: Arrival, base_version: int) -> PendingUpdate:
    return PendingUpdate(
        update_id=f"{index:032x}",
        delta=arrival.delta,
        base_version=base_version,
        sample_count=arrival.sample_count,
        received_at=T0 + timedelta(seconds=arrival.seconds),
        client_id=arrival.client,
    )


@dataclass(frozen=True)
class Made:
    version: int
    update_ids: tuple[str, ...]
    weights: tuple[float, ...]
    stalenesses: tuple[int, ...]
    parameters: Tensors
    optimizer_state: dict[str, np.ndarray]
    epsilon: float | None


def _run_legacy(config: AggregationConfig, schedule: list[Arrival]) -> list[Made]:
    """The job's loop before the server core: gate, buffer, ``BufferPolicy.next_version``, mode dispatch."""
    parameters, version = _model(0), 0
    optimizer = config.make_optimizer()
    policy = config.buffer
    limit = 0 if config.strategy == "fedavg" else config.staleness.max_staleness
    pending: list[PendingUpdate] = []
    made: list[Made] = []
    for index, arrival in enumerate(schedule):
        base = max(0, version - arrival.lag)
        if limit is not None and version - base > limit:
            continue
        pending.append(_update(index, arrival, base))
        now = T0 + timedelta(seconds=arrival.seconds)
        while pending:
            chosen = policy.next_version(
                [update.client_id for update in pending],
                min(update.received_at for update in pending),
                now,
                bound_clients=config.bounds_contributions,
            )
            check = optimizer.budget_check() if isinstance(optimizer, PrivateServerOptimizer) else None
            if not chosen or (check is not None and not check.allows_next):
                break
            taken = [pending[position] for position in chosen]
            parameters, weights, stalenesses = legacy.aggregate(parameters, version, taken, config, optimizer)
            version += 1
            pending = [update for position, update in enumerate(pending) if position not in set(chosen)]
            epsilon = optimizer.epsilon_spent() if isinstance(optimizer, PrivateServerOptimizer) else None
            ids = tuple(update.update_id for update in taken)
            made.append(Made(version, ids, weights, stalenesses, parameters, optimizer.state_dict(), epsilon))
    return made


def _run_server(config: AggregationConfig, schedule: list[Arrival]) -> list[NewVersion]:
    server = AsyncServer(config, _model(0))
    made: list[NewVersion] = []
    for index, arrival in enumerate(schedule):
        base = max(0, server.version - arrival.lag)
        if not server.admits(base):
            continue
        server.receive(_update(index, arrival, base))
        made += server.ready_versions(T0 + timedelta(seconds=arrival.seconds))
    return made


DP = {"weight_by_sample_count": False, "dp_noise_multiplier": 0.8, "dp_clip_norm": 0.3, "dp_seed": 99}
CONFIGS = {
    "fedbuff": {"buffer_size": 3, "max_wait_seconds": 4.0},
    "fedbuff-adam-hinge": {
        "buffer_size": 4,
        "max_wait_seconds": None,
        "staleness_function": "hinge",
        "hinge_b": 1,
        "server_optimizer": "adam",
        "server_learning_rate": 0.05,
    },
    "fedbuff-momentum-trimmed": {
        "buffer_size": 5,
        "max_wait_seconds": 6.0,
        "robust_aggregation": "trimmed_mean",
        "trim_fraction": 0.2,
        "max_update_norm": 0.5,
        "server_optimizer": "momentum",
        "server_momentum": 0.7,
    },
    "fedbuff-multi-krum": {"buffer_size": 5, "robust_aggregation": "multi_krum", "krum_byzantine": 1},
    "fedbuff-stale-limit": {"buffer_size": 2, "max_staleness": 1, "staleness_function": "constant"},
    "fedasync": {"mode": "fedasync", "buffer_size": 1, "mixing": 0.4},
    "fedavg": {"mode": "fedavg", "buffer_size": 3, "max_wait_seconds": 5.0},
    "dp-adaptive": {"buffer_size": 3, "max_wait_seconds": 4.0, "dp_adaptive_clipping": True, **DP},
    "dp-budget": {"buffer_size": 2, "max_wait_seconds": None, "dp_epsilon_budget": 16.0, **DP},
}


def _assert_same(expected: Tensors | dict[str, np.ndarray], actual: Tensors | dict[str, np.ndarray]) -> None:
    assert list(actual) == list(expected)
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_server_makes_exactly_the_versions_the_old_aggregation_made(name: str) -> None:
    config = AggregationConfig.from_dict({**CONFIGS[name]})
    schedule = _schedule(40, seed=len(name))
    before, after = _run_legacy(config, schedule), _run_server(config, schedule)
    assert len(before) >= 3, "the schedule makes versions"
    assert [made.version for made in after] == [made.version for made in before]
    for old, new in zip(before, after, strict=True):
        assert new.update_ids == old.update_ids
        assert new.weights == old.weights
        assert new.stalenesses == old.stalenesses
        assert new.epsilon == old.epsilon
        _assert_same(old.parameters, new.parameters)
        _assert_same(old.optimizer_state, new.optimizer_state)


OLD_CONFIG_JSON = [
    # model_versions.config_json as the job wrote it before the server core (to_dict, sort_keys)
    '{"buffer_size": 10, "hinge_a": 10.0, "hinge_b": 4, "max_staleness": 20, "max_wait_seconds": 60.0, '
    '"mixing": 0.5, "mode": "fedbuff", "server_beta1": 0.9, "server_beta2": 0.99, "server_learning_rate": 1.0, '
    '"server_momentum": 0.0, "server_optimizer": "sgd", "server_tau": 0.001, "staleness_exponent": 0.5, '
    '"staleness_function": "polynomial", '
    '"weight_by_sample_count": true}',
    '{"buffer_size": 1, "hinge_a": 10.0, "hinge_b": 4, "max_staleness": 20, "max_wait_seconds": 60.0, '
    '"mixing": 0.6, "mode": "fedasync", "server_beta1": 0.9, "server_beta2": 0.99, "server_learning_rate": 1.0, '
    '"server_momentum": 0.0, "server_optimizer": "sgd", "server_tau": 0.001, "staleness_exponent": 0.5, '
    '"staleness_function": "hinge", '
    '"weight_by_sample_count": true}',
    '{"buffer_size": 4, "hinge_a": 10.0, "hinge_b": 4, "max_staleness": 20, "max_wait_seconds": null, "mixing": 0.5, '
    '"mode": "fedavg", "server_beta1": 0.9, "server_beta2": 0.99, "server_learning_rate": 1.0, "server_momentum": 0.0, '
    '"server_optimizer": "sgd", "server_tau": 0.001, "staleness_exponent": 0.5, "staleness_function": "polynomial", '
    '"weight_by_sample_count": true}',
    '{"buffer_size": 10, "hinge_a": 10.0, "hinge_b": 4, "max_staleness": 20, "max_update_norm": 2.0, '
    '"max_wait_seconds": 60.0, "mixing": 0.5, "mode": "fedbuff", "robust_aggregation": "trimmed_mean", '
    '"server_beta1": 0.9, "server_beta2": 0.99, "server_learning_rate": 0.01, "server_momentum": 0.0, '
    '"server_optimizer": "adam", "server_tau": 0.001, "staleness_exponent": 0.5, "staleness_function": "polynomial", '
    '"trim_fraction": 0.2, "weight_by_sample_count": true}',
    '{"buffer_size": 3, "dp_adaptive_clipping": true, "dp_clip_norm": 0.5, "dp_epsilon_budget": 8.0, '
    '"dp_noise_multiplier": 1.0, "dp_participation": "random_check_in", "dp_population": 40, "dp_seed": 1234567, '
    '"hinge_a": 10.0, "hinge_b": 4, "max_staleness": 20, "max_wait_seconds": 60.0, "mixing": 0.5, "mode": "fedbuff", '
    '"server_beta1": 0.9, "server_beta2": 0.99, "server_learning_rate": 1.0, "server_momentum": 0.0, '
    '"server_optimizer": "sgd", "server_tau": 0.001, "staleness_exponent": 0.5, "staleness_function": "polynomial", '
    '"weight_by_sample_count": false}',
]


@pytest.mark.parametrize("recorded", OLD_CONFIG_JSON)
def test_old_config_json_reads_writes_back_unchanged_and_its_versions_recompute(recorded: str) -> None:
    config = AggregationConfig.from_recorded(json.loads(recorded))
    written = config.to_dict()
    if config.privacy is not None:  # recorded before noise streams per shard: its noise came from one stream
        assert written.pop("dp_noise_streams") == "model"
    assert json.dumps(written, sort_keys=True) == recorded
    schedule = [
        Arrival(float(index), CLIENTS[index % 5], index % 2, _model(50 + index, 0.1), 10 + index) for index in range(12)
    ]
    parent_state = encode_tensors(config.make_optimizer().state_dict())
    parent = _model(0)
    for made in _run_legacy(config, schedule)[:3]:
        # what an audit does with a stored row: the config from config_json, the parent's optimizer state
        audit_config = AggregationConfig.from_recorded(json.loads(recorded))
        optimizer = audit_config.make_optimizer()
        if decode_tensors(parent_state):
            optimizer.load_state_dict(decode_tensors(parent_state))
        deltas = [schedule[int(update_id, 16)].delta for update_id in made.update_ids]
        recomputed = recompute_parameters(
            parent, deltas, list(made.weights), audit_config, optimizer, version=made.version
        )
        assert parameter_hash(recomputed) == parameter_hash(made.parameters)
        parent, parent_state = made.parameters, encode_tensors(made.optimizer_state)


@pytest.mark.parametrize("by_count", [True, False])
def test_fedbuff_with_k_equal_n_and_staleness_zero_is_fedavg_through_the_server(by_count: bool) -> None:
    updates = [_update(index, Arrival(0.0, CLIENTS[index], 0, _model(index, 0.1), 5 + index), 0) for index in range(5)]
    common = {"buffer_size": 5, "max_wait_seconds": None, "weight_by_sample_count": by_count}
    fedbuff = AsyncServer(AggregationConfig.from_dict({"mode": "fedbuff", **common}), _model(0), pending=updates)
    fedavg = AsyncServer(AggregationConfig.from_dict({"mode": "fedavg", **common}), _model(0), pending=updates)
    buffered, averaged = fedbuff.ready_versions(T0), fedavg.ready_versions(T0)
    assert len(buffered) == len(averaged) == 1
    assert buffered[0].weights == averaged[0].weights
    assert sum(averaged[0].weights) == pytest.approx(1.0)
    _assert_same(averaged[0].parameters, buffered[0].parameters)


@settings(max_examples=25, deadline=None)
@given(st.permutations(range(6)), st.sampled_from(["fedbuff", "fedavg"]), st.booleans())
def test_a_version_does_not_depend_on_the_order_its_updates_arrived_in(
    order: list[int], mode: str, by_count: bool
) -> None:
    base = 0 if mode == "fedavg" else 3
    updates = [
        _update(
            index,
            Arrival(float(index), CLIENTS[index % 5], 0, _model(index, 0.1), 3 + 7 * index),
            index % 4 if base else 0,
        )
        for index in range(6)
    ]
    config = AggregationConfig.from_dict(
        {"mode": mode, "buffer_size": 6, "max_wait_seconds": None, "weight_by_sample_count": by_count}
    )

    def made(sequence: list[PendingUpdate]) -> NewVersion:
        server = AsyncServer(config, _model(0), version=base)
        for update in sequence:
            server.receive(update)
        (version,) = server.ready_versions(T0)
        return version

    first, permuted = made(updates), made([updates[index] for index in order])
    weights = dict(zip(first.update_ids, first.weights, strict=True))
    assert dict(zip(permuted.update_ids, permuted.weights, strict=True)) == weights
    for key, value in first.parameters.items():
        np.testing.assert_allclose(permuted.parameters[key], value, rtol=1e-6, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=8), st.booleans())
def test_fresh_weights_sum_to_one(sample_counts: list[int], by_count: bool) -> None:
    if by_count and not any(sample_counts):
        sample_counts = [1, *sample_counts[1:]]
    updates = [PendingUpdate(f"u{index}", _model(0), 2, count, T0) for index, count in enumerate(sample_counts)]
    for mode in ("fedbuff", "fedavg"):
        strategy = make_strategy(AggregationConfig.from_dict({"mode": mode, "weight_by_sample_count": by_count}))
        assert sum(strategy.weights(updates, 2)) == pytest.approx(1.0)
