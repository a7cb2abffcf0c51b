"""The front and its hypervolume, on points whose answers are worked out by hand."""

from __future__ import annotations

import random

import pytest

from dcsweep.runner.cycle import Trial
from dcsweep.runner.cycle.pareto import Front, front_figure, hypervolume, label, mark_front, pareto_mask


def test_the_front_keeps_what_nothing_beats_on_both() -> None:
    accuracy, size = [0.5, 0.9, 0.4, 0.9], [10, 50, 60, 40]
    assert pareto_mask(accuracy, size) == [True, False, False, True]


@pytest.mark.parametrize("seed", range(5))
def test_a_front_kept_one_point_at_a_time_is_the_front_of_all_of_them(seed: int) -> None:
    rng = random.Random(seed)
    points = {f"t{i}": (rng.choice([0.5, 0.7, 0.9, rng.random()]), rng.choice([10, 20, rng.randint(1, 99)]))
              for i in range(300)}
    front = Front()
    for key, point in points.items():
        optimal, off = front.add(key, point)
        assert optimal == (key in front.points) and not set(off) & set(front.points)
    mask = pareto_mask([p[0] for p in points.values()], [p[1] for p in points.values()])
    assert set(front.points) == {k for k, keep in zip(points, mask, strict=True) if keep}
    assert len(front.points) < 30  # what each add looks at, however many points came


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


def _synthetic(n: int, seed: int = 0) -> list[Trial]:
    """``n`` trials shaped like a sweep's: accuracy falls and size shrinks with sparsity and k."""
    rng = random.Random(seed)
    trials = []
    for i in range(n):
        s, k = rng.choice([0.8, 0.9, 0.95, 0.97, 0.98, 0.99]), rng.choice([2, 3, 4, 6, 8, 16, 32])
        size = int(200_000 * (1 - s) * k.bit_length() / 6) + rng.randint(500, 3500)
        acc = min(0.99, 0.97 - 3 * (s - 0.8) ** 2 / k ** 0.5 + rng.gauss(0, 0.01))
        trials.append(Trial(str(i), {"sparsity": str(s), "k": str(k)}, acc, size, 1e6 / size, acc))
    return mark_front(trials)


def test_the_front_plot_of_2000_trials_labels_front_points_only_and_never_overlaps() -> None:
    import matplotlib.pyplot as plt

    trials = _synthetic(2000)
    fig = front_figure(trials, "2,000 trials", dense_accuracy=0.965, dense_bytes=1e6)
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    texts = [t for t in ax.texts if t.get_text()]
    front = {(label(t.params), t.compressed_bytes, t.val_accuracy) for t in trials if t.pareto_optimal}
    assert len(texts) >= len(front) // 2  # most of the front is named
    assert {(t.get_text(), t.xy[0], t.xy[1]) for t in texts} <= front  # front points only
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
    assert ax.get_xscale() == "log" and any(abs(line.get_ydata()[0] - 0.965) < 1e-12 for line in ax.lines)
    plt.close(fig)
