"""The demo's aggregation settings: the defaults the benches share, and the DP variant ``--dp-noise-multiplier``
builds."""

from pathlib import Path

import pandas as pd
import pytest

from aggregator import AggregationConfig
from aggregator.errors import InvalidConfigError
from fedstream import cli, demo
from fedstream.demo import DEFAULT_AGGREGATION, DemoSettings, private_aggregation
from fedstream.demo_data import DemoData, TableSource, load_table_data
from fedstream.local_only import LocalTrainingSettings, local_only_comparison


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


def _sensor_table(path: Path) -> Path:
    """Two recordings of two labels for each of four subjects: 3 channels, ``t`` restarting per recording."""
    rows = [
        {"user": f"u{subject}", "rec": rec, "t": t, "act": act, "x": t % 3, "y": subject, "z": float(act == "run")}
        for subject in range(4)
        for rec in range(2)
        for act, offset in (("walk", 0), ("run", 20))
        for t in range(offset, offset + 20)
    ]
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


_SENSOR_OPTIONS = [
    "--subject-column", "user", "--label-column", "act",
    "--order-column", "t", "--window", "8", "--step", "4", "--sequence-column", "rec",
]  # fmt: skip


def _no_stack(monkeypatch: pytest.MonkeyPatch) -> list[tuple[DemoSettings, DemoData | None]]:
    """Replace the run: record what it would run with; starting the stack fails the test."""
    import devstack.local_stack

    runs: list[tuple[DemoSettings, DemoData | None]] = []

    def stack_up() -> None:
        raise AssertionError("the stack started")

    monkeypatch.setattr(devstack.local_stack, "stack_up", stack_up)
    monkeypatch.setattr(demo, "run_demo", lambda settings, data=None: runs.append((settings, data)) or 0)
    return runs


def test_the_demo_parses_the_table_options_into_settings_and_loads_the_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = _no_stack(monkeypatch)
    table = _sensor_table(tmp_path / "sensors.parquet")
    argv = ["demo", "--table", str(table), *_SENSOR_OPTIONS, "--held-out-subjects", "u1, u3", "--minutes", "0.5"]
    assert cli.main(argv) == 0
    ((settings, data),) = runs
    assert settings.table == TableSource(
        path=table,
        subject_column="user",
        label_column="act",
        order_column="t",
        window=8,
        step=4,
        sequence_column="rec",
        held_out_subjects=("u1", "u3"),
    )
    assert settings.duration_seconds == 30.0
    assert data is not None
    assert sorted(data.training) == ["subject-u0", "subject-u2"] and sorted(data.held_out) == ["u1", "u3"]
    assert data.model_name == "table-cnn" and data.sample_shape == (3, 8) and data.num_classes == 2
    assert type(data.build(0)).__name__ == "HarCnn"


def test_a_rows_table_gets_an_mlp_and_a_fifth_of_its_subjects_held_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = _no_stack(monkeypatch)
    table = tmp_path / "rows.csv"
    pd.DataFrame({"site": [s for s in range(10) for _ in range(6)], "a": range(60), "y": [0, 1] * 30}).to_csv(table)
    argv = ["demo", "--table", str(table), "--subject-column", "site", "--label-column", "y", "--feature-columns", "a"]
    assert cli.main([*argv, "--dp-noise-multiplier", "1.0"]) == 0
    ((settings, data),) = runs
    assert data is not None and data.model_name == "table-mlp" and data.sample_shape == (1,)
    assert len(data.held_out) == 2 and len(data.training) == 8
    assert settings.aggregation["dp_population"] == 8, "the population is the table's training devices"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--label-column", "activity"], "lacks columns ['activity']"),
        (["--order-column", "time"], "lacks columns ['time']"),
        (["--window", "100"], "no windows: the window of 100 rows is longer than every run"),
        (["--window", "2"], "--window 2 is too short"),
        (["--step", "0"], "step must be a positive number of rows, got 0"),
        (["--held-out-subjects", "u9"], "held-out subjects ['u9'] are not usable subjects of column 'user'"),
        (["--sequence-column", "t"], "column 't' is named for two roles"),
    ],
)
def test_a_bad_table_exits_2_with_one_line_before_anything_starts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    change: list[str],
    message: str,
) -> None:
    runs = _no_stack(monkeypatch)
    table = _sensor_table(tmp_path / "sensors.parquet")
    options = dict(zip(_SENSOR_OPTIONS[::2], _SENSOR_OPTIONS[1::2], strict=True))
    options[change[0]] = change[1]
    assert cli.main(["demo", "--table", str(table), *(word for pair in options.items() for word in pair)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fedstream demo: ") and message in error and error.count("\n") == 1
    assert not runs


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--subject-column", "user"], "--subject-column need --table"),
        (["--table", "t.csv", "--label-column", "y"], "--table needs --subject-column"),
        (["--table", "t.csv", "--subject-column", "s", "--label-column", "y", "--window", "8"], "go together"),
        (["--table", "missing.csv", "--subject-column", "s", "--label-column", "y"], "no table at missing.csv"),
    ],
)
def test_table_options_out_of_place_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    runs = _no_stack(monkeypatch)
    assert cli.main(["demo", *argv]) == 2
    assert message in capsys.readouterr().err and not runs


def test_the_local_only_comparison_sets_the_global_model_against_each_client_alone(tmp_path: Path) -> None:
    from producers.models import model_weights

    source = TableSource(
        _sensor_table(tmp_path / "sensors.parquet"), "user", "act", order_column="t", window=8, sequence_column="rec"
    )
    data = load_table_data(source)
    global_weights = model_weights(data.build(0))
    training = LocalTrainingSettings(epochs=1, learning_rate=0.02, seed=0)
    comparison = local_only_comparison(
        data, global_weights, 7, {"subject-u0": 3}, training=training, max_clients=2, say=lambda _: None
    )
    assert comparison.subjects == tuple(data.held_out) and comparison.training_clients == 3
    assert len(comparison.local_clients) == 2, "a seeded sample of the training clients"
    assert all(len(row) == 2 for row in comparison.local_accuracy)
    epochs = dict(zip(comparison.local_clients, comparison.local_epochs, strict=True))
    assert epochs.get("subject-u0", 3) == 3 and all(count >= 1 for count in epochs.values())
    lines = comparison.lines()
    assert "global model v7" in lines[0] and "a seeded sample of 2 of 3 clients" in lines[0]
    assert lines[2].split()[:3] == ["subject", "samples", "global"]
    assert len(lines) == 3 + len(data.held_out)
    comparison.write_csv(tmp_path / "local-only.csv")
    written = pd.read_csv(tmp_path / "local-only.csv")
    assert list(written.columns) == ["subject", "samples", "global_v7", *comparison.local_clients]
