import json
import math
from datetime import UTC, datetime

import numpy as np
import pytest

from aggregator import (
    AggregationConfig,
    InvalidConfigError,
    InvalidStateError,
    PendingUpdate,
    PrivacyLedger,
    PrivacyPolicy,
    PrivateServerOptimizer,
    StalenessPolicy,
    epsilon_after,
    fedbuff_step,
    gaussian_noise,
    l2_norm,
    make_strategy,
)
from schemas.tensors import decode_tensors, encode_tensors, parameter_hash
from streaming_jobs.aggregation import recompute_parameters

NOW = datetime(2025, 3, 1, tzinfo=UTC)
DP = {"dp_noise_multiplier": 1.0, "dp_clip_norm": 0.5, "dp_population": 100, "weight_by_sample_count": False}


def test_noise_std_matches_sigma_times_clip_over_many_draws() -> None:
    like = {"w": np.zeros(200_000, dtype=np.float32)}
    noise = gaussian_noise(like, 0.75, seed=3, version=9)["w"].astype(np.float64)
    # the sample sd of 200k normals is within 1% of the truth with overwhelming probability (sd of sd ~ 0.16%)
    assert noise.std() == pytest.approx(0.75, rel=0.01)
    assert abs(noise.mean()) < 0.01


def test_private_step_adds_noise_of_sigma_clip_over_n() -> None:
    policy = PrivacyPolicy(noise_multiplier=2.0, clip_norm=0.5, population=1000, seed=0)
    optimizer = PrivateServerOptimizer(AggregationConfig().make_optimizer(), policy, buffer_size=4)
    zeros = {"w": np.zeros(100_000, dtype=np.float32)}
    new = optimizer.private_step(zeros, zeros, update_count=4, version=1, unclipped_count=4)
    assert float(np.std(new["w"])) == pytest.approx(2.0 * 0.5 / 4, rel=0.02)


def test_same_seed_and_version_reproduce_the_noise_and_others_do_not() -> None:
    like = {"b": np.zeros(3, dtype=np.float32), "a": np.zeros((2, 2), dtype=np.float32)}
    first = gaussian_noise(like, 1.0, seed=5, version=12)
    reordered = gaussian_noise({"a": like["a"], "b": like["b"]}, 1.0, seed=5, version=12)
    assert parameter_hash(first) == parameter_hash(reordered)
    assert parameter_hash(first) != parameter_hash(gaussian_noise(like, 1.0, seed=5, version=13))
    assert parameter_hash(first) != parameter_hash(gaussian_noise(like, 1.0, seed=6, version=12))


def test_dp_step_clips_every_update_and_records_what_it_applied() -> None:
    rng = np.random.default_rng(0)
    updates = [
        PendingUpdate(f"u{i}", {"w": rng.normal(0, s, 50).astype(np.float32)}, 2, 10, NOW, client_id=f"c{i}")
        for i, s in enumerate((0.001, 1.0, 10.0))
    ]
    config = AggregationConfig.from_dict({"buffer_size": 3, **DP}).with_secret_dp_seed()
    result = fedbuff_step(
        {"w": np.zeros(50, dtype=np.float32)},
        2,
        updates,
        StalenessPolicy("constant", max_staleness=None),
        False,
        config.make_optimizer(),
    )
    for update, weight in zip(updates, result.weights, strict=True):
        assert weight * l2_norm(update.delta) <= 0.5 / 3 * (1 + 1e-9)
    assert result.weights[0] == pytest.approx(1 / 3)


@pytest.mark.parametrize("adaptive", [False, True])
def test_audit_recomputes_a_private_version_and_the_adaptive_clip_is_state(adaptive: bool) -> None:
    rng = np.random.default_rng(2)
    params = {"a": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=6).astype(np.float32)}
    config = AggregationConfig.from_dict({"buffer_size": 5, "dp_adaptive_clipping": adaptive, "dp_seed": 11, **DP})
    optimizer = config.make_optimizer()
    assert isinstance(optimizer, PrivateServerOptimizer)
    hashes = []
    for version in range(3):
        updates = [
            PendingUpdate(
                f"v{version}-{i}",
                {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()},
                version,
                1,
                NOW,
                client_id=f"c{i}",
            )
            for i in range(5)
        ]
        parent_state = encode_tensors(optimizer.state_dict())
        result = make_strategy(config).aggregate(params, version, updates, optimizer)
        audit = AggregationConfig.from_dict(config.to_dict()).make_optimizer()
        audit.load_state_dict(decode_tensors(parent_state))
        recomputed = recompute_parameters(
            decode_tensors(encode_tensors(params)), [u.delta for u in updates], list(result.weights), config, audit
        )
        assert parameter_hash(recomputed) == parameter_hash(result.new_params)
        params = result.new_params
        hashes.append(parameter_hash(params))
    assert isinstance(optimizer, PrivateServerOptimizer)
    assert optimizer.version == 3
    if adaptive:  # every norm (~sqrt(18) = 4.2) is above C = 0.5, so C grows towards the median
        assert optimizer.clip_norm > 0.5
    else:
        assert optimizer.clip_norm == 0.5
    restored = config.make_optimizer()
    restored.load_state_dict(decode_tensors(encode_tensors(optimizer.state_dict())))
    assert isinstance(restored, PrivateServerOptimizer)
    assert restored.clip_norm == optimizer.clip_norm and restored.version == 3


