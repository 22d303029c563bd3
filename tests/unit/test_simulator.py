import dataclasses
from typing import Any

import numpy as np
import pytest

import producers.data.heart  # noqa: F401  (registers heart-mlp, a fast model for these tests)
from aggregator import AggregationConfig
from producers.client import LocalData
from producers.fleet import DeviceSpeeds
from producers.training import Evaluation, LocalTrainingConfig
from simulation import (
    PER_ARRIVAL,
    SIMULATED_FLEET,
    FleetTiming,
    JobCadence,
    NetworkSpeeds,
    SimulationResult,
    Simulator,
    StrategyConfig,
)

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


def _aggregation(**flat: Any) -> AggregationConfig:
    return AggregationConfig.from_dict(flat)


def _run(
    strategy: StrategyConfig, *, seed: int = 0, updates: int = 12, clients: int = 4, **kwargs: Any
) -> tuple[Simulator, SimulationResult]:
    simulator = Simulator(MODEL, _clients(clients), strategy, seed=seed, evaluator=_evaluator, **kwargs)
    return simulator, simulator.run(updates, eval_every_updates=4)


def _fedbuff(concurrency: int = 2, **flat: Any) -> StrategyConfig:
    aggregation = _aggregation(mode="fedbuff", buffer_size=2, max_wait_seconds=None, **flat)
    return StrategyConfig("fedbuff", aggregation, TRAINING, concurrency=concurrency)


def _fedavg(concurrency: int = 4) -> StrategyConfig:
    return StrategyConfig("fedavg", _aggregation(mode="fedavg", max_wait_seconds=None), TRAINING, concurrency)


def _fedasync(concurrency: int) -> StrategyConfig:
    aggregation = _aggregation(mode="fedasync", buffer_size=1, max_wait_seconds=None)
    return StrategyConfig("fedasync", aggregation, TRAINING, concurrency=concurrency)


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


# ---------------------------------------------------------------- per arrival: pinned before the loops became one

# Each scenario runs six clients for 16 updates (12 for FedAvg's rounds of 3). The expected values are what the
# simulator printed before its two asynchronous loops (per arrival, per micro-batch) were made one.
PINNED: dict[str, tuple[dict[str, Any], int, dict[str, Any], int, dict[str, Any]]] = {
    "fedbuff": (
        {"mode": "fedbuff", "buffer_size": 2, "max_wait_seconds": None},
        3,
        {"speeds": DeviceSpeeds(seed=1)},
        16,
        {
            "version_stalenesses": [(0, 0), (0, 1), (1, 0), (1, 0), (1, 0), (1, 0), (1, 0), (1, 7)],
            "versions": 8,
            "rejected": 0,
            "virtual_seconds": 20.542094671978518,
            "client_updates": {"c0": 2, "c1": 1, "c2": 5, "c3": 3, "c4": 3, "c5": 2},
            "weights_abs_sum": 86.67173767089844,
        },
    ),
    "fedbuff-deadline-gate": (
        {"mode": "fedbuff", "buffer_size": 3, "max_wait_seconds": 1.5, "max_staleness": 2},
        4,
        {"speeds": DeviceSpeeds(seed=5), "seed": 3},
        16,
        {
            "version_stalenesses": [(0, 0, 0), (1, 1, 0), (0, 1, 0), (2, 0, 0), (2, 1), (1,)],
            "versions": 6,
            "rejected": 1,
            "virtual_seconds": 9.479606282390835,
            "client_updates": {"c0": 4, "c1": 6, "c2": 2, "c3": 1, "c4": 1, "c5": 2},
            "weights_abs_sum": 85.0921630859375,
        },
    ),
    "fedasync": (
        {"mode": "fedasync", "buffer_size": 1, "max_wait_seconds": None},
        2,
        {"speeds": DeviceSpeeds(seed=2), "network": NO_NETWORK},
        16,
        {
            "version_stalenesses": [(s,) for s in (0, 1, 0, 2, 1, 1, 1, 0, 0, 0, 0, 5, 1, 1, 0, 2)],
            "versions": 16,
            "rejected": 0,
            "virtual_seconds": 17.00946433240776,
            "client_updates": {"c0": 1, "c1": 5, "c2": 2, "c3": 4, "c4": 1, "c5": 3},
            "weights_abs_sum": 86.8997802734375,
        },
    ),
    "fedavg-rounds": (
        {"mode": "fedavg", "max_wait_seconds": None},
        3,
        {"speeds": DeviceSpeeds(seed=4)},
        12,
        {
            "version_stalenesses": [(0, 0, 0)] * 4,
            "versions": 4,
            "rejected": 0,
            "virtual_seconds": 24.005187215761623,
            "client_updates": {"c0": 1, "c1": 3, "c2": 4, "c3": 1, "c4": 1, "c5": 2},
            "weights_abs_sum": 86.45935821533203,
            "round_seconds": [6.633399683967568, 6.7177482786458835, 5.631339841839325, 5.022699411308848],
        },
    ),
}


