"""Weight sharing: per-layer 1-D k-means, then a trainable codebook per layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ._config import Config, Rules, layer_kind, match_rule, matches_any, require_matches
from .kmeans import INITS, kmeans_1d
from .layers import (
    SharedWeight,
    check_targets,
    compressible_layers,
    original,
    parametrization,
    strip_parametrization_,
    tensor,
)

#: Codebook sizes: cluster indices are coded over an alphabet of at most 2**16 symbols.
MIN_K, MAX_K = 2, 1 << 16


@dataclass(frozen=True)
class KMeansShare(Config):
    """How many shared values each layer gets, and how k-means is seeded.

    ``k`` is the default; ``k_conv`` and ``k_fc`` override it for conv and fully connected
    layers (the paper used 256 and 32: 8 and 5 bits); ``layers`` overrides per module name or
    glob pattern (exact name first, then the first matching pattern). ``k`` need not be a power
    of two. ``exclude`` lists modules left unshared. k-means runs over each layer's kept
    weights only (pruned positions stay zero and are not clustered).
    """

    k: int = 32
    k_conv: int | None = None
    k_fc: int | None = None
    layers: Mapping[str, int] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    init: str = "linear"
    max_iter: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        self._set("layers", Rules(self.layers))
        if isinstance(self.exclude, str):  # tuple("fc10") would exclude "f", "c", "1" and "0"
            self._fail("exclude", self.exclude, "a list or tuple of module names or patterns, not one string")
        self._set("exclude", tuple(self.exclude))
        for name, value in (("k", self.k), ("k_conv", self.k_conv), ("k_fc", self.k_fc),
                            *((f"layers[{p!r}]", v) for p, v in self.layers.items())):
            if value is None and name in ("k_conv", "k_fc"):
                continue
            self._integer(name, MIN_K, MAX_K, value)
        self._choice("init", INITS)
        self._integer("max_iter", 1)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            self._fail("seed", self.seed, "an integer")

    def check_layers(self, model: nn.Module) -> None:
        """Raise ValueError, listing the model's shareable layers, when a pattern of ``layers``
        or ``exclude`` selects none of them."""
        names = [name for name, _ in compressible_layers(model)]
        require_matches(type(self).__name__, "layers", self.layers, names)
        require_matches(type(self).__name__, "exclude", self.exclude, names)

    def k_for(self, name: str, module: nn.Module) -> int:
        by_kind = {"conv": self.k_conv, "fc": self.k_fc}.get(layer_kind(module) or "")
        return int(match_rule(name, self.layers, by_kind if by_kind is not None else self.k))


def share_weights_(model: nn.Module, config: KMeansShare) -> dict[str, int]:
    """Replace each selected layer's weight by ``codebook[indices]``, in place.

    Returns the number of clusters per tensor (``"fc1.weight": 32``); it is below the asked
    ``k`` only when a layer has fewer distinct kept weights than that. Afterwards only the
    codebooks of shared layers are trainable parameters of those layers; their gradient is the
    sum of their members' gradients.
    """
    config.check_layers(model)
    selected = [(name, module) for name, module in compressible_layers(model) if not matches_any(name, config.exclude)]
    check_targets(model, [(name, module, "weight") for name, module in selected], "share", untied=True)
    result = {}
    for name, module in selected:
        k = _share_layer_(module, config.k_for(name, module), config)
        if k:
            result[f"{name}.weight" if name else "weight"] = k
    return result


@torch.no_grad()
def _share_layer_(module: nn.Module, k: int, config: KMeansShare) -> int:
    weight = tensor(module, "weight").detach()
    p = parametrization(module, "weight")
    mask = p.mask if p is not None else torch.ones_like(weight, dtype=torch.bool)
    kept = weight[mask]
    if kept.numel() == 0:  # a fully pruned layer has nothing to share
        return 0
    centroids, labels = kmeans_1d(kept, k, config.init, max_iter=config.max_iter, seed=config.seed)
    k_eff = int(centroids.size)
    indices = torch.full(weight.shape, k_eff, dtype=torch.int32, device=weight.device)
    indices[mask] = torch.from_numpy(labels).to(weight.device)
    strip_parametrization_(module, "weight")
    parametrize.register_parametrization(module, "weight", SharedWeight(indices, k_eff), unsafe=True)
    codebook = original(module, "weight")  # the weight's Parameter object, resized in place by torch
    codebook.copy_(torch.from_numpy(centroids).to(codebook))
    codebook.grad = None  # the weight's gradient, of the weight's shape: an optimizer's state is too
    return k_eff
