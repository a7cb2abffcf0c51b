"""Where the bytes of a compressed model go: per-tensor parts that add up to the file size."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from .architectures import model_arch
from .fileformat import Parsed, Record, encode_model, encode_tensor, parse, parse_file, printable

#: What the library compresses, for the note on weights a file keeps dense.
DENSE_WEIGHTS_NOTE = "the weights of Linear, Conv, ConvTranspose and Embedding layers only"
_PART_GROUP = {  # file part -> report column
    "data": "dense", "values": "dense", "codebook": "codebook", "indices": "indices",
    "gaps": "positions", "index_table": "tables", "gap_table": "tables",
}


@dataclass(frozen=True)
class LayerSize:
    """One tensor of the file. ``index_bits`` is the width of its relative position gaps."""

    name: str
    kind: str
    shape: tuple[int, ...]
    nonzero: int
    k: int | None
    index_bits: int | None
    codebook: int
    indices: int
    positions: int
    dense: int
    tables: int

    @property
    def bytes(self) -> int:
        return self.codebook + self.indices + self.positions + self.dense + self.tables

    @classmethod
    def from_record(cls, rec: Record) -> LayerSize:
        cols = dict.fromkeys(("codebook", "indices", "positions", "dense", "tables"), 0)
        for part, size in rec.parts.items():
            cols[_PART_GROUP[part]] += size
        compressed = rec.kind != "dense"
        return cls(rec.name, rec.kind, rec.shape, rec.nonzero, rec.k or None,
                   rec.index_bits if compressed else None, **cols)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "nonzero": self.nonzero,
                "k": self.k, "index_bits": self.index_bits, "bytes": self.bytes,
                "parts": {c: getattr(self, c) for c in ("codebook", "indices", "positions", "dense", "tables")}}


@dataclass(frozen=True)
class SizeReport:
    """Sizes of a .dcz file: ``total_bytes`` equals the file's size on disk."""

    layers: tuple[LayerSize, ...]
    coder: str
    container_bytes: int  # magic, version, header and checksums
    dense_bytes: int  # float32 size of the model's parameters
    #: Weight matrices stored raw: layers the library does not prune or share (an LSTM's, a
    #: MultiheadAttention's in_proj_weight) or that were excluded. Said, not silently kept.
    dense_weights: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return self.container_bytes + sum(layer.bytes for layer in self.layers)

    @property
    def overhead_bytes(self) -> int:
        """What the file holds beyond weights, positions, codebooks and dense tensors."""
        return self.container_bytes + sum(layer.tables for layer in self.layers)

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.total_bytes

    @classmethod
    def from_parsed(cls, parsed: Parsed) -> SizeReport:
        dense = sum(4 * r.numel for r in parsed.records if r.is_param)
        raw_weights = tuple(r.name for r in parsed.records if r.kind == "dense" and r.is_param and len(r.shape) >= 2)
        return cls(tuple(LayerSize.from_record(r) for r in parsed.records), parsed.header["coder"],
                   parsed.container_bytes, dense, raw_weights)

    def to_dict(self) -> dict[str, Any]:
        return {"dense_bytes": self.dense_bytes, "compressed_bytes": self.total_bytes,
                "ratio": self.ratio, "coder": self.coder, "overhead_bytes": self.overhead_bytes,
                "dense_weights": list(self.dense_weights), "layers": [layer.to_dict() for layer in self.layers]}

    def format_table(self) -> str:
        head = f"{'tensor':<32} {'kind':<7} {'shape':<18} {'nonzero':>9} {'k':>5} {'idx':>3} " \
               f"{'codebook':>8} {'indices':>9} {'positions':>9} {'dense':>9} {'tables':>6} {'bytes':>9}"
        rows = [head, "-" * len(head)]
        for r in self.layers:
            shape = "x".join(map(str, r.shape)) or "scalar"
            name = printable(r.name, len(r.name))[-32:]
            rows.append(f"{name:<32} {r.kind:<7} {shape:<18} {r.nonzero:>9} {r.k or '':>5} "
                        f"{r.index_bits or '':>3} {r.codebook:>8} {r.indices:>9} {r.positions:>9} "
                        f"{r.dense:>9} {r.tables:>6} {r.bytes:>9}")
        if self.dense_weights:
            names = ", ".join(map(printable, self.dense_weights))
            rows.append(f"weights stored dense (not pruned or shared): {names}; the library compresses "
                        f"{DENSE_WEIGHTS_NOTE}")
        rows.append(f"container (header, checksums): {self.container_bytes} B; overhead in all: "
                    f"{self.overhead_bytes} B")
        rows.append(f"total {self.total_bytes} B ({self.coder}) from {self.dense_bytes} B dense float32: "
                    f"{self.ratio:.1f}x")
        return "\n".join(rows)


def size_report(
    model_or_path: nn.Module | str | Path,
    *,
    coder: str = "huffman",
    index_bits: int | Mapping[str, int] | None = None,
    arch: Mapping[str, Any] | None = None,
) -> SizeReport:
    """Per-tensor sizes of a .dcz file, or of the file ``save_compressed`` would write for a
    model with the same arguments (computed in memory, nothing written; its total equals that
    file's size). ``coder``/``index_bits``/``arch`` apply to models only."""
    if isinstance(model_or_path, nn.Module):
        data = encode_model(model_or_path, coder, index_bits, model_arch(model_or_path, arch))
        return SizeReport.from_parsed(parse(data))
    return SizeReport.from_parsed(parse_file(model_or_path))



def tensor_bytes(module: nn.Module, attr: str = "weight", *, name: str = "weight", coder: str = "huffman",
                 index_bits: int | Mapping[str, int] | None = None) -> int:
    """What one tensor of ``module`` (pruned, shared or dense, as it stands) takes in a .dcz file
    written with these arguments: its codebook, coded indices, coded position gaps and coder
    tables, without the container's per-tensor header entry. ``name`` is the tensor's name in
    the model, which ``index_bits`` rules match against."""
    record, _ = encode_tensor(name, module, attr, True, coder, index_bits)
    return sum(record.parts.values())
