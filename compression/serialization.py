"""``save_compressed`` / ``load_compressed``: a compressed model to and from a .dcz file."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ._files import write_atomic
from .architectures import build_architecture, lookup_architecture, model_arch
from .errors import CompressedFileError
from .fileformat import (
    DTYPES,
    Decoded,
    Parsed,
    decode_records,
    encode_model,
    model_tensors,
    parse,
    parse_file,
    printable,
)
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


def read_header(path: str | Path) -> dict[str, Any]:
    """The checked JSON header of a .dcz file (coder, architecture, one record per tensor),
    without decoding any tensor."""
    return parse_file(path).header


def read_compressed(path: str | Path, *, max_elements: int | None = None) -> tuple[dict[str, Any], dict[str, Decoded]]:
    """The header and every decoded tensor of a .dcz file, without building a model. The
    tensors may total at most ``max_elements`` elements (default: 1024 per byte of file)."""
    parsed = parse_file(path)
    return parsed.header, {d.record.name: d for d in _named(path, decode_records(parsed, max_elements))}


def load_compressed(path: str | Path, model: nn.Module | None = None, *,
                    max_elements: int | None = None) -> nn.Module:
    """Decode a .dcz file into ``model`` (or a model built from the file's architecture).

    Weights come back bit-exact. Shared and pruned tensors come back as shared and pruned
    layers (codebook and index buffer, or mask), so the model can be fine-tuned further and
    saving it again writes the same bytes.

    The file is untrusted input. Without ``model``, its architecture must be registered (see
    ``register_architecture``) and its keyword arguments allowed there; the model is first built
    on the meta device, and the file's tensors must match it in name, shape and dtype and total
    at most ``max_elements`` elements (default: 1024 per byte of file) before any memory is
    given to it. With ``model``, the file must match that model. Any file that cannot be
    loaded, for whatever reason, raises :class:`CompressedFileError` (a ValueError).
    """
    parsed = parse_file(path)
    limit = max_elements
    if model is None:
        shape_of = _architecture_of(path, parsed)
    else:
        shape_of = model
        limit = sum(tensor(m, a).numel() for _, m, a, _ in model_tensors(model)) if limit is None else limit
    _check_matches(path, parsed, shape_of)
    decoded = {d.record.name: d for d in _named(path, decode_records(parsed, limit))}
    if model is None:  # the meta model showed the file fits; now give it memory
        model = _materialise(path, parsed, shape_of)
        vars(model)["dcz_arch"] = parsed.header["arch"]  # so saving it again writes the same bytes
    targets = {name: (module, attr) for name, module, attr, _ in model_tensors(model)}
    for name, d in decoded.items():
        _restore(model, name, *targets[name], d)
    return model


def _named(path: str | Path, items: Iterator[Decoded]) -> Iterator[Decoded]:
    try:
        yield from items
    except CompressedFileError as exc:
        raise CompressedFileError(f"{path}: {exc}") from None


def _architecture_of(path: str | Path, parsed: Parsed) -> nn.Module:
    """The file's architecture built on the meta device: its tensors' names, shapes and dtypes
    at no memory cost."""
    arch = parsed.header.get("arch")
    try:
        builder, kwargs = lookup_architecture(arch)
    except ValueError as exc:
        raise CompressedFileError(f"{path}: {exc}") from None
    try:
        with torch.device("meta"):
            return builder(**kwargs)
    except Exception as exc:  # noqa: BLE001 -- a builder given hostile numbers may fail in any way
        raise CompressedFileError(f"{path}: architecture {(arch or {}).get('name')!r} cannot be built with the file's "
                                  f"kwargs {str(kwargs)[:200]}: {type(exc).__name__}: {str(exc)[:200]}") from None


def _materialise(path: str | Path, parsed: Parsed, meta: nn.Module) -> nn.Module:
    """The meta model given memory for exactly its tensors, which the file then fills: the
    builder is not run again for real, so whatever it would allocate beside its tensors (a
    probe input sized by the file's kwargs, say) is never allocated. A model with
    non-persistent buffers, which the file does not hold, is built for real instead."""
    if not any(m._non_persistent_buffers_set for m in meta.modules()):
        return meta.to_empty(device="cpu")
    try:
        return build_architecture(parsed.header["arch"])
    except Exception as exc:  # noqa: BLE001 -- as for the meta build: hostile numbers fail in any way
        raise CompressedFileError(f"{path}: architecture cannot be built: {type(exc).__name__}: "
                                  f"{str(exc)[:200]}") from None


def _check_matches(path: str | Path, parsed: Parsed, model: nn.Module) -> None:
    """The file holds exactly the model's tensors, each with the model's shape and dtype."""
    targets = {name: tensor(m, a) for name, m, a, _ in model_tensors(model)}
    records = {r.name: r for r in parsed.records}
    missing, unexpected = sorted(set(targets) - set(records)), sorted(set(records) - set(targets))
    if missing or unexpected:
        raise CompressedFileError(
            f"model does not match {path}: tensors missing from the file {missing[:5]}, tensors the model "
            f"lacks {[printable(n) for n in unexpected[:5]]}")
    for name, r in records.items():
        t = targets[name]
        if tuple(t.shape) != r.shape or t.dtype != DTYPES[r.dtype]:
            raise CompressedFileError(f"model does not match {path}: {name} is {t.dtype} {tuple(t.shape)} in "
                                      f"the model, {r.dtype} {r.shape} in the file")


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
