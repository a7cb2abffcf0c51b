"""1-D k-means: exact where it promises to be, sound everywhere, deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dcsweep.compression import INITS, kmeans_1d


def exact_sse(x: np.ndarray, k: int) -> float:
    """Textbook O(k n^2) dynamic program over the sorted points: an independent reference."""
    x = np.sort(x.astype(np.float64))
    n = x.size
    s1 = np.concatenate(([0.0], np.cumsum(x)))
    s2 = np.concatenate(([0.0], np.cumsum(x * x)))

    def cost(a: int, b: int) -> float:  # points a..b-1
        m = b - a
        return s2[b] - s2[a] - (s1[b] - s1[a]) ** 2 / m

    d = [cost(0, i) if i else 0.0 for i in range(n + 1)]
    for _ in range(1, k):
        d = [0.0] + [min(d[m] + cost(m, i) for m in range(i)) for i in range(1, n + 1)]
    return d[n]


def sse(x: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> float:
    return float(((x.astype(np.float64) - centers[labels]) ** 2).sum())


def pruned_layer(n: int, seed: int = 0) -> np.ndarray:
    """Weights as a pruned layer holds them: Laplace-like, with the small ones cut away."""
    w = np.random.default_rng(seed).laplace(0, 0.02, size=n * 4).astype(np.float32)
    return w[np.abs(w) > np.quantile(np.abs(w), 0.75)][:n]


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(1, 40), elements=st.floats(-1, 1, width=32)), st.integers(2, 6))
def test_optimal_matches_the_exact_solver(x: np.ndarray, k: int) -> None:
    centers, labels = kmeans_1d(x, k, "optimal")
    assert sse(x, centers, labels) == pytest.approx(exact_sse(x, min(k, np.unique(x).size)), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("n", [50, 5_000, 200_000])  # unique-value path and histogram path
def test_result_is_a_sound_clustering(init: str, n: int) -> None:
    x = pruned_layer(n)
    centers, labels = kmeans_1d(x, 13, init, seed=1)
    assert centers.size == 13 and labels.dtype == np.int32 and labels.shape == x.shape
    assert np.all(np.diff(centers) > 0)
    counts = np.bincount(labels, minlength=13)
    assert counts.min() > 0  # no empty cluster comes back
    np.testing.assert_allclose(np.bincount(labels, weights=x) / counts, centers, rtol=1e-12)
    # each value sits with its nearest centroid of the ones it was assigned against
    nearest = np.abs(x[:, None].astype(np.float64) - centers[None, :]).argmin(1)
    assert np.mean(nearest == labels) > 0.999
    if n >= 5_000:  # on 50 points Lloyd's local optima can be several times the optimum
        assert sse(x, centers, labels) <= 1.25 * sse(x, *kmeans_1d(x, 13, "optimal"))


@pytest.mark.parametrize("init", INITS)
def test_deterministic_for_a_seed(init: str) -> None:
    x = pruned_layer(100_000)
    a = kmeans_1d(x, 9, init, seed=5)
    b = kmeans_1d(torch.from_numpy(x), 9, init, seed=5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_optimal_is_near_exact_on_a_large_layer() -> None:
    x = pruned_layer(300_000)
    opt = sse(x, *kmeans_1d(x, 16, "optimal"))
    lin = sse(x, *kmeans_1d(x, 16, "linear"))
    # The exact SSE of a histogram-binned problem is a lower bound up to bin width; the optimal
    # init must beat Lloyd from linear init and sit within 0.1% of the best of many restarts.
    restarts = min(sse(x, *kmeans_1d(x, 16, "kmeans++", seed=s)) for s in range(8))
    assert opt <= lin and opt <= restarts * 1.001


def test_optimal_reaches_the_exact_partition_of_a_fine_histogram_at_k_256() -> None:
    """Over 4,096 occupied bins the DP runs on coarser bins and its cuts are then moved on the
    fine ones; the result must match the DP over every fine bin (the paper's 8-bit conv layers:
    the coarse DP followed by Lloyd alone was 4.6% worse here)."""
    from dcsweep.compression.kmeans import _dp_centers, _finalize, _histogram, _lloyd

    x = pruned_layer(300_000)
    hist, binning = _histogram(x, 16384)
    assert hist.w.size > 4096  # the coarse-then-refine path
    exact = sse(x, *_finalize(x, _lloyd(hist, _dp_centers(hist, 256), 300), binning))
    assert sse(x, *kmeans_1d(x, 256, "optimal", bins=16384)) <= exact * (1 + 1e-4)


def test_fewer_distinct_values_than_k() -> None:
    x = np.array([0.5, 0.5, -0.25, 0.5, -0.25, 1.0], dtype=np.float32)
    for init in INITS:
        centers, labels = kmeans_1d(x, 8, init)
        assert centers.tolist() == [-0.25, 0.5, 1.0]
        assert np.array_equal(centers[labels], x)


def test_duplicates_and_empty_clusters_are_handled() -> None:
    # density init puts several centroids on the dominant value; they must be moved, not lost
    x = np.concatenate((np.zeros(10_000), np.linspace(1, 2, 100))).astype(np.float32)
    centers, labels = kmeans_1d(x, 6, "density")
    assert centers.size == 6 and np.bincount(labels).min() > 0


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="k must be an integer >= 1; got 0"):
        kmeans_1d(np.ones(3), 0)
    with pytest.raises(ValueError, match=r"init must be one of \['linear'"):
        kmeans_1d(np.ones(3), 2, "gmm")
    with pytest.raises(ValueError, match="must be finite"):
        kmeans_1d(np.array([1.0, np.nan]), 2)
    centers, labels = kmeans_1d(np.zeros(0), 4)
    assert centers.size == 0 and labels.size == 0