def test_private_optimizer_refuses_a_noiseless_step() -> None:
    optimizer = AggregationConfig.from_dict({"buffer_size": 5, **DP}).with_secret_dp_seed().make_optimizer()
    zeros = {"w": np.zeros(2, dtype=np.float32)}
    with pytest.raises(InvalidConfigError, match="private_step"):
        optimizer.step(zeros, zeros)


def test_epsilon_grows_with_versions_and_shrinks_with_sigma() -> None:
    eps = [epsilon_after(1.0, 0.05, versions, 1e-5) for versions in (1, 10, 100, 1000)]
    assert eps == sorted(eps) and eps[0] < eps[-1]
    by_sigma = [epsilon_after(sigma, 0.05, 100, 1e-5) for sigma in (0.7, 1.0, 2.0, 4.0)]
    assert by_sigma == sorted(by_sigma, reverse=True)
    assert epsilon_after(1.0, 0.05, 0, 1e-5) == 0.0


def test_epsilon_matches_dp_accounting_reference() -> None:
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.1)), 1000)
    reference = accountant.get_epsilon(1e-5)
    assert epsilon_after(1.1, 0.01, 1000, 1e-5) == pytest.approx(reference, rel=1e-12)
    assert reference == pytest.approx(1.7118, abs=1e-3)  # dp-accounting 0.6.0, RDP orders by default


def test_policy_epsilon_claims_no_amplification_unless_clients_check_in_at_random() -> None:
    arbitrary = AggregationConfig.from_dict({"buffer_size": 5, **DP}).with_secret_dp_seed().privacy
    assert arbitrary is not None and arbitrary.sampling_rate(5) == 1.0
    assert arbitrary.assumption(5) == "no_amplification"
    assert arbitrary.epsilon(40, 5) == epsilon_after(1.0, 1.0, 40, 1e-5)
    checked_in_config = AggregationConfig.from_dict({"buffer_size": 5, "dp_participation": "random_check_in", **DP})
    checked_in = checked_in_config.with_secret_dp_seed().privacy
    assert checked_in is not None and checked_in.sampling_rate(5) == 0.05
    assert checked_in.assumption(5) == "poisson_subsampling q=0.05"
    assert checked_in.epsilon(40, 5) == epsilon_after(1.0, 0.05, 40, 1e-5)
    assert checked_in.epsilon(40, 5) < arbitrary.epsilon(40, 5) / 5, (
        "the amplification is large, hence only when claimed"
    )


