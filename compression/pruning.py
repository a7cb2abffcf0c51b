"""Magnitude pruning (Han et al. 2015) with masks that keep pruned weights exactly zero."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ._config import NORM_TYPES, Config, Rules, layer_kind, match_rule, matches_any, require_matches
from .layers import Masked, SharedWeight, check_targets, original, parametrization, tensor

SCOPES = ("layer", "global")


@dataclass(frozen=True)
class MagnitudePrune(Config):
    """What to prune and how far.

    Exactly one rule:

    * ``sparsity`` — the fraction of each layer's weights that ends up zero (``scope="layer"``),
      or of all selected weights together with one global magnitude threshold
      (``scope="global"``).
    * ``quality`` — Han et al. 2015's rule: prune weights whose magnitude is below
      ``quality × std`` of the layer's *remaining* weights (pruned zeros excluded).

    ``layers`` overrides the value (a sparsity or a quality, following the rule) per module
    name or glob pattern, e.g. ``{"fc3": 0.75, "features.*": 0.6}``; an exact name wins over a
    pattern, and the first matching pattern wins over later ones. ``exclude`` lists modules never
    pruned. Biases and normalisation layers are left alone unless ``include_bias`` /
    ``include_norm`` ask for them. Masks only grow: a weight pruned once stays pruned.
    """

    sparsity: float | None = None
    quality: float | None = None
    scope: str = "layer"
    layers: Mapping[str, float] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    include_bias: bool = False
    include_norm: bool = False

    def __post_init__(self) -> None:
        self._set("layers", Rules(self.layers))
        if isinstance(self.exclude, str):  # tuple("fc10") would exclude "f", "c", "1" and "0"
            self._fail("exclude", self.exclude, "a list or tuple of module names or patterns, not one string")
        self._set("exclude", tuple(self.exclude))
        if (self.sparsity is None) == (self.quality is None):
            self._fail("sparsity", self.sparsity, "set, or quality set, but not both")
        if self.scope not in SCOPES:
            self._fail("scope", self.scope, f"one of {list(SCOPES)}")
        if self.scope == "global" and self.sparsity is None:
            self._fail("scope", self.scope, "'layer' when pruning by quality")
        rule = self.rule
        for name, value in ((rule, self.target), *((f"layers[{p!r}]", v) for p, v in self.layers.items())):
            _check_target(type(self).__name__, name, rule, value)

    @property
    def rule(self) -> str:
        return "sparsity" if self.sparsity is not None else "quality"

    @property
    def target(self) -> float:
        value = self.sparsity if self.sparsity is not None else self.quality
        if value is None:  # excluded by __post_init__
            raise ValueError("MagnitudePrune has neither sparsity nor quality")
        return value

    def check_layers(self, model: nn.Module) -> None:
        """Raise ValueError, listing the model's prunable modules, when a pattern of ``layers``
        or ``exclude`` selects none of them: a typo would otherwise be silently ignored."""
        names = [name for name, module in model.named_modules() if self._selects(module)]
        require_matches(type(self).__name__, "layers", self.layers, names)
        require_matches(type(self).__name__, "exclude", self.exclude, names)

    def _selects(self, module: nn.Module) -> bool:
        return layer_kind(module) is not None or (self.include_norm and isinstance(module, NORM_TYPES))

    def scaled(self, fraction: float) -> MagnitudePrune:
        """The same config with every target multiplied by ``fraction`` (for schedules)."""
        layers = {p: v * fraction for p, v in self.layers.items()}
        if self.sparsity is not None:
            return dataclasses.replace(self, sparsity=self.sparsity * fraction, layers=layers)
        return dataclasses.replace(self, quality=self.target * fraction, layers=layers)


def _check_target(cls: str, name: str, rule: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{cls}.{name} must be a finite number; got {value!r}")
    if rule == "sparsity" and not 0.0 <= value < 1.0:
        raise ValueError(f"{cls}.{name} must be a sparsity in [0, 1); got {value!r}")
    if rule == "quality" and value < 0.0:
        raise ValueError(f"{cls}.{name} must be a quality >= 0; got {value!r}")


def prunable_tensors(model: nn.Module, config: MagnitudePrune) -> list[tuple[str, nn.Module, str]]:
    """(module name, module, tensor name) of every tensor ``config`` selects, in model order."""
    out = []
    for name, module in model.named_modules():
        if not config._selects(module) or matches_any(name, config.exclude):
            continue
        for tensor_name in ("weight", "bias"):
            if tensor_name == "bias" and not config.include_bias:
                continue
            if getattr(module, tensor_name, None) is not None:
                out.append((name, module, tensor_name))
    return out


def _magnitudes(module: nn.Module, tensor_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """|w| with already-pruned positions at -1 (so they are always pruned first), and the mask."""
    with torch.no_grad():
        weight = tensor(module, tensor_name).detach()
        p = parametrization(module, tensor_name)
        mask = p.mask if p is not None else torch.ones_like(weight, dtype=torch.bool)
        mag = torch.where(mask, weight.abs().float(), torch.full_like(weight, -1.0, dtype=torch.float))
    return mag, mask


def _smallest(mag: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the ``count`` smallest entries; ties go to the earlier position."""
    pruned = torch.zeros(mag.numel(), dtype=torch.bool, device=mag.device)
    if count > 0:
        order = torch.argsort(mag.reshape(-1), stable=True)
        pruned[order[:count]] = True
    return pruned.view(mag.shape)


