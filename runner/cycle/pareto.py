"""The accuracy-versus-size Pareto front: which trials no other trial beats on both."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .results import Trial


def dominates(p: tuple[float, float], q: tuple[float, float]) -> bool:
    """(accuracy, size) ``p`` is at least as accurate and as small as ``q``, and better in one."""
    return p[0] >= q[0] and p[1] <= q[1] and (p[0] > q[0] or p[1] < q[1])


def pareto_mask(accuracy: Sequence[float], size: Sequence[float]) -> list[bool]:
    """True where no other point has accuracy >= and size <= with one of them strict."""
    points = list(zip(accuracy, size, strict=True))
    return [not any(dominates(other, p) for other in points) for p in points]


def hypervolume(points: Sequence[tuple[float, float]], reference_bytes: float) -> float:
    """The share of the (size, accuracy) rectangle [0, reference_bytes] x [0, 1] that the
    front of ``points`` (accuracy, bytes) dominates, with the reference point (accuracy 0,
    ``reference_bytes``, e.g. the dense model's size): 1.0 would be accuracy 1 at 0 bytes."""
    if reference_bytes <= 0:
        raise ValueError(f"reference_bytes must be > 0; got {reference_bytes}")
    inside = [(a, b) for a, b in points if a > 0 and b < reference_bytes]
    mask = pareto_mask([a for a, _ in inside], [b for _, b in inside])
    front = sorted({p for p, keep in zip(inside, mask, strict=True) if keep}, key=lambda p: p[1])
    area, below = 0.0, 0.0
    for accuracy, size in front:  # smallest first: each adds the band its accuracy rises by
        area += (reference_bytes - size) * (accuracy - below)
        below = accuracy
    return area / reference_bytes


def selection_point(trial: Trial) -> tuple[float, int] | None:
    """(validation accuracy, bytes): what the front is marked on. Never the test accuracy: a
    front chosen on the test part overstates itself. None for a trial without a validation
    accuracy (one from before the split), which is never on the front."""
    return None if trial.val_accuracy is None else (trial.val_accuracy, trial.compressed_bytes)


def mark_front(trials: Sequence[Trial]) -> list[Trial]:
    """The trials with ``pareto_optimal`` set on (validation accuracy, bytes), sorted by
    compressed size."""
    points = [(i, p) for i, p in enumerate(map(selection_point, trials)) if p is not None]
    optimal = pareto_mask([p[0] for _, p in points], [p[1] for _, p in points])
    front = {i for (i, _), keep in zip(points, optimal, strict=True) if keep}
    marked = [replace(t, pareto_optimal=i in front) for i, t in enumerate(trials)]
    return sorted(marked, key=lambda t: t.compressed_bytes)


def write_csv(path: Path, trials: Sequence[Trial], first: Sequence[str] = ()) -> Path:
    """One row per trial, smallest first: the ``first`` settings (the swept ones), the Pareto
    flag and the figures, then the run id and every other setting (what a preview shows first
    is what tells trials apart)."""
    first = [k for k in first if any(k in t.params for t in trials)]
    rest = sorted({k for t in trials for k in t.params} - set(first))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*first, "pareto_optimal", "val_accuracy", "accuracy", "compressed_bytes", "ratio", "run_id",
                         *rest])
        for t in sorted(trials, key=lambda t: t.compressed_bytes):
            writer.writerow([*(t.params.get(k, "") for k in first), str(t.pareto_optimal).lower(), t.val_accuracy,
                             t.accuracy, t.compressed_bytes, t.ratio, t.run_id, *(t.params.get(k, "") for k in rest)])
    return path


def write_png(path: Path, trials: Sequence[Trial], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    # the axis the front is marked on: validation accuracy
    shown = [(t, p) for t in trials if (p := selection_point(t)) is not None]
    others = [p for t, p in shown if not t.pareto_optimal]
    front = sorted((p for t, p in shown if t.pareto_optimal), key=lambda p: p[1])
    ax.scatter([p[1] for p in others], [p[0] for p in others], c="tab:gray", label="trials")
    ax.step([p[1] for p in front], [p[0] for p in front], where="post", c="tab:red")
    ax.scatter([p[1] for p in front], [p[0] for p in front], c="tab:red", label="Pareto front", zorder=3)
    for t, (accuracy, size) in shown:
        ax.annotate(label(t.params), (size, accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("compressed size (bytes, log scale)")
    ax.set_ylabel("validation top-1 accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def label(params: Mapping[str, Any]) -> str:
    """A short trial label from its swept settings: ``s=0.9 k=16``."""
    short = {"target_ratio": "r", "max_drop": "drop", "sparsity": "s", "quality": "q", "k": "k", "k_conv": "kc",
             "k_fc": "kf"}
    parts = [f"{short[k]}={params[k]}" for k in short if params.get(k) not in (None, "None", "")]
    return " ".join(parts)
