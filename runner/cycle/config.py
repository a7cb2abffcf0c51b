"""The cycle's settings: one validated, frozen record built from a plain dict.

Every knob of ``run_cycle`` is a field here; a value out of range raises :class:`ConfigError`
naming the field, the value and what is allowed, before any work starts. The validation
machinery and the limits (codebook sizes, index widths, the pruning rules) are the compression
library's own: a setting is checked once, by the code that uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch.nn as nn

from dcsweep.compression import (
    CODERS,
    INITS,
    MAX_INDEX_BITS,
    MAX_K,
    MIN_INDEX_BITS,
    MIN_K,
    KMeansShare,
    MagnitudePrune,
)
from dcsweep.compression._config import Config

from .datasets import check_dataset_name, nominal_shape
from .models import TORCHVISION_MODELS, list_models, meta_model

OPTIMIZERS = ("sgd", "adam")
PRUNE_SCHEDULES = ("independent", "ladder")
DEVICES = ("auto", "cpu", "cuda", "mps")


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range."""


@dataclass(frozen=True)
class CycleConfig(Config):
    """Defaults are tuned for LeNet-300-100 on digits: a full cycle in well under a minute on
    two CPU cores."""

    error: ClassVar[type[ValueError]] = ConfigError
    noun: ClassVar[str] = "setting"

    model: str = "lenet300"
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    image_size: int = 224  # imagefolder only
    val_fraction: float = 0.1  # of the training part, held out for validation (what selects)
    # pruning: a target sparsity, or Han et al.'s quality (threshold = quality x std)
    sparsity: float | None = 0.9
    quality: float | None = None
    prune_steps: int = 3
    layers: dict[str, float] = dataclasses.field(default_factory=dict)  # per-layer sparsity/quality
    # "ladder": reach ``sparsity`` through the lower sparsities in ``ladder``, one pruning step
    # and one retraining each, every rung pruned from the rung below (prune_steps is not used)
    prune_schedule: str = "independent"
    ladder: list[float] = dataclasses.field(default_factory=list)
    # weight sharing: k for every layer, or per type
    k: int = 32
    k_conv: int | None = None
    k_fc: int | None = None
    k_layers: dict[str, int] = dataclasses.field(default_factory=dict)  # per-layer k by name or pattern
    init: str = "linear"
    # encoding
    coder: str = "huffman"
    index_bits: int | None = None  # None: the width that codes smallest, per layer
    # training
    # the dense phase's training: from a random start (default 20), or fine-tuning the weights
    # that dense_path or pretrained give (default 0: those weights, evaluated)
    epochs: int | None = None
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
    dense_path: str | None = None  # a trained dense model (.dcz, or a state-dict .pt) to start from
    # start from torchvision's published weights for the model (see pretrained.py)
    pretrained: bool = False
    # per-layer allocation: each layer's sparsity and k chosen from the sensitivity table of the
    # dense model, for a size ratio or for the fewest bytes within a validation-accuracy drop
    target_ratio: float | None = None
    max_drop: float | None = None  # validation accuracy points (0.5 = half a point)
    # the sensitivity table's grid that an allocation chooses from (None: the table's defaults)
    table_sparsities: list[float] | None = None
    table_ks: list[int] | None = None
    # epochs of retraining after pruning each layer alone in the table (0: the paper's analysis,
    # no retraining; more prices what the cycle's retraining recovers, at layers x sparsities
    # short trainings)
    table_retrain_epochs: int = 0
    # that retraining's learning rate (default lr / 10): a short recovery of the dense model,
    # not a new training. At the cycle's retraining rate (2 x lr, a fresh schedule) one epoch
    # moved LeNet-5's validation accuracy by a point with nothing pruned, more than pruning
    # most layers to 90% did, and the table priced noise
    table_retrain_lr: float | None = None

    def __post_init__(self) -> None:
        if self.model not in list_models():
            self._fail("model", self.model, f"one of {list_models()}")
        self._check_start()
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
        self._integer("seed", 0, 2**32 - 1)  # before the library's configs, which take it
        try:
            _ = self.prune_config  # the library validates its own rules
        except ValueError as exc:
            raise ConfigError(f"layers={self.layers!r} is not allowed: {exc}") from None
        self._choice("prune_schedule", PRUNE_SCHEDULES)
        self._check_ladder()
        self._check_allocation()
        self._check_grid()
        for name in ("k", "k_conv", "k_fc"):
            if name == "k" or getattr(self, name) is not None:
                self._integer(name, MIN_K, MAX_K)
        if self.index_bits is not None:
            self._integer("index_bits", MIN_INDEX_BITS, MAX_INDEX_BITS)
        self._choice("init", INITS)
        self._choice("coder", CODERS)
        self._choice("optimizer", OPTIMIZERS)
        self._choice("device", DEVICES)
        if not isinstance(self.k_layers, dict):
            self._fail("k_layers", self.k_layers, "a mapping from layer name or pattern to a codebook size")
        try:
            _ = self.share_config  # the library validates its own rules and limits
        except ValueError as exc:
            raise ConfigError(f"k_layers={self.k_layers!r} is not allowed: {exc}") from None
        for name, lo in (("epochs", 0), ("prune_epochs", 0), ("share_epochs", 0), ("table_retrain_epochs", 0),
                         ("prune_steps", 1),
                         ("batch_size", 1), ("image_size", 8)):
            self._integer(name, lo, 1 << 20)
        for name in ("lr", "prune_lr", "share_lr", "table_retrain_lr"):
            if name == "lr" or getattr(self, name) is not None:
                self._number(name, 0.0, 10.0, lo_open=True)
        self._number("val_fraction", 0.0, 0.5, lo_open=True)
        self._number("momentum", 0.0, 1.0, hi_open=True)
        self._number("weight_decay", 0.0, 1.0)
        if self.epochs == 0 and not self.from_weights:
            self._fail("epochs", 0, ">= 1 unless dense_path or pretrained gives the weights")

    def _check_start(self) -> None:
        if not isinstance(self.pretrained, bool):
            self._fail("pretrained", self.pretrained, "true or false")
        if self.pretrained and self.model not in TORCHVISION_MODELS:
            self._fail("pretrained", True, f"false for model {self.model!r}: torchvision publishes weights for "
                       f"{list(TORCHVISION_MODELS)}")
        if self.pretrained and self.dense_path is not None:
            self._fail("pretrained", True, "false when dense_path gives the weights (one start)")
        if self.epochs is None:
            self._set("epochs", 0 if self.from_weights else 20)

    @property
    def from_weights(self) -> bool:
        """The dense phase starts from given weights (a file, or torchvision's)."""
        return self.dense_path is not None or self.pretrained is True

    def _check_ladder(self) -> None:
        rungs = self.ladder
        if not isinstance(rungs, list) or not all(
                isinstance(r, (int, float)) and not isinstance(r, bool) and 0.0 <= r < 1.0 for r in rungs):
            self._fail("ladder", rungs, "a list of sparsities in [0, 1)")
        if rungs and self.prune_schedule != "ladder":
            self._fail("ladder", rungs, "empty unless prune_schedule is 'ladder'")
        if self.prune_schedule == "ladder" and self.sparsity is None:
            self._fail("prune_schedule", self.prune_schedule, "'independent' with the quality rule (a ladder "
                       "climbs sparsities)")

    def _check_allocation(self) -> None:
        if self.target_ratio is None and self.max_drop is None:
            return
        if self.target_ratio is not None and self.max_drop is not None:
            self._fail("max_drop", self.max_drop, "unset when target_ratio is set (allocate for one target)")
        if self.target_ratio is not None:
            self._number("target_ratio", 1.0, 1e6, lo_open=True)
        else:
            self._number("max_drop", 0.0, 100.0)
        target = "target_ratio" if self.target_ratio is not None else "max_drop"
        for name, empty in (("layers", {}), ("k_layers", {}), ("prune_schedule", "independent")):
            if getattr(self, name) != empty:
                self._fail(name, getattr(self, name), f"{empty!r} with {target} (the allocation chooses "
                           f"each layer's sparsity and k)")
        if self.sparsity is None:
            self._fail("quality", self.quality, f"unset with {target} (the allocation chooses sparsities)")

    def _check_grid(self) -> None:
        sparsities, ks = self.table_sparsities, self.table_ks
        if sparsities is not None and not (isinstance(sparsities, list) and 0 < len(sparsities) <= 64 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < 1.0 for v in sparsities)):
            self._fail("table_sparsities", sparsities, "a list of 1 to 64 sparsities in [0, 1)")
        if ks is not None and not (isinstance(ks, list) and 0 < len(ks) <= 64 and all(
                isinstance(v, int) and not isinstance(v, bool) and MIN_K <= v <= MAX_K for v in ks)):
            self._fail("table_ks", ks, f"a list of 1 to 64 integers in [{MIN_K}, {MAX_K}]")

    @property
    def allocates(self) -> bool:
        return self.target_ratio is not None or self.max_drop is not None

    @property
    def rungs(self) -> list[float]:
        """The sparsities the pruned phase passes through, ending at ``sparsity``: the ladder's
        rungs below it, or just ``sparsity`` (independent pruning; its own steps inside)."""
        if self.prune_schedule != "ladder" or self.sparsity is None:
            return [self.sparsity] if self.sparsity is not None else []
        return sorted({float(r) for r in self.ladder if r < self.sparsity}) + [self.sparsity]

    def _describe(self, name: str, value: Any, allowed: str) -> str:
        return f"{name}={value!r} is not allowed; {name} must be {allowed}"

    @classmethod
    def _owner(cls) -> str:
        return ""

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CycleConfig:
        data = dict(data)
        if data.get("quality") is not None and "sparsity" not in data:
            data["sparsity"] = None  # asking for the quality rule replaces the default sparsity
        return super().from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- what the phases use -------------------------------------------------------------------
    @property
    def prune_config(self) -> MagnitudePrune:
        rule = {"sparsity": self.sparsity} if self.sparsity is not None else {"quality": self.quality}
        return MagnitudePrune(**rule, layers=self.layers)

    @property
    def share_config(self) -> KMeansShare:
        return KMeansShare(k=self.k, k_conv=self.k_conv, k_fc=self.k_fc, layers=self.k_layers, init=self.init,
                           seed=self.seed)

    @property
    def prune_learning_rate(self) -> float:
        return self.prune_lr if self.prune_lr is not None else self.lr * 2

    @property
    def table_retrain_learning_rate(self) -> float:
        return self.table_retrain_lr if self.table_retrain_lr is not None else self.lr / 10

    @property
    def share_learning_rate(self) -> float:
        return self.share_lr if self.share_lr is not None else self.lr / 5

    def check_layers(self, model: nn.Module) -> None:
        """Per-layer rules (``layers``, ``--layer NAME=VALUE``) that select no layer of
        ``model`` are refused, listing its layers: a typo is never silently ignored."""
        try:
            self.prune_config.check_layers(model)
        except ValueError as exc:
            raise ConfigError(f"layers={self.layers!r} is not allowed: {exc}") from None
        try:
            self.share_config.check_layers(model)
        except ValueError as exc:
            raise ConfigError(f"k_layers={self.k_layers!r} is not allowed: {exc}") from None


def check_settings(settings: Mapping[str, Any]) -> CycleConfig:
    """The settings as a config, checked as far as they can be before any data is read: every
    value, and the per-layer rules against the model's layers (built on the meta device for the
    shape the data set name implies). Raises ConfigError."""
    cfg = CycleConfig.from_dict(settings)
    if cfg.dense_path is not None and not Path(cfg.dense_path).expanduser().is_file():
        raise ConfigError(f"dense_path={cfg.dense_path!r} does not exist or is not a file; give a trained dense "
                          f"model (.dcz or state-dict .pt)")
    if cfg.layers or cfg.k_layers:
        shape, classes = nominal_shape(cfg.dataset, cfg.image_size)
        cfg.check_layers(meta_model(cfg.model, shape, classes))
    return cfg
