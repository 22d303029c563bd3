"""The demo's aggregation settings: the defaults the benches share, and the DP variant ``--dp-noise-multiplier``
builds."""

import pytest

from aggregator import AggregationConfig
from aggregator.errors import InvalidConfigError
from fedstream.demo import DEFAULT_AGGREGATION, DemoSettings, private_aggregation


def test_the_default_aggregation_is_a_valid_fedbuff_config_without_dp() -> None:
    config = AggregationConfig.from_dict({**DEFAULT_AGGREGATION})
    assert config.strategy == "fedbuff"
    assert config.privacy is None


def test_the_private_variant_has_24_training_devices_and_claims_no_sampling_amplification() -> None:
    settings = DemoSettings()
    options = private_aggregation(settings, noise_multiplier=1.0, clip_norm=0.5)
    config = AggregationConfig.from_dict({**options}).with_secret_dp_seed()
    policy = config.privacy
    assert policy is not None
    assert policy.population == 24
    assert policy.sampling_rate(config.buffer.buffer_size) == 1.0, (
        "devices publish when they finish: no random sample to amplify with"
    )
    assert config.bounds_contributions
    assert policy.noise_multiplier == 1.0 and policy.clip_norm == 0.5
    assert not config.weight_by_sample_count
    assert 0 < policy.epsilon(48, 10) < policy.epsilon(96, 10)


def test_the_private_variant_keeps_the_demo_settings_it_is_given() -> None:
    settings = DemoSettings(held_out_subjects=(1, 2), aggregation={**DEFAULT_AGGREGATION, "buffer_size": 4})
    options = private_aggregation(settings, noise_multiplier=0.5, clip_norm=1.0)
    assert options["dp_population"] == 28 and options["buffer_size"] == 4


def test_a_noise_multiplier_of_zero_is_refused() -> None:
    with pytest.raises(InvalidConfigError):
        AggregationConfig.from_dict({**private_aggregation(DemoSettings(), noise_multiplier=0.0, clip_norm=0.5)})
