"""Figures of a cycle: per-layer weight histograms by phase (the seed's), bytes per layer.

Drawn with Pillow straight into pixels: a trial writes one figure per layer and one chart, and
with matplotlib they took about 0.5 s a trial, more than encoding and, once pruning is shared,
a large part of a short trial's time. These take a few milliseconds each and show the same:
counts on a log scale per phase, the value range, the bytes of each part per layer.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dcsweep.compression import SizeReport

_TITLES = {"dense": "before pruning", "pruned": "after pruning", "shared": "after retraining",
           "final": "after sharing"}
_BINS = {"dense": 101, "pruned": 101, "final": 256}
_PARTS = ("codebook", "indices", "positions", "dense", "tables")
# matplotlib's first five colours, as the Pareto chart uses
_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))
_INK, _GRID = (40, 40, 40), (215, 215, 215)
PANEL = (380, 250)  # pixels of one histogram panel
_LEFT, _BOTTOM, _TOP, _RIGHT = 52, 34, 24, 12


@lru_cache(maxsize=2)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: its fixed bitmap font
        return ImageFont.load_default()


def write_plots(folder: Path, snapshots: dict[str, dict[str, torch.Tensor]], report: SizeReport) -> list[Path]:
    """One histogram figure per layer (a panel per phase) and one bar chart of bytes by part."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    phases = [p for p in ("dense", "pruned", "final") if p in snapshots]
    for name in snapshots.get("dense", next(iter(snapshots.values()), {})):
        image = Image.new("RGB", (PANEL[0] * len(phases), PANEL[1]), "white")
        draw = ImageDraw.Draw(image)
        for i, phase in enumerate(phases):
            values = snapshots[phase][name].float().numpy()
            title = f"{name or 'model'}: {_TITLES[phase]} ({values.size:,})"
            _histogram(draw, (i * PANEL[0], 0), values, _BINS[phase], title)
        path = folder / f"weights_{name.replace('.', '_') or 'model'}.png"
        image.save(path, compress_level=1)
        written.append(path)
    written.append(_bytes_chart(folder / "bytes_per_layer.png", report))
    return written


def _histogram(draw: ImageDraw.ImageDraw, origin: tuple[int, int], values: np.ndarray, bins: int, title: str) -> None:
    x0, y0 = origin[0] + _LEFT, origin[1] + _TOP
    width, height = PANEL[0] - _LEFT - _RIGHT, PANEL[1] - _TOP - _BOTTOM
    draw.text((origin[0] + 6, origin[1] + 5), title, fill=_INK, font=_font(12))
    draw.rectangle((x0, y0, x0 + width, y0 + height), outline=_INK)
    if values.size == 0:
        return
    counts, edges = np.histogram(values, bins=bins)
    top = max(int(counts.max()), 1)
    decades = max(math.log10(top / 0.8), 1e-9)  # log scale from 0.8 (so a count of 1 shows)
    for power in range(int(math.log10(top)) + 1):  # a grid line and label per decade
        y = y0 + height - round(height * math.log10(10**power / 0.8) / decades)
        draw.line((x0 + 1, y, x0 + width - 1, y), fill=_GRID)
        draw.text((x0 - 4, y), f"1e{power}" if power > 2 else str(10**power), fill=_INK, font=_font(10),
                  anchor="rm")
    lo, hi = float(edges[0]), float(edges[-1])
    span = hi - lo or 1.0
    xs = x0 + np.round((edges - lo) / span * width).astype(int)
    heights = np.round(height * np.log10(np.maximum(counts, 0.8) / 0.8) / decades).astype(int)
    for left, right, h in zip(xs[:-1], xs[1:], heights, strict=True):
        if h > 0:
            draw.rectangle((int(left), y0 + height - int(h), max(int(right) - 1, int(left)), y0 + height - 1),
                           fill=_COLOURS[0])
    for value in (lo, 0.0, hi) if lo < 0 < hi else (lo, hi):
        x = x0 + round((value - lo) / span * width)
        draw.line((x, y0 + height, x, y0 + height + 4), fill=_INK)
        draw.text((x, y0 + height + 6), f"{value:.3g}", fill=_INK, font=_font(10), anchor="ma")


def _bytes_chart(path: Path, report: SizeReport) -> Path:
    """Bytes per tensor, a horizontal bar per tensor stacked by part, and the file's total."""
    rows = report.layers
    row, name_width, bar_width, top = 18, 230, 520, 58
    image = Image.new("RGB", (name_width + bar_width + 90, top + row * max(len(rows), 1) + 12), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), f"{report.total_bytes:,} B ({report.coder}), {report.ratio:.1f}x smaller than float32",
              fill=_INK, font=_font(13))
    x = 8
    for part, colour in zip(_PARTS, _COLOURS, strict=True):  # the legend
        draw.rectangle((x, 32, x + 12, 44), fill=colour)
        draw.text((x + 16, 38), part, fill=_INK, font=_font(11), anchor="lm")
        x += 26 + int(draw.textlength(part, font=_font(11)))
    totals = [sum(getattr(r, p) for p in _PARTS) for r in rows]
    scale = bar_width / max(max(totals, default=1), 1)
    for i, r in enumerate(rows):
        y = top + i * row
        draw.text((name_width - 6, y + row // 2), _fit(r.name, 36), fill=_INK, font=_font(11), anchor="rm")
        left = float(name_width)
        for part, colour in zip(_PARTS, _COLOURS, strict=True):
            size = getattr(r, part) * scale
            if size >= 0.5:  # a sliver still shows as one pixel
                x0 = round(left)
                draw.rectangle((x0, y + 2, max(round(left + size) - 1, x0), y + row - 3), fill=colour)
            left += size
        draw.text((round(left) + 4, y + row // 2), f"{totals[i]:,}", fill=_INK, font=_font(10), anchor="lm")
    image.save(path, compress_level=1)
    return path


def _fit(text: str, chars: int) -> str:
    return text if len(text) <= chars else "…" + text[-(chars - 1):]
