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


class Front:
    """The Pareto front of points added one at a time, by key. An add looks at the front only
    (tens of points however many trials a sweep has), where ``pareto_mask`` over every point
    so far would grow with each trial."""

    def __init__(self, points: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.points: dict[str, tuple[float, float]] = dict(points or {})

    def add(self, key: str, point: tuple[float, float]) -> tuple[bool, list[str]]:
        """Whether ``point`` is on the front now, and the keys it pushed off."""
        if any(dominates(other, point) for k, other in self.points.items() if k != key):
            return False, []
        off = [k for k, other in self.points.items() if k != key and dominates(point, other)]
        for k in off:
            del self.points[k]
        self.points[key] = point
        return True, off


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


def write_png(path: Path, trials: Sequence[Trial], title: str, dense_accuracy: float | None = None,
              dense_bytes: float | None = None) -> Path:
    """The front as the parent's pareto.png (see :func:`front_figure`)."""
    import matplotlib.pyplot as plt

    fig = front_figure(trials, title, dense_accuracy, dense_bytes)
    fig.savefig(path, dpi=fig.dpi)
    plt.close(fig)
    return path


#: Where a front point's label may go, tried in order (points from the point; left-aligned
#: labels go right of it, right-aligned ones left): the first place that overlaps no label
#: already placed and stays inside the axes wins; a point with none goes unlabelled.
LABEL_PLACES = ((4, 3, "left"), (4, -10, "left"), (-4, 3, "right"), (-4, -10, "right"), (4, 11, "left"),
                (-4, 11, "right"), (4, -18, "left"), (-4, -18, "right"))


def front_figure(trials: Sequence[Trial], title: str, dense_accuracy: float | None = None,
                 dense_bytes: float | None = None) -> Any:
    """Validation accuracy (what the front is marked on) against bytes on a log axis: every
    trial in grey, the front in red with its settings as labels that never overlap, the dense
    model's accuracy as a line in a band of +-1 point, and the compression ratio on the top axis
    when the dense model's bytes are known. Readable at any number of trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    shown = [(t, p) for t in trials if (p := selection_point(t)) is not None]
    others = [p for t, p in shown if not t.pareto_optimal]
    front = sorted(((t, p) for t, p in shown if t.pareto_optimal), key=lambda tp: tp[1][1])
    ax.scatter([p[1] for p in others], [p[0] for p in others], s=8, c="tab:gray", alpha=0.5, linewidths=0,
               label=f"trials ({len(shown)})")
    ax.step([p[1] for _, p in front], [p[0] for _, p in front], where="post", c="tab:red", lw=1)
    ax.scatter([p[1] for _, p in front], [p[0] for _, p in front], s=18, c="tab:red", zorder=3,
               label=f"Pareto front ({len(front)})")
    if dense_accuracy is not None:
        ax.axhline(dense_accuracy, c="tab:blue", lw=1, label=f"dense {dense_accuracy:.4f}")
        ax.axhspan(dense_accuracy - 0.01, dense_accuracy + 0.01, color="tab:blue", alpha=0.1, label="dense +-1 pt")
    ax.set_xscale("log")
    ax.set_xlabel("compressed size (bytes, log scale)")
    ax.set_ylabel("validation top-1 accuracy")
    if dense_bytes:
        def ratio(x: Any) -> Any:  # bytes <-> ratio, its own inverse; never 0 (matplotlib probes the ends)
            import numpy as np

            return dense_bytes / np.maximum(x, 1e-12)

        top = ax.secondary_xaxis("top", functions=(ratio, ratio))
        top.set_xlabel("compression ratio (x)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()  # before the labels: placing them needs the final layout
    _label_front(fig, ax, front)
    return fig


def _label_front(fig: Any, ax: Any, front: Sequence[tuple[Trial, tuple[float, int]]]) -> None:
    renderer = fig.canvas.get_renderer()
    area = ax.get_window_extent(renderer)
    taken = [ax.get_legend().get_window_extent(renderer)]
    for t, (accuracy, size) in front:
        for dx, dy, align in LABEL_PLACES:
            text = ax.annotate(label(t.params), (size, accuracy), xytext=(dx, dy), textcoords="offset points",
                               fontsize=7, ha=align, va="bottom")
            box = text.get_window_extent(renderer)
            inside = area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1
            if inside and not any(box.overlaps(other) for other in taken):
                taken.append(box)
                break
            text.remove()


def label(params: Mapping[str, Any]) -> str:
    """A short trial label from its swept settings: ``s=0.9 k=16``."""
    short = {"target_ratio": "r", "max_drop": "drop", "sparsity": "s", "quality": "q", "k": "k", "k_conv": "kc",
             "k_fc": "kf"}
    parts = [f"{short[k]}={params[k]}" for k in short if params.get(k) not in (None, "None", "")]
    return " ".join(parts)
