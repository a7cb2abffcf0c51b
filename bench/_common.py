"""Shared helpers for the bench/ scripts: timing and realistic data."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def best_time(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls (the least disturbed run) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def pruned_weights(n: int, seed: int = 0, keep: float = 0.1) -> np.ndarray:
    """``n`` float32 weights as a magnitude-pruned layer keeps them: a Laplace body whose
    small-magnitude centre (the pruned ``1 - keep`` fraction) is cut away."""
    rng = np.random.default_rng(seed)
    w = rng.laplace(0.0, 0.02, size=int(n / keep) + 16).astype(np.float32)
    threshold = np.quantile(np.abs(w[: min(w.size, 2_000_000)]), 1.0 - keep)
    return w[np.abs(w) > threshold][:n]


def sse(x: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> float:
    return float(np.square(x.astype(np.float64) - np.asarray(centers, dtype=np.float64)[labels]).sum())
