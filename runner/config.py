"""The cycle's settings: one validated, frozen record built from a plain dict.

Every knob of ``run_cycle`` is a field here; a value out of range raises :class:`ConfigError`
naming the field, the value and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dcsweep.compression import CODERS, INITS, MagnitudePrune

from .datasets import check_dataset_name
from .models import list_models

OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda", "mps")


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range."""


@dataclass(frozen=True)
class CycleConfig:
    """Defaults are tuned for LeNet-300-100 on digits: a full cycle in well under a minute on
    two CPU cores."""

    model: str = "lenet300"
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    image_size: int = 224  # imagefolder only
    # pruning: a target sparsity, or Han et al.'s quality (threshold = quality x std)
    sparsity: float | None = 0.9
    quality: float | None = None
    prune_steps: int = 3
    layers: dict[str, float] = dataclasses.field(default_factory=dict)  # per-layer sparsity/quality
    # weight sharing: k for every layer, or per type
    k: int = 32
    k_conv: int | None = None
    k_fc: int | None = None
    init: str = "linear"
    # encoding
    coder: str = "huffman"
    index_bits: int | None = None  # None: the width that codes smallest, per layer
    # training
    epochs: int = 20  # dense baseline
    prune_epochs: int = 10  # retraining after each pruning step
    share_epochs: int = 5  # centroid fine-tuning
    optimizer: str = "adam"
    lr: float = 1e-3
    prune_lr: float | None = None  # default: 2 x lr (each retraining restarts a cosine schedule)
    share_lr: float | None = None  # default: lr / 5
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    dense_path: str | None = None  # a trained dense model (.dcz or state-dict .pt) to start from

    def __post_init__(self) -> None:
        if self.model not in list_models():
            self._fail("model", self.model, f"one of {list_models()}")
        try:
            check_dataset_name(self.dataset)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if (self.sparsity is None) == (self.quality is None):
            self._fail("sparsity", self.sparsity, "set, or quality set, but not both")
        if self.sparsity is not None:
            self._number("sparsity", 0.0, 1.0, hi_open=True)
        if self.quality is not None:
            self._number("quality", 0.0, 100.0)
        if not isinstance(self.layers, dict):
            self._fail("layers", self.layers, "a mapping from layer name or pattern to a sparsity or quality")
        try:
            rule = {"sparsity": self.sparsity} if self.sparsity is not None else {"quality": self.quality}
            MagnitudePrune(**rule, layers=self.layers)
        except ValueError as exc:
            raise ConfigError(f"layers={self.layers!r} is not allowed: {exc}") from None
        for name in ("k", "k_conv", "k_fc"):
            if name == "k" or getattr(self, name) is not None:
                self._integer(name, 2, 1 << 16)
        if self.index_bits is not None:
            self._integer("index_bits", 1, 15)
        self._choice("init", INITS)
        self._choice("coder", CODERS)
        self._choice("optimizer", OPTIMIZERS)
        self._choice("device", DEVICES)
        for name, lo in (("epochs", 0), ("prune_epochs", 0), ("share_epochs", 0), ("prune_steps", 1),
                         ("batch_size", 1), ("image_size", 8)):
            self._integer(name, lo, 1 << 20)
        self._integer("seed", 0, 2**32 - 1)
        for name in ("lr", "prune_lr", "share_lr"):
            if name == "lr" or getattr(self, name) is not None:
                self._number(name, 0.0, 10.0, lo_open=True)
        self._number("momentum", 0.0, 1.0, hi_open=True)
        self._number("weight_decay", 0.0, 1.0)
        if self.dense_path is None and self.epochs == 0:
            self._fail("epochs", 0, ">= 1 unless dense_path gives a trained model")

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CycleConfig:
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; valid settings are {valid}")
        data = dict(data)
        if data.get("quality") is not None and "sparsity" not in data:
            data["sparsity"] = None  # asking for the quality rule replaces the default sparsity
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def prune_learning_rate(self) -> float:
        return self.prune_lr if self.prune_lr is not None else self.lr * 2

    @property
    def share_learning_rate(self) -> float:
        return self.share_lr if self.share_lr is not None else self.lr / 5

    # -- validation helpers --------------------------------------------------------------------
    def _fail(self, name: str, value: Any, allowed: str) -> None:
        raise ConfigError(f"{name}={value!r} is not allowed; {name} must be {allowed}")

    def _choice(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            self._fail(name, getattr(self, name), f"one of {list(choices)}")

    def _integer(self, name: str, lo: int, hi: int) -> None:
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self._fail(name, v, f"an integer in [{lo}, {hi}]")

    def _number(self, name: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
        v = getattr(self, name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            self._fail(name, v, f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
