"""The quality benchmark's pure helpers: time to target over seeds, and the centralized baseline's grid search."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.quality import RunRow, TimeToTarget, aggregate_time_to_target, load_rows, summarize, time_to_target
from bench.tuning import GridPoint, describe_choices, pick_best, stop_early, stratified_folds, tune_rate_and_epochs

CURVE = [(0.0, 0, 0.2), (10.0, 10, 0.6), (25.0, 20, 0.85), (40.0, 30, 0.8), (55.0, 40, 0.9)]


# ---------------------------------------------------------------- time to target


def test_time_to_target_is_the_first_point_at_or_above_the_target() -> None:
    assert time_to_target(CURVE, 0.85) == (25.0, 20)
    assert time_to_target(CURVE, 0.6) == (10.0, 10)
    assert time_to_target(CURVE, 0.2) == (0.0, 0)


def test_time_to_target_is_none_when_never_reached() -> None:
    assert time_to_target(CURVE, 0.95) is None
    assert time_to_target([], 0.5) is None


def test_every_seed_reached() -> None:
    reach = aggregate_time_to_target({0: (30.0, 20), 1: (10.0, 10), 2: (50.0, 40)})
    assert reach == TimeToTarget(
        seeds=(0, 1, 2), never=(), median_seconds=30.0, median_updates=20.0, median_seconds_all=30.0
    )
    assert reach.reached == 3
    assert reach.describe() == "3/3 reached, median 30 s (20 updates) over those"


def test_a_seed_that_never_reaches_is_counted_not_dropped() -> None:
    reach = aggregate_time_to_target({0: (30.0, 20), 1: None, 2: (50.0, 40)})
    assert reach.seeds == (0, 1, 2)
    assert reach.never == (1,)
    assert reach.reached == 2
    assert reach.median_seconds == 40.0  # over the two that reached
    assert reach.median_updates == 30.0
    assert reach.median_seconds_all == 50.0  # the never-seed counted as slowest
    assert reach.describe() == "2/3 reached, median 40 s (30 updates) over those, 1 never within the budget (seed 1)"


def test_median_over_all_seeds_is_never_when_half_or_more_never_reach() -> None:
    reach = aggregate_time_to_target({0: (30.0, 20), 1: None})
    assert reach.median_seconds == 30.0
    assert math.isinf(reach.median_seconds_all)
    assert reach.describe().startswith("1/2 reached")


def test_no_seed_reached() -> None:
    reach = aggregate_time_to_target({3: None, 1: None})
    assert reach.never == (1, 3)
    assert reach.reached == 0
    assert math.isnan(reach.median_seconds) and math.isnan(reach.median_updates)
    assert reach.describe() == "0/2 reached, 2 never within the budget (seeds 1, 3)"


def test_aggregate_needs_a_seed() -> None:
    with pytest.raises(ValueError, match="no seeds"):
        aggregate_time_to_target({})


def _rows() -> list[RunRow]:
    tuned = GridPoint(0.02, 7, 0.93, 0.2)
    rows = [
        RunRow("centralized", 0, 0.89, 0.88, tuned=tuned, grid=[GridPoint(0.02, 6, 0.92, 0.25), tuned]),
        RunRow("centralized", 1, 0.80, 0.79, tuned=GridPoint(0.01, 9, 0.9, 0.3)),
    ]
    # 95 % of seed 0's 0.89 is 0.8455 (reached at 25 s); of seed 1's 0.80 is 0.76 (never reached).
    for seed, curve in ((0, CURVE), (1, [(0.0, 0, 0.2), (30.0, 10, 0.5), (60.0, 20, 0.7)])):
        rows.append(RunRow("fedbuff", seed, curve[-1][2], 0.5, updates=curve[-1][1], virtual_seconds=curve[-1][0],
                           curve=curve))  # fmt: skip
    return rows


def test_summary_counts_the_seed_that_never_reached(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = {row["strategy"]: row for row in summarize(_rows(), tmp_path)}
    printed = capsys.readouterr().out
    assert summary["fedbuff"]["reached_95"] == "1/2"
    assert summary["fedbuff"]["never_95_seeds"] == "1"
    assert summary["fedbuff"]["t95_median_reached"] == 25.0
    assert math.isinf(summary["fedbuff"]["t95_median_all_seeds"])
    assert summary["centralized"]["reached_95"] == ""  # no curve: not "0/2"
    assert "fedbuff: 1/2 reached, median 25 s (20 updates) over those, 1 never within the budget (seed 1)" in printed
    assert "centralized seed 0: lr 0.02, 7 ep chosen" in printed
    assert "0.01x9; 0.02x7" in printed  # the seeds disagree: both shown
    mean_gap = ((0.9 - 0.89) + (0.7 - 0.80)) / 2
    assert summary["fedbuff"]["vs_central"][0] == pytest.approx(mean_gap)


def test_csvs_keep_the_tuned_hyperparameters_and_the_grid(tmp_path: Path) -> None:
    summarize(_rows(), tmp_path)
    reloaded = {(row.strategy, row.seed): row for row in load_rows(tmp_path)}
    assert reloaded[("centralized", 0)].tuned == GridPoint(0.02, 7, 0.93, 0.2)
    assert reloaded[("centralized", 0)].grid == [GridPoint(0.02, 6, 0.92, 0.25), GridPoint(0.02, 7, 0.93, 0.2)]
    assert reloaded[("centralized", 1)].tuned is not None and reloaded[("centralized", 1)].tuned.epochs == 9
    assert reloaded[("fedbuff", 0)].curve == CURVE


# ---------------------------------------------------------------- the centralized grid


def test_describe_choices_merges_seeds_that_agree() -> None:
    assert describe_choices([GridPoint(0.02, 7, 0.9, 0.2), GridPoint(0.02, 7, 0.8, 0.3)]) == "lr 0.02, 7 ep"
    assert describe_choices([GridPoint(0.02, 7, 0.9, 0.2), GridPoint(0.005, 10, 0.8, 0.3)]) == "0.005x10; 0.02x7"
    assert describe_choices([]) == ""


def test_pick_best_takes_the_highest_score() -> None:
    points = [GridPoint(0.01, 3, 0.90, 0.3), GridPoint(0.02, 5, 0.93, 0.4), GridPoint(0.05, 2, 0.91, 0.2)]
    assert pick_best(points) == GridPoint(0.02, 5, 0.93, 0.4)


def test_pick_best_breaks_ties_by_loss_then_epochs_then_rate() -> None:
    assert pick_best([GridPoint(0.01, 3, 0.9, 0.3), GridPoint(0.02, 5, 0.9, 0.2)]).learning_rate == 0.02
    assert pick_best([GridPoint(0.01, 6, 0.9, 0.2), GridPoint(0.02, 5, 0.9, 0.2)]).epochs == 5
    assert pick_best([GridPoint(0.02, 5, 0.9, 0.2), GridPoint(0.01, 5, 0.9, 0.2)]).learning_rate == 0.01


def test_pick_best_ignores_diverged_points() -> None:
    points = [GridPoint(0.05, 1, math.nan, math.nan), GridPoint(0.01, 2, 0.5, math.inf), GridPoint(0.02, 1, 0.4, 1.0)]
    assert pick_best(points) == GridPoint(0.01, 2, 0.5, math.inf)
    with pytest.raises(ValueError, match="finite"):
        pick_best([GridPoint(0.05, 1, math.nan, math.nan)])


def test_stop_early_after_patience_epochs_without_improvement() -> None:
    assert not stop_early([0.5, 0.6, 0.7], patience=2)
    assert not stop_early([0.5, 0.7, 0.6], patience=2)
    assert stop_early([0.5, 0.7, 0.6, 0.7], patience=2)  # equal is not better
    assert not stop_early([0.5, 0.7, 0.6, 0.71], patience=2)
    assert not stop_early([0.1], patience=1)
    assert stop_early([0.5, 0.4], patience=1)
    assert stop_early([0.5, math.nan], patience=5)


@pytest.mark.parametrize("patience", [0, -1, 1.5, True])
def test_stop_early_rejects_a_bad_patience(patience: object) -> None:
    with pytest.raises(ValueError, match="patience"):
        stop_early([0.5], patience)  # type: ignore[arg-type]


SCORES = {
    0.01: [0.50, 0.60, 0.70, 0.75, 0.80, 0.82],  # still improving at the epoch limit
    0.02: [0.70, 0.85, 0.84, 0.83, 0.99],  # stops after 2 epochs without improvement: never sees 0.99
    0.05: [math.nan, 0.99],  # diverges at once
}


def _fake_training(trained: list[tuple[float, int]]) -> Callable[[float], Iterator[tuple[float, float, str]]]:
    def epochs_at(learning_rate: float) -> Iterator[tuple[float, float, str]]:
        for epoch, score in enumerate(SCORES[learning_rate], start=1):
            trained.append((learning_rate, epoch))
            yield score, 1.0 - score, f"weights lr={learning_rate} epoch={epoch}"

    return epochs_at


def test_grid_search_stops_early_and_keeps_the_best_epochs_weights() -> None:
    trained: list[tuple[float, int]] = []
    tuning = tune_rate_and_epochs([0.01, 0.02, 0.05], 5, _fake_training(trained), patience=2)
    assert (tuning.best.learning_rate, tuning.best.epochs, tuning.best.validation_score) == (0.02, 2, 0.85)
    assert tuning.best.validation_loss == pytest.approx(0.15)
    assert tuning.weights == "weights lr=0.02 epoch=2"
    # 0.01 capped at 5 epochs, 0.02 stopped after epoch 4, 0.05 stopped after its first (NaN) epoch
    assert trained == [(0.01, e) for e in range(1, 6)] + [(0.02, e) for e in range(1, 5)] + [(0.05, 1)]
    assert [(p.learning_rate, p.epochs) for p in tuning.grid] == trained


def test_grid_search_with_every_rate_diverged_fails() -> None:
    with pytest.raises(ValueError, match="finite"):
        tune_rate_and_epochs([0.05], 3, _fake_training([]), patience=2)


@pytest.mark.parametrize(
    ("rates", "max_epochs", "patience", "match"),
    [([], 3, 2, "learning_rates"), ([0.01], 0, 2, "max_epochs"), ([0.01], 3, 0, "patience")],
)
def test_grid_search_checks_its_arguments_before_training(
    rates: list[float], max_epochs: int, patience: int, match: str
) -> None:
    trained: list[tuple[float, int]] = []
    with pytest.raises(ValueError, match=match):
        tune_rate_and_epochs(rates, max_epochs, _fake_training(trained), patience=patience)
    assert trained == []


def test_stratified_folds_hold_each_row_out_once_and_keep_label_shares() -> None:
    labels = [0] * 8 + [1] * 4 + [2] * 2
    folds = stratified_folds(labels, 4, seed=3)
    assert len(folds) == 4
    held_out = [position for _, held in folds for position in held]
    assert sorted(held_out) == list(range(len(labels)))  # every row held out exactly once
    for fit, held in folds:
        assert sorted(fit + held) == list(range(len(labels)))
        assert [labels[p] for p in held].count(0) == 2
        assert [labels[p] for p in held].count(1) == 1
    assert sum(2 in [labels[p] for p in held] for _, held in folds) == 2  # the rare label is not piled in one fold
    assert stratified_folds(labels, 4, seed=3) == folds
    assert stratified_folds(labels, 4, seed=4) != folds


@pytest.mark.parametrize(("rows", "folds", "match"), [(5, 1, "folds must"), (5, True, "folds must"), (3, 4, "cannot")])
def test_stratified_folds_rejects_impossible_folds(rows: int, folds: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        stratified_folds([0] * rows, folds, seed=0)


def test_heart_table_shows_the_pooled_choices_and_the_csvs_keep_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.quality_heart import HeartRow
    from bench.quality_heart import summarize as summarize_heart

    tuned = GridPoint(0.01, 12, 0.84, 0.45)
    rows = [
        HeartRow("pooled", 0, 0.83, 0.78, tuned=tuned, grid=[GridPoint(0.01, 11, 0.83, 0.46), tuned]),
        HeartRow("fedbuff", 0, 0.82, 0.8, updates=80, virtual_seconds=40.0),
    ]
    summarize_heart(rows, tmp_path)
    printed = capsys.readouterr().out
    assert "lr 0.01, 12 ep" in printed and "4-fold cross-validation" in printed
    with (tmp_path / "quality_heart_runs.csv").open() as handle:
        runs = list(csv.DictReader(handle))
    assert (runs[0]["learning_rate"], runs[0]["epochs"], runs[1]["virtual_seconds"]) == ("0.01", "12", "40.0")
    with (tmp_path / "quality_heart_pooled_grid.csv").open() as handle:
        assert [record["chosen"] for record in csv.DictReader(handle)] == ["False", "True"]
