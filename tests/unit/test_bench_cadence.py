import math

from bench.cadence import second_half


def test_second_half_summarises_the_evaluations_made_once_half_the_updates_were_in() -> None:
    points = [(0, 0.1), (50, 0.5), (100, 0.7), (150, 0.9)]
    assert second_half(points) == (0.8, 0.1)


def test_second_half_of_a_run_without_updates_has_no_figure() -> None:
    mean, deviation = second_half([(0, 0.16)])
    assert math.isnan(mean) and math.isnan(deviation)


def test_one_late_evaluation_has_no_spread() -> None:
    assert second_half([(0, 0.1), (10, 0.2), (40, 0.6)]) == (0.6, 0.0)
