"""Per-layer sensitivity: what each layer alone costs in validation accuracy and saves in coded
bytes at each sparsity and codebook size, with no retraining (the paper's Figure 5 analysis,
priced in the bytes a .dcz file stores rather than in weights or MACs).

For every compressible layer, the layer alone is pruned to each sparsity and its kept weights
shared with each k, exactly as the cycle's phases do it (``prune_`` then ``share_weights_`` on a
copy of the layer); the rest of the model stays dense. Each variant is priced with
``tensor_bytes`` (the layer's codebook, coded indices, coded gaps and tables) and evaluated on the
validation split. The evaluations are batched: all variants of one layer run through the model
together with ``torch.func.vmap`` over that layer's weight, so the validation images are
normalised and moved once per batch, not once per variant.

The table is the allocator's input (:mod:`.allocation`); a sweep and ``dcsweep sensitivity``
keep it as a stage, keyed by the dense model's stage key and the table's settings.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.func import functional_call, vmap

from dcsweep.compression import KMeansShare, MagnitudePrune, prune_, share_weights_, size_report, tensor_bytes
from dcsweep.compression.layers import compressible_layers, strip_parametrization_, tensor

from .datasets import Folder, InMemory

#: The table's default grid: 9 sparsities x 4 codebook sizes (2 to 6 bits; the paper used 5
#: bits for fully connected and 8 for conv layers).
SPARSITIES = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
KS = (4, 16, 32, 64)
TABLE_FILE, CSV_FILE, PLOT_FILE = "sensitivity.json", "sensitivity.csv", "sensitivity.png"
#: Variants evaluated in one vmap call: bounds the activations held at once.
CHUNK = 12


@dataclass(frozen=True)
class Row:
    sparsity: float
    k: int
    val_accuracy: float
    bytes: int
    val_loss: float  # mean cross-entropy: smoother than accuracy on a small split


@dataclass(frozen=True)
class Table:
    """``layers``: (layer name, its rows). ``fixed_bytes``: what the file holds besides the
    compressible layers' weights (container, biases, normalisation, buffers), so that a model
    with one row chosen per layer takes ``fixed_bytes + sum(row.bytes)``."""

    layers: tuple[tuple[str, tuple[Row, ...]], ...]
    dense_val_accuracy: float
    dense_val_loss: float
    dense_bytes: int  # float32 size of every parameter: what ratios divide
    fixed_bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"layers": [{"name": name, "rows": [vars(r) for r in rows]} for name, rows in self.layers],
                "dense_val_accuracy": self.dense_val_accuracy, "dense_val_loss": self.dense_val_loss,
                "dense_bytes": self.dense_bytes,
                "fixed_bytes": self.fixed_bytes, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Table:
        layers = tuple((str(layer["name"]), tuple(Row(float(r["sparsity"]), int(r["k"]), float(r["val_accuracy"]),
                                                      int(r["bytes"]), float(r["val_loss"])) for r in layer["rows"]))
                       for layer in data["layers"])
        return cls(layers, float(data["dense_val_accuracy"]), float(data["dense_val_loss"]), int(data["dense_bytes"]),
                   int(data["fixed_bytes"]), float(data["seconds"]))

    def write(self, folder: Path) -> None:
        """sensitivity.json, sensitivity.csv and sensitivity.png in ``folder``."""
        (folder / TABLE_FILE).write_text(json.dumps(self.to_json(), indent=1))
        with (folder / CSV_FILE).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["layer", "sparsity", "k", "val_accuracy", "val_loss", "bytes"])
            for name, rows in self.layers:
                writer.writerows([name, r.sparsity, r.k, r.val_accuracy, r.val_loss, r.bytes] for r in rows)
        self.plot(folder / PLOT_FILE)

    def plot(self, path: Path) -> None:
        """Validation accuracy against sparsity, one curve per layer, one panel per k (as
        Distiller draws its sensitivity analyses)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ks = sorted({r.k for _, rows in self.layers for r in rows})
        fig, axes = plt.subplots(1, len(ks), figsize=(3.2 * len(ks), 3.4), sharey=True, squeeze=False)
        for ax, k in zip(axes[0], ks, strict=True):
            for name, rows in self.layers:
                mine = sorted((r.sparsity, r.val_accuracy) for r in rows if r.k == k)
                ax.plot([s for s, _ in mine], [a for _, a in mine], marker="o", markersize=3, label=name)
            ax.axhline(self.dense_val_accuracy, color="gray", linestyle=":", linewidth=1)
            ax.set_title(f"k = {k}", fontsize=9)
            ax.set_xlabel("sparsity of the layer alone")
        axes[0][0].set_ylabel("validation accuracy")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)


