"""How a pruned or weight-shared tensor lives inside a model: two parametrizations.

We build on :mod:`torch.nn.utils.parametrize` rather than :mod:`torch.nn.utils.prune`:

* ``prune`` keeps the weight as a plain attribute recomputed by a forward pre-hook, so between a
  optimizer step and the next forward ``module.weight`` is stale, and its masks can only multiply a
  dense tensor; it has no way to express weight sharing (a codebook plus an index per weight).
* A parametrization computes ``module.weight`` from its inputs on every access, so the pruned
  positions are zero *by construction* (``torch.where`` on a boolean mask buffer): no optimizer,
  momentum buffer, weight decay or Adam moment can make them nonzero, which masking gradients
  alone does not guarantee. The same mechanism carries weight sharing, whose trainable
  parameter is the codebook itself.

Masks and index buffers are registered buffers, so they travel in ``state_dict`` and follow
``.to(device)``. Structure is never inferred from float values.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import cast

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ._config import layer_kind


class Masked(nn.Module):
    """Parametrization of a pruned tensor: ``weight = where(mask, original, 0)``."""

    mask: torch.Tensor  # a registered buffer: in state_dict, follows .to(device)

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool).clone())

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        # where (not a multiply) gives +0.0 at pruned positions whatever the original holds,
        # even -x or NaN, so the decoded file is bit-identical to the live model.
        return torch.where(self.mask, original, original.new_zeros(()))

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return f"kept={kept}/{self.mask.numel()}"


class SharedWeight(nn.Module):
    """Parametrization of a weight-shared tensor: ``weight = codebook[indices]``.

    The parametrized "original" is the codebook (``k`` trainable centroids). ``indices`` is an
    int32 buffer of the weight's shape holding each weight's cluster; the value ``k`` marks a
    pruned position, which reads a constant zero appended to the codebook and so stays exactly
    zero and receives no gradient. Autograd through ``index_select`` sums the gradients of each
    cluster's members into its centroid in one ``index_add`` (the paper's eq. 3): no Python loop
    over clusters, and assignments never change during fine-tuning.
    """

    indices: torch.Tensor  # a registered buffer: in state_dict, follows .to(device)

    def __init__(self, indices: torch.Tensor, k: int) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"SharedWeight needs k >= 1 clusters; got {k}")
        self.k = int(k)
        self.register_buffer("indices", indices.to(torch.int32).contiguous())

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        table = torch.cat((codebook, codebook.new_zeros(1)))
        return table.index_select(0, self.indices.view(-1)).view(self.indices.shape)

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The codebook closest to ``weight`` for these assignments: each cluster's mean."""
        flat = self.indices.view(-1).long()
        sums = torch.zeros(self.k + 1, dtype=torch.float64, device=weight.device)
        counts = torch.zeros_like(sums)
        sums.index_add_(0, flat, weight.reshape(-1).to(torch.float64))
        counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
        return (sums[: self.k] / counts[: self.k].clamp_min(1)).to(weight.dtype)

    @property
    def mask(self) -> torch.Tensor:
        return self.indices != self.k

    def extra_repr(self) -> str:
        return f"k={self.k}, shape={tuple(self.indices.shape)}"


def check_targets(model: nn.Module, targets: Iterable[tuple[str, nn.Module, str]], verb: str,
                  untied: bool = False) -> None:
    """Before ``verb`` changes anything: each target tensor (module name, module, tensor name)
    carries no parametrization but the library's, is not an Embedding's sparse gradient, and
    with ``untied`` is the tensor of no other module (sharing resizes its tensor in place)."""
    owners: dict[int, list[str]] = {}
    if untied:
        for mname, m in model.named_modules():
            if ".parametrizations." in f".{mname}.":  # inside a parametrization: counted with its module
                continue
            plists = parametrizations(m).items() if parametrize.is_parametrized(m) else ()
            held = [*m._parameters.items(), *((t, plist._parameters.get("original")) for t, plist in plists)]
            for tname, t in held:
                if t is not None:
                    owners.setdefault(id(t), []).append(f"{mname}.{tname}" if mname else tname)
    for name, module, tname in targets:
        key = f"{name}.{tname}" if name else tname
        if getattr(module, "sparse", False) is True:  # Embedding(sparse=True): where() has no sparse kernel
            raise ValueError(f"cannot {verb} {key}: its module makes sparse gradients (sparse=True), which the "
                             f"library's parametrizations cannot take; use sparse=False")
        obj = getattr(module, tname)
        if parametrize.is_parametrized(module, tname):
            plist = parametrizations(module)[tname]
            foreign = [type(p).__name__ for p in cast(nn.ModuleList, plist)
                       if not isinstance(p, (Masked, SharedWeight))]
            if foreign:
                raise ValueError(f"cannot {verb} {key}: it carries a parametrization the library does not manage "
                                 f"({foreign[0]}); remove it first (parametrize.remove_parametrizations)")
            obj = plist._parameters.get("original")
        others = [o for o in owners.get(id(obj), []) if o != key]
        if others:
            raise ValueError(f"cannot {verb} {key}: it is the same tensor as {others[0]} (tied weights), and sharing "
                             f"resizes it to a codebook; untie them, or exclude every module that holds it")


def compressible_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every Linear, Conv, ConvTranspose and Embedding layer, in
    ``named_modules`` order."""
    for name, module in model.named_modules():
        if layer_kind(module) is not None:
            yield name, module


def parametrizations(module: nn.Module) -> nn.ModuleDict:
    """torch's ``module.parametrizations``: tensor name -> its ParametrizationList (typed here
    once; torch types a module's attributes as ``Tensor | Module``)."""
    return cast(nn.ModuleDict, module.parametrizations)


def original(module: nn.Module, tensor_name: str) -> torch.Tensor:
    """The parametrized input of ``module.<tensor_name>``: the dense weight under Masked, the
    codebook under SharedWeight."""
    return cast(torch.Tensor, parametrizations(module)[tensor_name].original)


def tensor(module: nn.Module, name: str) -> torch.Tensor:
    """``module.<name>`` (a weight, a parametrized weight, a buffer) as the tensor it is."""
    return cast(torch.Tensor, getattr(module, name))


def parametrization(module: nn.Module, tensor_name: str) -> Masked | SharedWeight | None:
    """The library's parametrization on ``module.<tensor_name>``, if any."""
    if not parametrize.is_parametrized(module, tensor_name):
        return None
    for p in cast(nn.ModuleList, parametrizations(module)[tensor_name]):
        if isinstance(p, (Masked, SharedWeight)):
            return p
    return None


def structural_mask(module: nn.Module, tensor_name: str = "weight") -> torch.Tensor | None:
    """Which positions are kept, from the mask or index buffer; ``None`` when not pruned."""
    p = parametrization(module, tensor_name)
    if p is None:
        return None
    return p.mask


def strip_parametrization_(module: nn.Module, tensor_name: str) -> None:
    """Bake the current value into a plain parameter, dropping our parametrization."""
    if parametrize.is_parametrized(module, tensor_name):
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)


def sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over all pruned or shared tensors (0.0 when none is)."""
    zeros = total = 0
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name in list(parametrizations(module).keys()):
            mask = structural_mask(module, tensor_name)
            if mask is not None:
                total += mask.numel()
                zeros += mask.numel() - int(mask.sum())
    return zeros / total if total else 0.0
