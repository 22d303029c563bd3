import numpy as np
import pytest

import producers.data.heart  # noqa: F401  (registers heart-mlp, a fast model for these tests)
from aggregator import AggregationConfig
from fedstream.simulator import JobCadence, NetworkSpeeds, Simulator, StrategyConfig
from producers.client import LocalData
from producers.fleet import DeviceSpeeds
from producers.training import Evaluation, LocalTrainingConfig

MODEL = "heart-mlp"
TRAINING = LocalTrainingConfig(epochs=1, batch_size=8, learning_rate=0.05)
EQUAL = DeviceSpeeds(median_seconds=2.0, sigma=0.0, straggler_fraction=0.0)
NO_NETWORK = NetworkSpeeds(median_bytes_per_second=None)


def _clients(count: int = 4, samples: int = 24) -> dict[str, LocalData]:
    rng = np.random.default_rng(7)
    clients = {}
    for index in range(count):
        features = rng.standard_normal((samples, 22)).astype(np.float32)
        labels = (features[:, 0] + 0.3 * index > 0).astype(np.int64)
        clients[f"c{index}"] = LocalData(features[:16], labels[:16], features[16:], labels[16:])
    return clients


def _evaluator(weights: object) -> Evaluation:
    return Evaluation(loss=0.0, accuracy=0.5, macro_f1=0.5, count=1)


def _run(strategy: StrategyConfig, *, seed: int = 0, updates: int = 12, **kwargs: object) -> tuple[Simulator, object]:
    simulator = Simulator(MODEL, _clients(), strategy, seed=seed, evaluator=_evaluator, **kwargs)  # type: ignore[arg-type]
    return simulator, simulator.run(updates, eval_every_updates=4)


def _fedbuff(concurrency: int = 2, **kwargs: object) -> StrategyConfig:
    aggregation = AggregationConfig(mode="fedbuff", buffer_size=2, max_wait_seconds=None, **kwargs)  # type: ignore[arg-type]
    return StrategyConfig("fedbuff", aggregation, TRAINING, concurrency=concurrency)


def test_same_seed_same_run_and_other_seed_differs() -> None:
    _, first = _run(_fedbuff(), speeds=DeviceSpeeds(seed=3))
    _, again = _run(_fedbuff(), speeds=DeviceSpeeds(seed=3))
    _, other = _run(_fedbuff(), seed=1, speeds=DeviceSpeeds(seed=4))
    assert first.virtual_seconds == again.virtual_seconds
    assert [p.virtual_seconds for p in first.curve] == [p.virtual_seconds for p in again.curve]
    for name, value in first.final_weights.items():
        np.testing.assert_array_equal(value, again.final_weights[name])
    assert first.virtual_seconds != other.virtual_seconds
    assert any(not np.array_equal(v, other.final_weights[k]) for k, v in first.final_weights.items())


def test_synchronous_round_lasts_as_long_as_its_slowest_client() -> None:
    sync = StrategyConfig("fedavg", AggregationConfig(mode="fedavg", max_wait_seconds=None), TRAINING, concurrency=4)
    speeds = DeviceSpeeds(median_seconds=1.0, sigma=0.8, straggler_fraction=0.25, straggler_factor=6.0, seed=5)
    simulator, result = _run(sync, speeds=speeds, network=NO_NETWORK, jitter_sigma=0.0)
    slowest = max(simulator.compute_seconds)
    assert result.round_seconds == pytest.approx([slowest] * 3)
    assert result.virtual_seconds == pytest.approx(3 * slowest)
    assert result.versions == 3 and result.updates == 12


def test_fedbuff_with_k_equal_n_and_equal_delays_makes_the_fedavg_rounds() -> None:
    fedavg = StrategyConfig("fedavg", AggregationConfig(mode="fedavg", max_wait_seconds=None), TRAINING, concurrency=4)
    fedbuff = StrategyConfig(
        "fedbuff",
        AggregationConfig(mode="fedbuff", buffer_size=4, max_wait_seconds=None, staleness_function="constant"),
        TRAINING,
        concurrency=4,
    )
    _, sync = _run(fedavg, speeds=EQUAL, network=NO_NETWORK, jitter_sigma=0.0)
    _, buffered = _run(fedbuff, speeds=EQUAL, network=NO_NETWORK, jitter_sigma=0.0)
    assert sync.versions == buffered.versions == 3
    assert buffered.virtual_seconds == pytest.approx(sync.virtual_seconds)
    for name, value in sync.final_weights.items():
        np.testing.assert_allclose(buffered.final_weights[name], value, atol=1e-6)


def test_asynchronous_run_rejects_nothing_fresh_and_counts_bytes() -> None:
    simulator, result = _run(_fedbuff(concurrency=3), speeds=DeviceSpeeds(seed=1))
    assert result.updates == 12
    assert result.bytes_sent == 12 * simulator.message_bytes
    assert sum(result.client_updates.values()) == 12
    assert result.curve[0].updates == 0 and result.curve[-1].updates == 12


def test_fedasync_aggregates_every_update() -> None:
    strategy = StrategyConfig(
        "fedasync", AggregationConfig(mode="fedasync", buffer_size=1, max_wait_seconds=None), TRAINING, concurrency=2
    )
    _, result = _run(strategy, speeds=DeviceSpeeds(seed=2))
    assert result.versions == 12


