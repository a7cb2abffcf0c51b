"""Figures of a cycle: per-layer weight histograms by phase (the seed's), bytes per layer."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import NullLocator

from dcsweep.compression import SizeReport

_TITLES = {"dense": "before pruning", "pruned": "after pruning", "shared": "after retraining",
           "final": "after sharing"}


def write_plots(folder: Path, snapshots: dict[str, dict[str, torch.Tensor]], report: SizeReport) -> list[Path]:
    """One histogram figure per layer (a panel per phase) and one stacked bar chart."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    phases = [p for p in ("dense", "pruned", "final") if p in snapshots]
    for name in snapshots.get("dense", next(iter(snapshots.values()), {})):
        fig, axes = plt.subplots(1, len(phases), figsize=(4 * len(phases), 3), squeeze=False,
                                 gridspec_kw={"left": 0.06, "right": 0.98, "bottom": 0.12, "top": 0.88})
        for ax, phase in zip(axes[0], phases, strict=True):
            values = snapshots[phase][name].float().numpy()
            # one filled step artist, not a Rectangle per bin: ax.hist costs ~0.3 s a panel,
            # which is most of a small trial's time
            counts, edges = np.histogram(values, bins=101 if phase != "final" else 256)
            ax.stairs(np.maximum(counts, 0.8), edges, fill=True, baseline=0.8, color="tab:blue")
            ax.set_title(f"{name or 'model'}: {_TITLES[phase]} ({values.size:,})", fontsize=9)
            ax.set_yscale("log")
            ax.yaxis.set_minor_locator(NullLocator())  # log minor ticks are most of the drawing time
        path = folder / f"weights_{name.replace('.', '_') or 'model'}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    written.append(_bytes_chart(folder / "bytes_per_layer.png", report))
    return written


def _bytes_chart(path: Path, report: SizeReport) -> Path:
    rows = report.layers
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows)), 4))
    bottom = [0] * len(rows)
    for part in ("codebook", "indices", "positions", "dense", "tables"):
        values = [getattr(r, part) for r in rows]
        ax.bar(range(len(rows)), values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(range(len(rows)), [r.name for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("bytes")
    ax.set_title(f"{report.total_bytes:,} B ({report.coder}), {report.ratio:.1f}x smaller than float32")
    ax.legend(fontsize=8)
    fig.subplots_adjust(bottom=0.3, top=0.9)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
