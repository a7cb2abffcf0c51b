"""A cycle's phases as stages that trials share.

A trial is a path dense -> pruned -> shared -> encoded. Each trained phase is a *stage*, named
by a key that hashes everything the phase consumed: the parent stage's key, every setting the
phase reads (model, data, seed, epochs, learning rate, per-layer rules, ...), the dcsweep
version and a digest of the code that computes stages, so a stage from other code is never
reused silently. Two trials whose pruned keys are
equal prune the same model in the same way and get bit-identical weights (each phase seeds its
own random streams), so the second can take the first's result instead of computing it.

Where stages are kept, and how one is computed once while others wait, is the caller's (the
sweep storage, with a lease: ``dcsweep.runner.sweep.stages``); ``run_cycle`` only asks a
:class:`Stages` for each stage before computing it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from .config import CycleConfig
from .results import MODEL_FILE, PHASES

#: Bumped when what a stage holds, or how a phase computes it, changes within one release.
STAGE_FORMAT = 2  # 2: trained without the validation split, and its accuracy recorded
#: A stage's record beside its model: phase, key, accuracy, seconds and what it consumed.
STAGE_FILE = "stage.json"

_DATA = ("model", "dataset", "data_root", "image_size", "val_fraction", "seed", "device")
_TRAINING = ("optimizer", "momentum", "weight_decay", "batch_size")
#: The settings each phase reads (prune_lr/share_lr as the rate actually used).
CONSUMES: dict[str, tuple[str, ...]] = {
    "dense": (*_DATA, *_TRAINING, "epochs", "lr"),
    "pruned": (*_DATA, *_TRAINING, "sparsity", "quality", "prune_steps", "layers", "prune_epochs",
               "prune_learning_rate", "prune_schedule"),
    "shared": (*_DATA, *_TRAINING, "k", "k_conv", "k_fc", "k_layers", "init", "share_epochs",
               "share_learning_rate"),
}


def dcsweep_version() -> str:
    try:
        return version("dcsweep")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


@functools.cache
def code_digest() -> str:
    """The source of the code that computes stages (the compression library and the cycle),
    hashed. The installed package's version is not enough: it stays the same while a checkout
    changes, and `dcsweep submit` runs the submitted checkout on nodes whose installed dcsweep
    may be another. Any change to that source, a comment included, recomputes every stage."""
    import dcsweep.compression

    digest = hashlib.sha256()
    for root in (Path(dcsweep.compression.__file__).parent, Path(__file__).parent):
        for file in sorted(root.rglob("*.py")):
            digest.update(f"{root.name}/{file.relative_to(root).as_posix()}\0".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def consumed(cfg: CycleConfig, phase: str) -> dict[str, Any]:
    settings = {**cfg.to_dict(), "prune_learning_rate": cfg.prune_learning_rate,
                "share_learning_rate": cfg.share_learning_rate}
    return {name: settings[name] for name in CONSUMES[phase]}


def stage_keys(cfg: CycleConfig, dense_sha256: str | None = None) -> dict[str, str]:
    """The key of each phase's stage. A dense model given as a file (``dense_sha256``, its
    content's digest) is named by that content, not by the settings that trained it. On a
    ladder the pruned key is the top rung's (see :func:`ladder_keys`)."""
    keys: dict[str, str] = {}
    parent = ""
    for phase in PHASES:
        if phase == "dense" and dense_sha256 is not None:
            record: dict[str, Any] = {"phase": phase, "file_sha256": dense_sha256}
        elif phase == "pruned" and cfg.prune_schedule == "ladder":
            parent = keys[phase] = ladder_keys(cfg, parent)[-1][1]
            continue
        else:
            record = {"phase": phase, "parent": parent, "settings": consumed(cfg, phase)}
        parent = keys[phase] = _hash(record)
    return keys


def ladder_keys(cfg: CycleConfig, dense_key: str) -> list[tuple[float, str]]:
    """(sparsity, key) of each rung of a pruning ladder, lowest first: each rung's key holds
    the rung below's, so a rung is the same stage in every trial and sweep that climbs the same
    rungs to it (and the pruned stage of a trial whose sparsity it is)."""
    settings = {k: v for k, v in consumed(cfg, "pruned").items() if k != "prune_steps"}  # one step a rung
    rungs, parent = [], dense_key
    for number, sparsity in enumerate(cfg.rungs):
        parent = _hash({"phase": "pruned", "parent": parent, "rung": number,
                        "settings": {**settings, "sparsity": sparsity}})
        rungs.append((sparsity, parent))
    return rungs


def sensitivity_key(cfg: CycleConfig, dense_key: str, sparsities: Any, ks: Any) -> str:
    """The key of the sensitivity table of the dense stage ``dense_key``: its grid and what
    prices and shares its rows."""
    retraining: dict[str, Any] = {"retrain_epochs": cfg.table_retrain_epochs}
    if cfg.table_retrain_epochs:  # then what the retraining reads too
        retraining.update({k: v for k, v in consumed(cfg, "pruned").items() if k in _TRAINING})
        retraining["learning_rate"] = cfg.table_retrain_learning_rate
    return _hash({"phase": "sensitivity", "parent": dense_key, "settings": {
        "sparsities": [float(s) for s in sparsities], "ks": [int(k) for k in ks], "coder": cfg.coder,
        "index_bits": cfg.index_bits, "init": cfg.init, "seed": cfg.seed, "device": cfg.device, **retraining}})


def _hash(record: dict[str, Any]) -> str:
    record = {**record, "version": dcsweep_version(), "code": code_digest(), "format": STAGE_FORMAT}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class StageRecord:
    """What a stored stage says of itself (its ``stage.json``)."""

    phase: str
    key: str
    accuracy: float | None  # test (None for a stage that is not a model: the sensitivity table)
    val_accuracy: float
    seconds: float  # what computing it took: what each reuse saves
    files: tuple[str, ...] = (MODEL_FILE,)  # what the stage's folder holds besides this record

    def to_json(self) -> dict[str, Any]:
        return {"phase": self.phase, "key": self.key, "accuracy": self.accuracy, "val_accuracy": self.val_accuracy,
                "seconds": self.seconds, "files": list(self.files)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StageRecord:
        accuracy = data["accuracy"]
        return cls(str(data["phase"]), str(data["key"]), None if accuracy is None else float(accuracy),
                   float(data["val_accuracy"]), float(data["seconds"]), tuple(str(f) for f in data["files"]))


class Stages(Protocol):
    """Where a cycle finds stages computed before and leaves the ones it computes."""

    def claim(self, phase: str, key: str) -> contextlib.AbstractContextManager[Path | None]:
        """A folder holding the stage (its model file and ``stage.json``) once it exists,
        waiting while another process computes it; or None, and then this process holds the
        stage until the block ends and should compute it and ``publish`` it inside the block."""
        ...

    def publish(self, phase: str, key: str, folder: Path, record: StageRecord) -> None:
        """Keep the stage in ``folder`` (``record.files``) under ``key``, whole or not at all."""
        ...


class NoStages:
    """Every stage computed, none kept (``share_stages: false``, or a cycle on its own)."""

    @contextlib.contextmanager
    def claim(self, phase: str, key: str) -> Iterator[Path | None]:
        yield None

    def publish(self, phase: str, key: str, folder: Path, record: StageRecord) -> None:
        return None
