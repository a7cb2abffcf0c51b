"""The front and its hypervolume, on points whose answers are worked out by hand."""

from __future__ import annotations

import pytest

from dcsweep.runner.cycle.pareto import hypervolume, pareto_mask


def test_the_front_keeps_what_nothing_beats_on_both() -> None:
    accuracy, size = [0.5, 0.9, 0.4, 0.9], [10, 50, 60, 40]
    assert pareto_mask(accuracy, size) == [True, False, False, True]


def test_hypervolume_adds_the_band_each_front_point_raises() -> None:
    # (0.5 @ 10 B) dominates 90 x 0.5; (0.9 @ 50 B) adds 50 x 0.4; (0.4 @ 60 B) adds nothing
    assert hypervolume([(0.5, 10), (0.9, 50), (0.4, 60)], 100) == pytest.approx((45 + 20) / 100)
    assert hypervolume([(1.0, 0)], 100) == 1.0
    assert hypervolume([], 100) == 0.0
    assert hypervolume([(0.9, 150)], 100) == 0.0  # bigger than the reference: dominates nothing


def test_a_better_front_has_a_larger_hypervolume() -> None:
    worse = [(0.8, 20), (0.9, 40)]
    assert hypervolume([*worse, (0.85, 10)], 100) > hypervolume(worse, 100)
    with pytest.raises(ValueError, match="reference_bytes must be > 0"):
        hypervolume(worse, 0)
