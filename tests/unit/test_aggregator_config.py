import json

import pytest

from aggregator import (
    AggregationConfig,
    BufferPolicy,
    InvalidConfigError,
    PrivacyPolicy,
    RobustPolicy,
    ServerAdagrad,
    ServerAdam,
    ServerOptimizerSettings,
    ServerSGD,
    ServerYogi,
    StalenessPolicy,
)


def test_defaults_are_valid_fedbuff() -> None:
    config = AggregationConfig()
    assert config.strategy == "fedbuff"
    assert config.staleness == StalenessPolicy("polynomial", exponent=0.5, max_staleness=20)
    assert config.buffer == BufferPolicy(buffer_size=10, max_wait_seconds=60.0)
    assert isinstance(config.make_optimizer(), ServerSGD)


@pytest.mark.parametrize(
    "config",
    [
        AggregationConfig(),
        AggregationConfig.from_dict(
            {"mode": "fedasync", "buffer_size": 1, "mixing": 0.6, "staleness_function": "hinge", "hinge_b": 2}
        ),
        AggregationConfig.from_dict(
            {"mode": "fedavg", "buffer_size": 20, "max_wait_seconds": None, "max_staleness": 0}
        ),
        AggregationConfig.from_dict({"server_optimizer": "yogi", "server_learning_rate": 0.01, "server_tau": 1e-4}),
        AggregationConfig.from_dict(
            {"server_optimizer": "momentum", "server_momentum": 0.9, "weight_by_sample_count": False}
        ),
        AggregationConfig.from_dict(
            {"server_learning_rate": 2, "max_wait_seconds": 5, "staleness_exponent": 1}
        ),  # ints for floats
    ],
)
def test_to_dict_from_dict_round_trip_through_json(config: AggregationConfig) -> None:
    data = config.to_dict()
    text = json.dumps(data, allow_nan=False)
    restored = AggregationConfig.from_dict(json.loads(text))
    assert restored == config
    assert restored.to_dict() == data
    assert list(data) == [
        "mode",
        "buffer_size",
        "max_wait_seconds",
        "staleness_function",
        "staleness_exponent",
        "hinge_a",
        "hinge_b",
        "max_staleness",
        "weight_by_sample_count",
        "server_optimizer",
        "server_learning_rate",
        "server_momentum",
        "server_beta1",
        "server_beta2",
        "server_tau",
        "mixing",
    ]


def test_to_dict_writes_float_fields_as_floats() -> None:
    data = AggregationConfig.from_dict({"server_learning_rate": 2, "max_wait_seconds": 5}).to_dict()
    assert type(data["server_learning_rate"]) is float
    assert type(data["max_wait_seconds"]) is float
    assert type(data["buffer_size"]) is int


def test_from_dict_fills_missing_keys_with_defaults() -> None:
    assert AggregationConfig.from_dict({"buffer_size": 4}) == AggregationConfig.from_dict({"buffer_size": 4})


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(InvalidConfigError, match=r"\['learning_rate'\]"):
        AggregationConfig.from_dict({"learning_rate": 0.1})


@pytest.mark.parametrize(
    ("name", "kwargs", "expected_type"),
    [
        ("adam", {"server_beta1": 0.5, "server_beta2": 0.9, "server_tau": 0.01}, ServerAdam),
        ("yogi", {}, ServerYogi),
        ("adagrad", {"server_tau": 0.01}, ServerAdagrad),
    ],
)
def test_make_optimizer_passes_hyperparameters(name: str, kwargs: dict[str, float], expected_type: type) -> None:
    optimizer = AggregationConfig.from_dict(
        {"server_optimizer": name, "server_learning_rate": 0.2, **kwargs}
    ).make_optimizer()
    assert type(optimizer) is expected_type
    assert optimizer.learning_rate == 0.2
    if "server_tau" in kwargs:
        assert optimizer.tau == kwargs["server_tau"]
    if "server_beta2" in kwargs:
        assert optimizer.beta2 == kwargs["server_beta2"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "fedprox"}, "fedprox"),
        ({"buffer_size": 0}, "buffer_size.*0"),
        ({"max_wait_seconds": -1.0}, "max_wait_seconds.*-1.0"),
        ({"staleness_function": "linear"}, "linear"),
        ({"staleness_exponent": -1.0}, "exponent.*-1.0"),
        ({"max_staleness": -2}, "max_staleness.*-2"),
        ({"weight_by_sample_count": "yes"}, "'yes'"),
        ({"server_optimizer": "lamb"}, "lamb"),
        ({"server_learning_rate": 0.0}, "learning_rate.*0.0"),
        ({"server_optimizer": "sgd", "server_momentum": 0.9}, "0.9"),
        ({"server_optimizer": "momentum", "server_momentum": 0.0}, "momentum > 0"),
        ({"server_optimizer": "adam", "server_beta1": 1.0}, "beta1.*1.0"),
        ({"mixing": 0.0}, "mixing.*0.0"),
        ({"mixing": 1.5}, "mixing.*1.5"),
        ({"mode": "fedasync", "buffer_size": 4}, "buffer_size must be 1, got 4"),
        ({"mode": "fedavg", "server_optimizer": "adam"}, "'adam'"),
        ({"mode": "fedavg", "server_learning_rate": 0.5}, "0.5"),
        ({"max_wait_seconds": float("inf")}, "inf"),
    ],
)
def test_invalid_configs_are_rejected_naming_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        AggregationConfig.from_dict({**kwargs})