@pytest.mark.parametrize("scenario", sorted(PINNED))
def test_per_arrival_results_are_those_of_the_two_loops_before(scenario: str) -> None:
    flat, concurrency, options, updates, expected = PINNED[scenario]
    strategy = StrategyConfig(scenario, _aggregation(**flat), TRAINING, concurrency=concurrency)
    simulator = Simulator(MODEL, _clients(6), strategy, seed=options.get("seed", 0), **_without_seed(options))
    result = simulator.run(updates, eval_every_updates=4)
    assert result.version_stalenesses == expected["version_stalenesses"]
    assert (result.versions, result.rejected, result.updates) == (expected["versions"], expected["rejected"], updates)
    assert result.client_updates == expected["client_updates"]
    assert result.virtual_seconds == pytest.approx(expected["virtual_seconds"], rel=1e-12)
    weights_abs_sum = sum(float(np.abs(value).sum()) for value in result.final_weights.values())
    assert weights_abs_sum == pytest.approx(expected["weights_abs_sum"], rel=1e-5)
    assert result.round_seconds == pytest.approx(expected.get("round_seconds", []), rel=1e-12)


def _without_seed(options: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in options.items() if name != "seed"}


def test_an_explicit_per_arrival_cadence_is_the_default() -> None:
    _, default = _run(_fedbuff(concurrency=3), speeds=DeviceSpeeds(seed=1))
    _, explicit = _run(_fedbuff(concurrency=3), speeds=DeviceSpeeds(seed=1), cadence=PER_ARRIVAL)
    assert explicit.version_stalenesses == default.version_stalenesses
    assert explicit.update_timings == default.update_timings


# ---------------------------------------------------------------- rounds, buffers, bytes


def test_synchronous_round_lasts_as_long_as_its_slowest_client() -> None:
    speeds = DeviceSpeeds(median_seconds=1.0, sigma=0.8, straggler_fraction=0.25, straggler_factor=6.0, seed=5)
    simulator, result = _run(_fedavg(), speeds=speeds, network=NO_NETWORK, jitter_sigma=0.0)
    slowest = max(simulator.compute_seconds)
    assert result.round_seconds == pytest.approx([slowest] * 3)
    assert result.virtual_seconds == pytest.approx(3 * slowest)
    assert result.versions == 3 and result.updates == 12


def test_fedbuff_with_k_equal_n_and_equal_delays_makes_the_fedavg_rounds() -> None:
    fedbuff = StrategyConfig(
        "fedbuff",
        _aggregation(mode="fedbuff", buffer_size=4, max_wait_seconds=None, staleness_function="constant"),
        TRAINING,
        concurrency=4,
    )
    _, sync = _run(_fedavg(), speeds=EQUAL, network=NO_NETWORK, jitter_sigma=0.0)
    _, buffered = _run(fedbuff, speeds=EQUAL, network=NO_NETWORK, jitter_sigma=0.0)
    assert sync.versions == buffered.versions == 3
    assert buffered.virtual_seconds == pytest.approx(sync.virtual_seconds)
    for name, value in sync.final_weights.items():
        np.testing.assert_allclose(buffered.final_weights[name], value, atol=1e-6)