def measure(model: nn.Module, val: InMemory | Folder, device: torch.device, sparsities: Sequence[float] = SPARSITIES,
            ks: Sequence[int] = KS, *, coder: str = "huffman", index_bits: int | None = None,
            init: str = "linear", seed: int = 0, retrain: Callable[[nn.Module, int], None] | None = None) -> Table:
    """The table for a dense ``model`` (left unchanged) on the validation split ``val``.

    ``retrain``: None for the paper's analysis (no retraining). Given, each (layer, sparsity)
    prunes that layer in a copy of the whole model, hands the copy to ``retrain`` (with a number
    that seeds it) and measures each k on what came back: slower (layers x sparsities short
    trainings) but it prices what the cycle's retraining recovers, which the plain analysis
    overstates for large layers."""
    start = time.perf_counter()
    model = model.to(device).eval()
    (dense_val,), (dense_loss,) = _scores(model, "", [], val, device)
    layers: list[tuple[str, tuple[Row, ...]]] = []
    for name, module in compressible_layers(model):
        rows: list[Row] = []
        batches = [(model, module, sparsities)] if retrain is None else [
            _retrained(model, name, s, retrain, len(layers) * len(sparsities) + i) for i, s in enumerate(sparsities)]
        for base, layer, grid in batches:
            variants, sizes = [], []
            for sparsity, k in itertools.product(grid, ks):
                # a copy of the layer alone (a parametrized module cannot be deep-copied, so each
                # variant prunes its own): the cycle's own verbs, so the table prices what it does
                shared = copy.deepcopy(layer).cpu()
                prune_(shared, MagnitudePrune(sparsity=sparsity))
                share_weights_(shared, KMeansShare(k=k, init=init, seed=seed))
                variants.append(tensor(shared, "weight").detach())
                sizes.append((sparsity, k, tensor_bytes(shared, name=f"{name}.weight", coder=coder,
                                                        index_bits=index_bits)))
            accuracy, loss = _scores(base.eval(), f"{name}.weight", variants, val, device)
            rows += [Row(s, k, a, b, c) for (s, k, b), a, c in zip(sizes, accuracy, loss, strict=True)]
        layers.append((name, tuple(rows)))
    report = size_report(model, coder=coder, index_bits=index_bits)
    fixed = report.total_bytes - sum(layer.bytes for layer in report.layers if layer.name.endswith(".weight")
                                     and layer.name.removesuffix(".weight") in dict(layers))
    return Table(tuple(layers), dense_val, dense_loss, report.dense_bytes, fixed, time.perf_counter() - start)


def _retrained(model: nn.Module, name: str, sparsity: float, retrain: Callable[[nn.Module, int], None],
               number: int) -> tuple[nn.Module, nn.Module, Sequence[float]]:
    """A copy of ``model`` with layer ``name`` alone pruned to ``sparsity`` and retrained, that
    layer's weight baked back into a plain parameter (zeros where pruned, so pruning it again to
    the same sparsity finds the same mask)."""
    base = copy.deepcopy(model)
    layer = base.get_submodule(name)
    prune_(layer, MagnitudePrune(sparsity=sparsity))
    retrain(base, number)
    strip_parametrization_(layer, "weight")
    return base, layer, (sparsity,)


@torch.no_grad()
def _scores(model: nn.Module, parameter: str, weights: Sequence[torch.Tensor], data: InMemory | Folder,
            device: torch.device, batch_size: int = 256) -> tuple[list[float], list[float]]:
    """Validation accuracy and mean loss of ``model`` with its tensor ``parameter`` replaced by
    each of ``weights`` in turn (none: the model as it is), a chunk of variants at a time."""
    count = max(len(weights), 1)
    correct, loss, total = torch.zeros(count, dtype=torch.float64), torch.zeros(count, dtype=torch.float64), 0

    def scores(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {parameter: w}, (x,))

    for x, y in data.batches(batch_size, device, None):
        for start in range(0, count, CHUNK):
            if weights:
                stacked = torch.stack(list(weights[start:start + CHUNK])).to(device)
                logits = vmap(scores, in_dims=(None, 0))(x, stacked)
            else:
                logits = model(x)[None]
            end = start + len(logits)
            correct[start:end] += (logits.argmax(-1) == y).sum(1).double().cpu()
            flat = logits.reshape(-1, logits.shape[-1]).float()
            per = nn.functional.cross_entropy(flat, y.repeat(len(logits)), reduction="none").view(len(logits), -1)
            loss[start:end] += per.sum(1).double().cpu()
        total += len(y)
    return (correct / max(total, 1)).tolist(), (loss / max(total, 1)).tolist()