def _apply_mask(module: nn.Module, tensor_name: str, keep: torch.Tensor) -> None:
    p = parametrization(module, tensor_name)
    if isinstance(p, SharedWeight):
        raise ValueError(
            f"cannot prune {type(module).__name__}.{tensor_name}: it is already weight-shared; "
            "prune before share_weights_"
        )
    if p is None:
        parametrize.register_parametrization(module, tensor_name, Masked(keep))
    else:
        p.mask.copy_(keep)
    with torch.no_grad():  # zero the hidden values too, so nothing stale survives a later strip
        orig = original(module, tensor_name)
        orig.masked_fill_(~keep, 0)


def prune_(model: nn.Module, config: MagnitudePrune) -> dict[str, float]:
    """Prune ``model`` in place; returns the sparsity reached per tensor (``"fc1.weight"``).
    A pattern in ``config.layers`` or ``config.exclude`` that selects no module is an error."""
    config.check_layers(model)
    selected = prunable_tensors(model, config)
    check_targets(model, selected, "prune")
    targets = [match_rule(name, config.layers, config.target) for name, _, _ in selected]
    global_pool = [
        i for i, (name, _, _) in enumerate(selected)
        if config.scope == "global" and match_rule(name, config.layers, None) is None
    ]
    keeps: dict[int, torch.Tensor] = {}
    if global_pool:
        keeps.update(_global_keep([selected[i] for i in global_pool], config.target, global_pool))
    for i, (_, module, tensor_name) in enumerate(selected):
        if i in keeps:
            continue
        mag, mask = _magnitudes(module, tensor_name)
        if config.rule == "sparsity":
            count = max(round(targets[i] * mag.numel()), int((~mask).sum()))
            keeps[i] = ~_smallest(mag, count)
        else:
            # std of the signed weights that remain: the seed took it over zeros too, which
            # shrinks the threshold every round
            remaining = tensor(module, tensor_name).detach()[mask].float()
            if not bool(torch.isfinite(remaining).all()):  # their std is NaN: nothing would pass it
                raise ValueError(f"cannot prune {selected[i][0]}.{tensor_name} by quality: it holds NaN or "
                                 f"infinite weights")
            std = remaining.std(correction=0) if remaining.numel() > 1 else mag.new_zeros(())
            keeps[i] = mask & (mag > targets[i] * std)
    result = {}
    for i, (name, module, tensor_name) in enumerate(selected):
        _apply_mask(module, tensor_name, keeps[i])
        key = f"{name}.{tensor_name}" if name else tensor_name
        # a zero-element tensor (nn.Linear(0, n)) has nothing to prune: sparsity 0
        result[key] = 1.0 - float(keeps[i].sum()) / keeps[i].numel() if keeps[i].numel() else 0.0
    return result


def _global_keep(
    tensors: list[tuple[str, nn.Module, str]], sparsity: float, ids: list[int]
) -> dict[int, torch.Tensor]:
    """One magnitude threshold over all tensors: the ``sparsity`` fraction of all weights."""
    mags, masks = zip(*(_magnitudes(m, t) for _, m, t in tensors), strict=True)
    flat = torch.cat([m.reshape(-1) for m in mags])
    already = sum(int((~mask).sum()) for mask in masks)
    pruned = _smallest(flat, max(round(sparsity * flat.numel()), already))
    out, start = {}, 0
    for i, mag in zip(ids, mags, strict=True):
        out[i] = ~pruned[start : start + mag.numel()].view(mag.shape)
        start += mag.numel()
    return out


def prune_schedule(config: MagnitudePrune, steps: int) -> list[MagnitudePrune]:
    """Configs for ``steps`` prune→retrain rounds ending exactly at ``config``.

    Sparsity targets follow Zhu & Gupta's cubic ramp (big cuts early, when the network has the
    most redundancy, small ones late); quality targets ramp linearly.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"prune_schedule steps must be an integer >= 1; got {steps!r}")
    fractions = [
        1.0 - (1.0 - t / steps) ** 3 if config.rule == "sparsity" else t / steps
        for t in range(1, steps + 1)
    ]
    return [config.scaled(f) if f < 1.0 else config for f in fractions]


def iterative_prune_(
    model: nn.Module,
    config: MagnitudePrune,
    steps: int,
    retrain: Callable[[nn.Module, int], Any] | None = None,
) -> list[dict[str, float]]:
    """Prune toward ``config`` in ``steps`` rounds, calling ``retrain(model, step)`` after each."""
    history = []
    for step, step_config in enumerate(prune_schedule(config, steps)):
        history.append(prune_(model, step_config))
        if retrain is not None:
            retrain(model, step)
    return history