def test_asynchronous_run_rejects_nothing_fresh_and_counts_bytes() -> None:
    simulator, result = _run(_fedbuff(concurrency=3), speeds=DeviceSpeeds(seed=1))
    assert result.updates == 12
    assert result.bytes_sent == 12 * simulator.message_bytes
    assert sum(result.client_updates.values()) == 12 == len(result.update_timings)
    assert result.curve[0].updates == 0 and result.curve[-1].updates == 12


def test_fedasync_aggregates_every_update() -> None:
    _, result = _run(_fedasync(concurrency=2), speeds=DeviceSpeeds(seed=2))
    assert result.versions == 12


def test_personal_layers_never_reach_the_global_model() -> None:
    shared_only = StrategyConfig(
        "fedbuff-personal",
        _aggregation(mode="fedbuff", buffer_size=2, max_wait_seconds=None),
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
    with pytest.raises(ValueError, match="at least one client"):
        Simulator(MODEL, {}, _fedbuff(), speeds=EQUAL)
    with pytest.raises(ValueError, match=r"client ids \['Cleveland'\] are not ids the job takes"):
        Simulator(MODEL, {**_clients(), "Cleveland": next(iter(_clients().values()))}, _fedbuff(), speeds=EQUAL)
    with pytest.raises(ValueError, match="seconds_per_step"):
        Simulator(MODEL, _clients(), _fedbuff(), speeds=EQUAL, seconds_per_step=-1.0)
    with pytest.raises(ValueError, match="training_slots"):
        FleetTiming(training_slots=0)
    with pytest.raises(ValueError, match="restart_seconds"):
        FleetTiming(restart_seconds=-0.1)


# ---------------------------------------------------------------- the job's cadence


def _burst_run(cadence: JobCadence | None) -> SimulationResult:
    simulator = Simulator(
        MODEL, _clients(), _fedbuff(concurrency=4), speeds=EQUAL, network=NO_NETWORK, jitter_sigma=0.0, cadence=cadence
    )
    return simulator.run(8, eval_every_updates=4)


def test_the_job_cadence_makes_clients_train_from_the_last_published_version() -> None:
    """Four equal clients finish together: a burst. The job sees it at its next trigger and publishes later."""
    immediate = _burst_run(None)
    batched = _burst_run(JobCadence(trigger_seconds=1.0, publish_seconds=0.5))
    # without a cadence the restarted clients train from version 2 at once; with it they restart at t=2 from
    # version 0, because the burst is judged at t=3 and published at t=3.5
    assert immediate.version_stalenesses == [(0, 0), (1, 1), (0, 0), (1, 1)]
    assert batched.version_stalenesses == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert batched.version_published_at == {0: 0.0, 2: 3.5, 4: 5.5}
    # the second burst arrives at t=4, is judged at t=5 and on fl.models at t=5.5
    assert batched.virtual_seconds == pytest.approx(5.5)


def test_a_batch_that_overruns_delays_the_next_one() -> None:
    cadence = JobCadence(trigger_seconds=1.0, publish_seconds=2.5)
    assert cadence.next_batch_at(2.0, job_free_at=0.0) == 3.0
    assert cadence.next_batch_at(2.4, job_free_at=5.5) == 5.5
    assert cadence.next_batch_at(0.0, job_free_at=0.0) == 1.0
    without_trigger = JobCadence(trigger_seconds=0.0, publish_seconds=1.0)
    assert without_trigger.judges_on_arrival and not cadence.judges_on_arrival
    assert without_trigger.next_batch_at(2.0, job_free_at=1.0) == 2.0  # a free job judges it on arrival
    assert without_trigger.next_batch_at(2.0, job_free_at=3.0) == 3.0
    assert JobCadence(trigger_seconds=0.0, publish_seconds=0.0) == PER_ARRIVAL
    with pytest.raises(ValueError, match="trigger_seconds"):
        JobCadence(trigger_seconds=-1.0)
    with pytest.raises(ValueError, match="publish_seconds"):
        JobCadence(publish_seconds=-1.0)


def test_a_cadence_is_refused_for_synchronous_rounds() -> None:
    with pytest.raises(ValueError, match="cadence"):
        _run(_fedavg(), speeds=EQUAL, cadence=JobCadence())


def test_the_jobs_drawn_cohorts_are_refused_rather_than_simulated_otherwise() -> None:
    strategy = _fedavg()
    drawn = dataclasses.replace(strategy, aggregation=dataclasses.replace(strategy.aggregation, cohort_fraction=0.5))
    with pytest.raises(ValueError, match="cohort_fraction"):
        _run(drawn, speeds=EQUAL)


# ---------------------------------------------------------------- one cost model


def test_a_clients_time_grows_with_its_local_steps() -> None:
    _, result = _run(_fedavg(), speeds=EQUAL, network=NO_NETWORK, jitter_sigma=0.0, seconds_per_step=0.75)
    # 16 training samples in batches of 8 for one epoch: 2 steps on top of the 2 s device delay
    assert result.round_seconds == pytest.approx([2.0 + 2 * 0.75] * 3)


def test_rounds_and_buffers_charge_a_client_the_same_time() -> None:
    """The same device and training cost 3.5 s in a FedAvg round and in a FedBuff buffer, queue or none."""
    options: dict[str, Any] = {"speeds": EQUAL, "network": NO_NETWORK, "jitter_sigma": 0.0, "seconds_per_step": 0.75}
    for fleet in (None, FleetTiming(training_slots=1)):
        _, rounds = _run(_fedavg(concurrency=1), clients=1, updates=3, fleet=fleet, **options)
        _, buffered = _run(_fedbuff(concurrency=1), clients=1, updates=3, fleet=fleet, **options)
        assert rounds.round_seconds == pytest.approx([3.5] * 3)
        arrivals = [timing.arrived_at for timing in buffered.update_timings]
        assert arrivals == pytest.approx([3.5, 7.0, 10.5])


def test_a_synchronous_round_on_one_slot_waits_for_the_queue() -> None:
    """Four clients of a round train one after another on one slot; the round ends with the fourth update."""
    _, result = _run(
        _fedavg(), updates=4, speeds=EQUAL, network=NO_NETWORK, jitter_sigma=0.0, seconds_per_step=0.75,
        fleet=FleetTiming(training_slots=1),
    )  # fmt: skip
    assert [timing.training_started_at for timing in result.update_timings] == pytest.approx([0.0, 1.5, 3.0, 4.5])
    assert result.round_seconds == pytest.approx([8.0])


# ---------------------------------------------------------------- the demo's fleet: one slot, reads at the start


def test_one_training_slot_queues_trainings_and_sends() -> None:
    """Four clients, one trainer taking 1.5 s each (2 steps at 0.75 s), then a 2 s delay before sending.

    The fleet's thread takes due work in order of due time: the fourth training (asked at 0) comes before the
    first send (due at 3.5), so sends due during a training go out when it ends.
    """
    _, result = _run(
        _fedbuff(concurrency=4), updates=4, speeds=EQUAL, network=NO_NETWORK, jitter_sigma=0.0,
        cadence=JobCadence(trigger_seconds=0.5, publish_seconds=0.0), seconds_per_step=0.75,
        fleet=FleetTiming(training_slots=1),
    )  # fmt: skip
    timings = sorted(result.update_timings, key=lambda timing: timing.training_started_at)
    assert [timing.client_id for timing in timings] == ["c0", "c1", "c2", "c3"]
    assert [timing.training_started_at for timing in timings] == pytest.approx([0.0, 1.5, 3.0, 4.5])
    assert [timing.arrived_at for timing in timings] == pytest.approx([6.0, 6.0, 6.5, 8.0])
    # the last update is judged at the next 0.5 s trigger after 8.0
    assert result.virtual_seconds == pytest.approx(8.5)


def test_with_one_slot_a_device_trains_from_the_version_published_when_its_training_starts() -> None:
    """Devices queue for the slot while versions are published: each reads the newest when the slot reaches it."""
    _, result = _run(
        _fedbuff(concurrency=6), updates=30, clients=6, speeds=DeviceSpeeds(median_seconds=0.5, seed=2),
        cadence=JobCadence(trigger_seconds=0.5, publish_seconds=1.0), seconds_per_step=0.1,
        fleet=FleetTiming(training_slots=1),
    )  # fmt: skip
    published = sorted(result.version_published_at.items(), key=lambda item: item[1])

    def newest_at(moment: float) -> int:
        return max(version for version, at in published if at <= moment)

    assert len(result.update_timings) == 30 and result.versions >= 10
    for timing in result.update_timings:
        assert timing.base_version == newest_at(timing.training_started_at), timing
    # the devices did wait across publications, so the version at their request was often an older one
    waited = [timing for timing in result.update_timings if newest_at(timing.asked_at) != timing.base_version]
    assert len(waited) >= 5


def test_a_device_waits_for_a_newer_version_holding_its_slot() -> None:
    """``version_wait_seconds``: 0.2 s before each training, cut short by a version published meanwhile.

    c0 waits 0.0-0.2 and trains to 1.7; c1 waits 1.7-1.9 and trains to 3.4. c0's update arrives at 3.7, makes
    version 1 in the batch at 4.0 (published at once); c0 asks again at 3.85 and its wait ends at 4.0 with
    version 1. c1's update is due at 5.4, during c0's training, so it goes out at 5.5.
    """
    fleet = FleetTiming(training_slots=1, version_wait_seconds=0.2, restart_seconds=0.15)
    _, result = _run(
        _fedasync(concurrency=2), updates=3, clients=2, speeds=EQUAL, network=NO_NETWORK, jitter_sigma=0.0,
        cadence=JobCadence(trigger_seconds=0.5, publish_seconds=0.0), seconds_per_step=0.75, fleet=fleet,
    )  # fmt: skip
    timings = result.update_timings
    assert [timing.client_id for timing in timings] == ["c0", "c1", "c0"]
    assert [timing.asked_at for timing in timings] == pytest.approx([0.0, 0.0, 3.85])
    assert [timing.training_started_at for timing in timings] == pytest.approx([0.2, 1.9, 4.0])
    assert [timing.base_version for timing in timings] == [0, 0, 1]
    assert [timing.arrived_at for timing in timings] == pytest.approx([3.7, 5.5, 7.5])
    assert result.version_stalenesses == [(0,), (1,), (1,)]


def test_devices_start_staggered_and_ask_again_after_a_pause() -> None:
    fleet = FleetTiming(restart_seconds=0.1, start_stagger_seconds=0.05)
    _, result = _run(
        _fedbuff(concurrency=4), updates=8, speeds=EQUAL, network=NO_NETWORK, jitter_sigma=0.0, fleet=fleet
    )
    asked = [timing.asked_at for timing in result.update_timings]
    arrived = [timing.arrived_at for timing in result.update_timings]
    assert asked == pytest.approx([0.0, 0.05, 0.1, 0.15, 2.1, 2.15, 2.2, 2.25])
    assert arrived == pytest.approx([2.0, 2.05, 2.1, 2.15, 4.1, 4.15, 4.2, 4.25])


def test_the_simulated_fleet_is_the_demos() -> None:
    assert (
        FleetTiming(training_slots=1, version_wait_seconds=0.2, restart_seconds=0.1, start_stagger_seconds=0.05)
        == SIMULATED_FLEET
    )