def test_config_round_trips_dp_fields_and_defaults_are_off() -> None:
    default = AggregationConfig()
    assert default.privacy is None
    assert not isinstance(default.make_optimizer(), PrivateServerOptimizer)
    assert not any(key.startswith("dp_") for key in default.to_dict())
    config = AggregationConfig.from_dict(
        {
            "buffer_size": 5,
            "dp_adaptive_clipping": True,
            "dp_target_quantile": 0.7,
            "dp_delta": 1e-6,
            "dp_seed": 4,
            **DP,
        }
    )  # type: ignore[arg-type]
    data = config.to_dict()
    assert data["dp_noise_multiplier"] == 1.0 and data["dp_population"] == 100
    assert AggregationConfig.from_dict(data) == config


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({**DP, "weight_by_sample_count": True}, "weight_by_sample_count"),
        ({**DP, "dp_population": 3}, r"buffer_size \(5\) exceeds dp_population \(3\)"),
        ({**DP, "dp_population": 0}, "dp_population must be >= 1, got 0"),
        ({**DP, "dp_participation": "poisson"}, "dp_participation must be one of"),
        ({**DP, "dp_epsilon_budget": 0.0}, "dp_epsilon_budget must be > 0"),
        ({"dp_epsilon_budget": 8.0}, "need differential privacy on"),
        ({"dp_participation": "random_check_in"}, "need differential privacy on"),
        ({**DP, "robust_aggregation": "median"}, "robust_aggregation"),
        ({**DP, "dp_noise_multiplier": 0.0}, "dp_noise_multiplier"),
        ({**DP, "dp_delta": 1.0}, "dp_delta"),
        ({**DP, "dp_adaptive_clipping": True, "dp_clip_count_noise_multiplier": 0.4}, "count_noise"),
    ],
)
def test_invalid_dp_configs_name_the_field(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        AggregationConfig.from_dict({"buffer_size": 5, **options})


def test_adaptive_noise_multiplier_accounts_for_the_count() -> None:
    policy = PrivacyPolicy(1.0, 1.0, 100, adaptive_clipping=True)
    assert policy.delta_noise_multiplier == pytest.approx(1 / math.sqrt(1 - 0.25))


def test_without_a_seed_a_private_config_cannot_run_until_a_driver_draws_a_secret_one() -> None:
    config = AggregationConfig.from_dict({**DP})
    assert _seed(config) is None, "constructing a config draws nothing"
    with pytest.raises(InvalidConfigError, match="needs a dp_seed"):
        config.make_optimizer()
    first, second = config.with_secret_dp_seed(), config.with_secret_dp_seed()
    assert isinstance(_seed(first), int) and isinstance(_seed(second), int)
    assert _seed(first) != _seed(second), "a default seed would let anyone regenerate and remove the noise"
    assert _seed(first) != 0
    assert isinstance(first.make_optimizer(), PrivateServerOptimizer)


def test_the_drawn_seed_is_recorded_so_an_audit_regenerates_the_same_noise() -> None:
    config = AggregationConfig.from_dict({**DP}).with_secret_dp_seed()
    recorded = AggregationConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert _seed(recorded) == _seed(config)
    assert recorded == config


def test_an_explicit_seed_is_kept_and_no_seed_is_drawn_without_dp() -> None:
    assert _seed(AggregationConfig.from_dict({**DP, "dp_seed": 7}).with_secret_dp_seed()) == 7
    plain = AggregationConfig()
    assert plain.with_secret_dp_seed() is plain and _seed(plain) is None
    assert "dp_seed" not in plain.to_dict()


def _private_steps(optimizer: PrivateServerOptimizer, versions: range) -> None:
    zeros = {"w": np.zeros(3, dtype=np.float32)}
    for version in versions:
        optimizer.private_step(zeros, zeros, update_count=2, version=version, unclipped_count=2)


def test_the_ledger_composes_mixed_mechanisms_as_dp_accounting_does() -> None:
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(1.0), 4)
    accountant.compose(dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(2.0)), 6)
    ledger = PrivacyLedger().add(1.0, 1.0, 3).add(2.0, 0.25, 6).add(1.0, 1.0)
    assert ledger.entries == ((1.0, 1.0, 4), (2.0, 0.25, 6)) and ledger.versions == 10
    assert ledger.epsilon(1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)
    assert ledger.assumption() == "no_amplification (4 versions); poisson_subsampling q=0.25 (6 versions)"
    assert PrivacyLedger().epsilon(1e-5) == 0.0 and PrivacyLedger().assumption() is None


def test_the_ledger_is_optimizer_state_so_a_restart_with_other_settings_keeps_the_history() -> None:
    first = AggregationConfig.from_dict({"buffer_size": 2, **DP}).with_secret_dp_seed().make_optimizer()
    assert isinstance(first, PrivateServerOptimizer)
    _private_steps(first, range(1, 4))
    assert first.ledger.entries == ((1.0, 1.0, 3),)
    assert first.epsilon_spent() == epsilon_after(1.0, 1.0, 3, 1e-5)
    state = decode_tensors(encode_tensors(first.state_dict()))
    checked_in = {**DP, "dp_noise_multiplier": 2.0, "dp_participation": "random_check_in"}
    restarted = AggregationConfig.from_dict({"buffer_size": 2, **checked_in}).with_secret_dp_seed().make_optimizer()
    assert isinstance(restarted, PrivateServerOptimizer)
    restarted.load_state_dict(state)
    assert restarted.epsilon_spent() == first.epsilon_spent() and restarted.version == 3
    _private_steps(restarted, range(4, 6))
    assert restarted.ledger.entries == ((1.0, 1.0, 3), (2.0, 0.02, 2))
    assert restarted.epsilon_spent() > first.epsilon_spent()
    assert restarted.epsilon_spent() < epsilon_after(1.0, 1.0, 5, 1e-5), "the new versions cost less: more noise"


