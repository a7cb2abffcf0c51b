"""``save_compressed`` / ``load_compressed``: a compressed model to and from a .dcz file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ._files import write_atomic
from .architectures import build_architecture, model_arch
from .fileformat import Decoded, decode_records, encode_model, model_tensors, parse, parse_file
from .layers import Masked, SharedWeight, original, strip_parametrization_, tensor
from .report import SizeReport


def save_compressed(
    model: nn.Module,
    path: str | Path,
    *,
    coder: str = "huffman",
    index_bits: int | Mapping[str, int] | None = None,
    arch: Mapping[str, Any] | None = None,
) -> SizeReport:
    """Write ``model`` to ``path`` as a .dcz file and return its size report.

    Shared layers store codebook, coded cluster indices and coded position gaps; pruned unshared
    layers store coded gaps and their kept values; everything else (biases, BatchNorm, buffers)
    is stored raw. ``coder`` is ``"huffman"`` (the paper's) or ``"ans"`` (entropy-optimal).
    ``index_bits`` is the width of the relative position gaps: one int, a mapping from tensor
    name or pattern to int, or None to pick the smallest per tensor. ``arch`` (``{"name",
    "kwargs"}``, default ``model.dcz_arch`` if set) lets ``load_compressed`` build the model.
    The file is written to a temporary name and renamed, so a failure leaves no partial file;
    it gets the permissions the umask gives any new file.
    """
    data = encode_model(model, coder, index_bits, model_arch(model, arch))
    write_atomic(path, data)
    return SizeReport.from_parsed(parse(data))


def read_compressed(path: str | Path) -> tuple[dict[str, Any], dict[str, Decoded]]:
    """The header and every decoded tensor of a .dcz file, without building a model."""
    parsed = parse_file(path)
    return parsed.header, {d.record.name: d for d in decode_records(parsed)}


def load_compressed(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Decode a .dcz file into ``model`` (or a model built from the file's architecture).

    Weights come back bit-exact. Shared and pruned tensors come back as shared and pruned
    layers (codebook and index buffer, or mask), so the model can be fine-tuned further and
    saving it again writes the same bytes. Raises :class:`CompressedFileError` for a file that
    is truncated, corrupted, not a .dcz file or from a newer format version, and ValueError when
    ``model`` does not have the file's tensors.
    """
    parsed = parse_file(path)
    decoded = {d.record.name: d for d in decode_records(parsed)}
    if model is None:
        model = build_architecture(parsed.header.get("arch"))
    targets = {name: (module, attr) for name, module, attr, _ in model_tensors(model)}
    missing, unexpected = sorted(set(targets) - set(decoded)), sorted(set(decoded) - set(targets))
    if missing or unexpected:
        raise ValueError(f"model does not match {path}: tensors missing from the file {missing[:5]}, "
                         f"tensors the model lacks {unexpected[:5]}")
    for name, d in decoded.items():
        _restore(model, name, *targets[name], d)
    return model


@torch.no_grad()
def _restore(model: nn.Module, name: str, module: nn.Module, attr: str, d: Decoded) -> None:
    current = tensor(module, attr)
    if tuple(current.shape) != d.record.shape or current.dtype != d.value.dtype:
        raise ValueError(f"{name}: the model has {current.dtype} {tuple(current.shape)}, the file "
                         f"{d.value.dtype} {d.record.shape}")
    device = current.device
    strip_parametrization_(module, attr)
    tensor(module, attr).copy_(d.value.to(device))
    if d.mask is not None and d.indices is None:  # sparse: the kept values, masked
        parametrize.register_parametrization(module, attr, Masked(d.mask.to(device)))
    elif d.indices is not None and d.codebook is not None:  # shared: indices into the codebook
        parametrize.register_parametrization(
            module, attr, SharedWeight(d.indices.to(device), d.record.k), unsafe=True)
        original(module, attr).copy_(d.codebook.to(device))