def test_from_dict_validates_too() -> None:
    with pytest.raises(InvalidConfigError, match=r"buffer_size.*'10'"):
        AggregationConfig.from_dict({"buffer_size": "10"})


def test_a_config_is_built_from_the_policies_and_its_json_is_theirs_flattened() -> None:
    config = AggregationConfig(
        strategy="fedbuff",
        buffer=BufferPolicy(buffer_size=4, max_wait_seconds=None),
        staleness=StalenessPolicy("hinge", hinge_a=2.0, hinge_b=1, max_staleness=8),
        optimizer=ServerOptimizerSettings("adam", learning_rate=0.01),
        robust=RobustPolicy(rule="trimmed_mean", trim_fraction=0.2),
    )
    data = config.to_dict()
    assert data["buffer_size"] == 4 and data["max_wait_seconds"] is None
    assert (data["staleness_function"], data["hinge_a"], data["max_staleness"]) == ("hinge", 2.0, 8)
    assert (data["server_optimizer"], data["server_learning_rate"]) == ("adam", 0.01)
    assert (data["robust_aggregation"], data["trim_fraction"]) == ("trimmed_mean", 0.2)
    assert "krum_byzantine" not in data, "robust keys at their defaults are left out"
    assert AggregationConfig.from_dict(data) == config


def test_each_policy_validates_itself_before_the_config_sees_it() -> None:
    with pytest.raises(InvalidConfigError, match="buffer_size"):
        BufferPolicy(buffer_size=0)
    with pytest.raises(InvalidConfigError, match="lamb"):
        ServerOptimizerSettings("lamb")
    with pytest.raises(InvalidConfigError, match="dp_delta"):
        PrivacyPolicy(noise_multiplier=1.0, delta=2.0)


def test_what_spans_the_policies_is_checked_by_the_config() -> None:
    private = PrivacyPolicy(noise_multiplier=1.0, population=3)
    with pytest.raises(InvalidConfigError, match=r"buffer_size \(10\) exceeds dp_population \(3\)"):
        AggregationConfig(privacy=private, weight_by_sample_count=False)
    with pytest.raises(InvalidConfigError, match="weight_by_sample_count=False"):
        AggregationConfig(buffer=BufferPolicy(2), privacy=private)
    with pytest.raises(InvalidConfigError, match="must be 'none'"):
        AggregationConfig(
            buffer=BufferPolicy(2), privacy=private, weight_by_sample_count=False, robust=RobustPolicy(rule="median")
        )


def test_privacy_keys_without_a_noise_multiplier_are_refused_not_ignored() -> None:
    with pytest.raises(InvalidConfigError, match=r"\['dp_clip_norm'\] need differential privacy on"):
        AggregationConfig.from_dict({"dp_clip_norm": 2.0})
    assert AggregationConfig.from_dict({"dp_noise_multiplier": None}).privacy is None


def test_aggregate_bursts_is_written_only_when_on_and_refused_with_privacy() -> None:
    assert "aggregate_bursts" not in AggregationConfig().to_dict(), "recorded configs keep their old form"
    bursts = AggregationConfig.from_dict({"aggregate_bursts": True})
    assert bursts.buffer.aggregate_bursts and bursts.to_dict()["aggregate_bursts"] is True
    assert AggregationConfig.from_dict(bursts.to_dict()) == bursts
    with pytest.raises(InvalidConfigError, match="aggregate_bursts must be a bool"):
        AggregationConfig.from_dict({"aggregate_bursts": "yes"})
    private = {"dp_noise_multiplier": 1.0, "weight_by_sample_count": False, "aggregate_bursts": True}
    with pytest.raises(InvalidConfigError, match="leave it off with DP"):
        AggregationConfig.from_dict(private)