def test_a_state_from_before_the_ledger_is_read_as_versions_without_amplification() -> None:
    optimizer = AggregationConfig.from_dict({"buffer_size": 2, **DP}).with_secret_dp_seed().make_optimizer()
    assert isinstance(optimizer, PrivateServerOptimizer)
    _private_steps(optimizer, range(1, 6))
    old_state = {key: value for key, value in optimizer.state_dict().items() if not key.startswith("dp/ledger")}
    restored = AggregationConfig.from_dict({"buffer_size": 2, **DP}).with_secret_dp_seed().make_optimizer()
    assert isinstance(restored, PrivateServerOptimizer)
    restored.load_state_dict(old_state)
    assert restored.ledger.entries == ((1.0, 1.0, 5),)
    with pytest.raises(InvalidStateError, match="needs all of"):
        restored.load_state_dict({**old_state, "dp/ledger_versions": np.array([5], dtype=np.int64)})


def test_the_budget_check_says_whether_one_more_version_fits() -> None:
    assert (
        AggregationConfig.from_dict({"buffer_size": 2, **DP}).with_secret_dp_seed().make_optimizer().budget_check()
        is None
    )  # type: ignore[arg-type, attr-defined]
    budget = (epsilon_after(1.0, 1.0, 2, 1e-5) + epsilon_after(1.0, 1.0, 3, 1e-5)) / 2
    optimizer = (
        AggregationConfig.from_dict({"buffer_size": 2, "dp_epsilon_budget": budget, **DP})
        .with_secret_dp_seed()
        .make_optimizer()
    )  # type: ignore[arg-type]
    assert isinstance(optimizer, PrivateServerOptimizer)
    checks = []
    for version in range(1, 3):
        checks.append(optimizer.budget_check())
        _private_steps(optimizer, range(version, version + 1))
    final = optimizer.budget_check()
    assert all(check is not None and check.allows_next for check in checks)
    assert final is not None and not final.allows_next and final.version == 2
    assert final.spent == epsilon_after(1.0, 1.0, 2, 1e-5) and final.next_epsilon == epsilon_after(1.0, 1.0, 3, 1e-5)
    assert "privacy budget exhausted" in final.describe() and f"{budget:g}" in final.describe()


def test_random_check_in_derives_its_population_from_the_enrolled_clients_and_refuses_impossible_rates() -> None:
    checked_in = {**DP, "dp_population": None, "dp_participation": "random_check_in"}
    config = AggregationConfig.from_dict({"buffer_size": 5, **checked_in}).with_secret_dp_seed()
    policy = config.privacy
    assert policy is not None
    with pytest.raises(InvalidConfigError, match="dp_population is unknown"):
        _ = policy.sampling_rate(5)
    derived = config.with_enrolled_population(40)
    assert _population(derived) == 40 and _seed(derived) == _seed(config)
    derived_policy = derived.privacy
    assert derived_policy is not None and derived_policy.sampling_rate(5) == 5 / 40
    with pytest.raises(InvalidConfigError, match=r"buffer_size \(5\) exceeds dp_population \(3\)"):
        config.with_enrolled_population(3)
    with pytest.raises(InvalidConfigError, match="none can be derived"):
        config.with_enrolled_population(None)
    claimed = AggregationConfig.from_dict({"buffer_size": 5, **{**checked_in, "dp_population": 1000}})
    with pytest.raises(InvalidConfigError, match=r"dp_population \(1000\) exceeds the 24 enrolled"):
        claimed.with_enrolled_population(24)
    assert claimed.with_enrolled_population(2000) is claimed
    assert claimed.with_enrolled_population(None) is claimed, "no registry: the operator's figure stands"
    arbitrary = AggregationConfig.from_dict({"buffer_size": 5, **DP})
    assert arbitrary.with_enrolled_population(3) is arbitrary, "no sampling claim, no population needed"


def test_new_dp_fields_round_trip_and_stay_out_of_old_configs() -> None:
    config = AggregationConfig.from_dict(
        {"buffer_size": 5, "dp_participation": "random_check_in", "dp_epsilon_budget": 8, **DP}
    )  # type: ignore[arg-type]
    data = config.to_dict()
    assert data["dp_participation"] == "random_check_in" and data["dp_epsilon_budget"] == 8.0
    assert AggregationConfig.from_dict(json.loads(json.dumps(data))) == config
    plain = AggregationConfig.from_dict({"buffer_size": 5, **DP}).to_dict()
    assert "dp_participation" not in plain and "dp_epsilon_budget" not in plain


def _seed(config: AggregationConfig) -> int | None:
    return None if config.privacy is None else config.privacy.seed


def _population(config: AggregationConfig) -> int | None:
    return None if config.privacy is None else config.privacy.population