def test_personal_layers_never_reach_the_global_model() -> None:
    shared_only = StrategyConfig(
        "fedbuff-personal",
        AggregationConfig(mode="fedbuff", buffer_size=2, max_wait_seconds=None),
        TRAINING,
        concurrency=2,
        personal_prefixes=("classifier.",),
    )
    simulator, result = _run(shared_only, speeds=DeviceSpeeds(seed=3))
    plain, _ = _run(_fedbuff(), speeds=DeviceSpeeds(seed=3))
    assert not any(name.startswith("classifier.") for name in result.final_weights)
    assert set(result.final_weights) == {"body.0.weight", "body.0.bias"}
    assert simulator.message_bytes < plain.message_bytes
    heads = [weights["classifier.weight"] for weights in result.personal_weights.values()]
    assert len(heads) == 4 and not np.array_equal(heads[0], heads[1])
    per_client = simulator.evaluate_clients(result)
    assert set(per_client) == {"c0", "c1", "c2", "c3"}


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Simulator(MODEL, _clients(), _fedbuff(concurrency=5), speeds=EQUAL)
    with pytest.raises(ValueError, match="match no parameter"):
        Simulator(
            MODEL,
            _clients(),
            StrategyConfig("x", AggregationConfig(), TRAINING, 2, personal_prefixes=("head.",)),
            speeds=EQUAL,
        )


def _burst_run(cadence: JobCadence | None) -> object:
    strategy = _fedbuff(concurrency=4)
    simulator = Simulator(
        MODEL, _clients(), strategy, speeds=EQUAL, network=NO_NETWORK, jitter_sigma=0.0, cadence=cadence
    )
    return simulator.run(8, eval_every_updates=4)


def test_the_job_cadence_makes_clients_train_from_the_last_published_version() -> None:
    """Four equal clients finish together: a burst. The job sees it at its next trigger and publishes later."""
    immediate = _burst_run(None)
    batched = _burst_run(JobCadence(trigger_seconds=1.0, publish_seconds=0.5))
    # without a cadence the restarted clients train from version 2 at once; with it they restart at t=2 from
    # version 0, because the burst is judged at t=3 and published at t=3.5
    assert immediate.version_stalenesses == [(0, 0), (1, 1), (0, 0), (1, 1)]  # type: ignore[attr-defined]
    assert batched.version_stalenesses == [(0, 0), (1, 1), (2, 2), (3, 3)]  # type: ignore[attr-defined]
    # the second burst arrives at t=4, is judged at t=5 and on fl.models at t=5.5
    assert batched.virtual_seconds == pytest.approx(5.5)  # type: ignore[attr-defined]


def test_a_batch_that_overruns_delays_the_next_one() -> None:
    cadence = JobCadence(trigger_seconds=1.0, publish_seconds=2.5)
    assert cadence.next_batch_at(2.0, job_free_at=0.0) == 3.0
    assert cadence.next_batch_at(2.4, job_free_at=5.5) == 5.5
    assert cadence.next_batch_at(0.0, job_free_at=0.0) == 1.0
    with pytest.raises(ValueError, match="trigger_seconds"):
        JobCadence(trigger_seconds=0.0)
    with pytest.raises(ValueError, match="publish_seconds"):
        JobCadence(publish_seconds=-1.0)


def test_a_clients_time_grows_with_its_local_steps() -> None:
    sync = StrategyConfig("fedavg", AggregationConfig(mode="fedavg", max_wait_seconds=None), TRAINING, concurrency=4)
    _, result = _run(sync, speeds=EQUAL, network=NO_NETWORK, jitter_sigma=0.0, seconds_per_step=0.75)
    # 16 training samples in batches of 8 for one epoch: 2 steps on top of the 2 s device delay
    assert result.round_seconds == pytest.approx([2.0 + 2 * 0.75] * 3)  # type: ignore[attr-defined]


def test_a_cadence_is_refused_for_synchronous_rounds() -> None:
    sync = StrategyConfig("fedavg", AggregationConfig(mode="fedavg", max_wait_seconds=None), TRAINING, concurrency=4)
    with pytest.raises(ValueError, match="cadence"):
        _run(sync, speeds=EQUAL, cadence=JobCadence())


def test_one_training_slot_makes_clients_queue_for_it() -> None:
    """Four clients, one trainer taking 1.5 s each (2 steps at 0.75 s): they finish 1.5 s apart, plus their delay."""
    simulator = Simulator(
        MODEL, _clients(), _fedbuff(concurrency=4), speeds=EQUAL, network=NO_NETWORK, jitter_sigma=0.0,
        cadence=JobCadence(trigger_seconds=0.5, publish_seconds=0.0), seconds_per_step=0.75, training_slots=1,
    )  # fmt: skip
    result = simulator.run(4, eval_every_updates=4)
    # arrivals at 3.5, 5.0, 6.5, 8.0 (1.5 s of training each, one at a time, then the 2 s delay); the last batch
    # is judged at the next 0.5 s trigger after 8.0
    assert result.virtual_seconds == pytest.approx(8.5)
    with pytest.raises(ValueError, match="training_slots"):
        Simulator(MODEL, _clients(), _fedbuff(), speeds=EQUAL, training_slots=1)
