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

import ast
import contextlib
import functools
import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from .config import CycleConfig
from .results import MODEL_FILE, PHASES

#: Bumped when what a stage holds, or how a phase computes it, changes within one release.
#: 3: records hold each file's sha256 and the inputs that make the key; data is keyed by its
#: content, code by its syntax tree.
STAGE_FORMAT = 3
#: A stage's record beside its model: phase, key, accuracy, seconds and what it consumed.
STAGE_FILE = "stage.json"
PHASES_KEPT = ("dense", "pruned", "shared", "sensitivity")

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
    """What the code that computes stages (the compression library and the cycle) does, hashed:
    each module's syntax tree without its docstrings, so a comment, a docstring or a reformat
    keeps every stage, and any change to an expression recomputes them. The installed package's
    version is not enough: it stays the same while a checkout changes, and `dcsweep submit`
    runs the submitted checkout on nodes whose installed dcsweep may be another. (The tree's
    printed form can differ between Python minor versions, as a Ray cluster's nodes cannot.)"""
    import dcsweep.compression

    digest = hashlib.sha256()
    for root in (Path(dcsweep.compression.__file__).parent, Path(__file__).parent):
        for file in sorted(root.rglob("*.py")):
            digest.update(f"{root.name}/{file.relative_to(root).as_posix()}\0".encode())
            digest.update(syntax_digest(file.read_bytes()).encode())
    return digest.hexdigest()[:16]


def syntax_digest(source: bytes) -> str:
    """sha256 of a module's syntax tree with every docstring removed (comments never reach it)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


def consumed(cfg: CycleConfig, phase: str, data: str | None = None) -> dict[str, Any]:
    """The settings ``phase`` reads. With ``data`` (the data set's fingerprint, see
    ``dcsweep.runner.cycle.fingerprint``) the data set is named by its content, not by where
    it lies: the same files from another folder or node share stages, other files never do."""
    settings = {**cfg.to_dict(), "prune_learning_rate": cfg.prune_learning_rate,
                "share_learning_rate": cfg.share_learning_rate}
    picked = {name: settings[name] for name in CONSUMES[phase]}
    if data is not None:
        del picked["data_root"]
        picked["dataset"] = "imagefolder" if cfg.dataset.startswith("imagefolder:") else cfg.dataset
        picked["data"] = data
    return picked


def stage_inputs(cfg: CycleConfig, dense_sha256: str | None = None, data: str | None = None
                 ) -> dict[str, dict[str, Any]]:
    """What makes each phase's stage key (:func:`key_of` of it): the phase, its parent's key and
    the settings it consumed. A dense model given as a file (``dense_sha256``, its content's
    digest) is named by that content, not by the settings that trained it; weights it fine-tunes
    or torchvision's (``pretrained``), by that content and the settings it reads. On a ladder the
    pruned stage is the top rung (see :func:`ladder_inputs`)."""
    inputs: dict[str, dict[str, Any]] = {}
    parent = ""
    for phase in PHASES:
        if phase == "dense" and dense_sha256 is not None and cfg.epochs == 0 and not cfg.pretrained:
            record: dict[str, Any] = {"phase": phase, "file_sha256": dense_sha256}
        elif phase == "dense" and dense_sha256 is not None:
            record = {"phase": phase, "start_sha256": dense_sha256, "settings": _start_settings(cfg, data)}
        elif phase == "pruned" and cfg.prune_schedule == "ladder":
            record = ladder_inputs(cfg, parent, data)[-1][1]
        else:
            record = {"phase": phase, "parent": parent, "settings": consumed(cfg, phase, data)}
        inputs[phase] = _versioned(record)
        parent = key_of(inputs[phase])
    return inputs


def _start_settings(cfg: CycleConfig, data: str | None) -> dict[str, Any]:
    """What a dense phase that starts from given weights reads besides them: the data and the
    seed (the layers the weights cannot give are initialised from it), and the training's
    settings only when it trains (``epochs: 0`` evaluates the weights as they are, so sweeps
    that differ only in learning rate share the stage)."""
    settings = consumed(cfg, "dense", data)
    return settings if cfg.epochs else {k: v for k, v in settings.items() if k not in (*_TRAINING, "lr")}


def stage_keys(cfg: CycleConfig, dense_sha256: str | None = None, data: str | None = None) -> dict[str, str]:
    """The key of each phase's stage (see :func:`stage_inputs`)."""
    return {phase: key_of(record) for phase, record in stage_inputs(cfg, dense_sha256, data).items()}


def ladder_inputs(cfg: CycleConfig, dense_key: str, data: str | None = None) -> list[tuple[float, dict[str, Any]]]:
    """(sparsity, key inputs) of each rung of a pruning ladder, lowest first: each rung's key
    holds the rung below's, so a rung is the same stage in every trial and sweep that climbs the
    same rungs to it (and the pruned stage of a trial whose sparsity it is)."""
    settings = {k: v for k, v in consumed(cfg, "pruned", data).items() if k != "prune_steps"}  # one step a rung
    rungs, parent = [], dense_key
    for number, sparsity in enumerate(cfg.rungs):
        record = _versioned({"phase": "pruned", "parent": parent, "rung": number,
                             "settings": {**settings, "sparsity": sparsity}})
        parent = key_of(record)
        rungs.append((sparsity, record))
    return rungs


def ladder_keys(cfg: CycleConfig, dense_key: str, data: str | None = None) -> list[tuple[float, str]]:
    """(sparsity, key) of each rung of a pruning ladder (see :func:`ladder_inputs`)."""
    return [(sparsity, key_of(record)) for sparsity, record in ladder_inputs(cfg, dense_key, data)]


def sensitivity_inputs(cfg: CycleConfig, dense_key: str, sparsities: Any, ks: Any,
                       data: str | None = None) -> dict[str, Any]:
    """What keys the sensitivity table of the dense stage ``dense_key``: its grid, what prices
    and shares its rows, and the validation data it is measured on."""
    retraining: dict[str, Any] = {"retrain_epochs": cfg.table_retrain_epochs}
    if cfg.table_retrain_epochs:  # then what the retraining reads too
        retraining.update({k: v for k, v in consumed(cfg, "pruned").items() if k in _TRAINING})
        retraining["learning_rate"] = cfg.table_retrain_learning_rate
    measured_on = {k: v for k, v in consumed(cfg, "dense", data).items() if k in (*_DATA, "data")}
    return _versioned({"phase": "sensitivity", "parent": dense_key, "settings": {
        "sparsities": [float(s) for s in sparsities], "ks": [int(k) for k in ks], "coder": cfg.coder,
        "index_bits": cfg.index_bits, "init": cfg.init, **measured_on, **retraining}})


def sensitivity_key(cfg: CycleConfig, dense_key: str, sparsities: Any, ks: Any, data: str | None = None) -> str:
    return key_of(sensitivity_inputs(cfg, dense_key, sparsities, ks, data))


def _versioned(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "version": dcsweep_version(), "code": code_digest(), "format": STAGE_FORMAT}


def key_of(inputs: Mapping[str, Any]) -> str:
    """A stage's key: the digest of its inputs, which its record keeps, so a reader can tell
    that a record's key is its own."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class StageRecord:
    """What a computed stage says of itself; the store adds each file's digest and size when
    it publishes the stage (see ``dcsweep.runner.sweep.records``)."""

    phase: str
    key: str
    accuracy: float | None  # test (None for a stage that is not a model: the sensitivity table)
    val_accuracy: float
    seconds: float  # what computing it took: what each reuse saves
    files: tuple[str, ...] = (MODEL_FILE,)  # what the stage's folder holds besides this record
    inputs: Mapping[str, Any] = field(default_factory=dict)  # what makes its key (key_of(inputs) == key)
    about: Mapping[str, Any] = field(default_factory=dict)  # model, data set and its path: for people


class StageDamaged(Exception):
    """A stored stage that is not what its record says: it must not be used."""


#: A stage.json is a few kilobytes; one larger than this is not one (bounded before parsing).
MAX_RECORD_BYTES = 1 << 20
#: A stage keeps a model or a table's three files; more named files is not a stage.
MAX_STAGE_FILES = 16
#: No model of any registered architecture comes near this; a larger size is a forged record.
MAX_STAGE_FILE_BYTES = 1 << 40
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RECORD_KEYS = frozenset({"format", "phase", "key", "accuracy", "val_accuracy", "seconds", "files", "inputs",
                          "about", "created", "digest"})


def record_json(record: StageRecord, files: Mapping[str, tuple[str, int]], created: str) -> dict[str, Any]:
    """The stage.json of ``record`` whose files have these (sha256, bytes); its ``digest``
    covers everything else in it, so an edited record is told from the one written."""
    out: dict[str, Any] = {
        "format": STAGE_FORMAT, "phase": record.phase, "key": record.key, "accuracy": record.accuracy,
        "val_accuracy": record.val_accuracy, "seconds": record.seconds,
        "files": {name: {"sha256": sha, "bytes": size} for name, (sha, size) in files.items()},
        "inputs": dict(record.inputs), "about": dict(record.about), "created": created}
    return {**out, "digest": _digest(out)}


def read_record(text: bytes, phase: str, key: str) -> tuple[StageRecord, dict[str, tuple[str, int]]]:
    """The record of stage ``phase``/``key`` and its files' (sha256, bytes), from its stage.json;
    StageDamaged naming the first thing that is not as written: a record that does not parse, is
    of another format, phase or key, was edited (its digest), holds a key its inputs do not make,
    a figure out of range, or a file name that is not a plain name beside it."""
    if len(text) > MAX_RECORD_BYTES:
        raise StageDamaged(f"{STAGE_FILE} is {len(text)} bytes; a record is at most {MAX_RECORD_BYTES}")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StageDamaged(f"{STAGE_FILE} does not parse: {exc}") from None
    if not isinstance(data, dict) or set(data) != _RECORD_KEYS:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise StageDamaged(f"{STAGE_FILE} holds {got}; a record of format {STAGE_FORMAT} holds {sorted(_RECORD_KEYS)}")
    if data["format"] != STAGE_FORMAT:
        raise StageDamaged(f"{STAGE_FILE} is of format {data['format']!r}; this dcsweep reads {STAGE_FORMAT}")
    if data["digest"] != _digest({k: v for k, v in data.items() if k != "digest"}):
        raise StageDamaged(f"{STAGE_FILE} was changed after it was written (its digest does not match)")
    for name, want in (("phase", phase), ("key", key)):
        if data[name] != want:
            raise StageDamaged(f"{STAGE_FILE} is of {name} {str(data[name])[:80]!r}; its folder is {want!r}")
    inputs = data["inputs"]
    if not isinstance(inputs, dict) or inputs.get("phase") != phase or key_of(inputs) != key:
        raise StageDamaged(f"{STAGE_FILE}'s inputs do not make its key {key}")
    accuracy = None if data["accuracy"] is None and phase == "sensitivity" else _fraction(data, "accuracy")
    seconds = data["seconds"]
    if not _real(seconds) or seconds < 0:
        raise StageDamaged(f"{STAGE_FILE} has seconds={seconds!r}; allowed: a finite number >= 0")
    files = _files(data["files"])
    about = data["about"] if isinstance(data["about"], dict) else {}
    record = StageRecord(phase, key, accuracy, _fraction(data, "val_accuracy"), float(seconds), tuple(files),
                         inputs, about)
    return record, files


def _files(files: Any) -> dict[str, tuple[str, int]]:
    if not isinstance(files, dict) or not 1 <= len(files) <= MAX_STAGE_FILES:
        raise StageDamaged(f"{STAGE_FILE} names {files!r:.80}; a stage names 1 to {MAX_STAGE_FILES} files")
    out = {}
    for name, entry in files.items():
        if not _PLAIN_NAME.fullmatch(name) or name == STAGE_FILE:
            raise StageDamaged(f"{STAGE_FILE} names file {name[:100]!r}; a stage holds plain names beside it")
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        size = entry.get("bytes") if isinstance(entry, dict) else None
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha) or not isinstance(size, int) \
                or isinstance(size, bool) or not 0 <= size <= MAX_STAGE_FILE_BYTES:
            raise StageDamaged(f"{STAGE_FILE}: file {name!r} has {entry!r:.120}; allowed: a sha256 and a size "
                               f"of 0 to {MAX_STAGE_FILE_BYTES} bytes")
        out[name] = (sha, size)
    return out


def _fraction(data: Mapping[str, Any], name: str) -> float:
    value = data[name]
    if not _real(value) or not 0.0 <= value <= 1.0:
        raise StageDamaged(f"{STAGE_FILE} has {name}={value!r}; allowed: a fraction in [0, 1]")
    return float(value)


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _digest(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Found:
    """A stage taken from the store: its checked record, and a private folder holding its
    files as they were verified (a copy: what another process does to the store afterwards
    cannot reach it)."""

    folder: Path
    record: StageRecord


class Stages(Protocol):
    """Where a cycle finds stages computed before and leaves the ones it computes."""

    def claim(self, phase: str, key: str) -> contextlib.AbstractContextManager[Found | None]:
        """The stage once it exists and checks out, waiting while another process computes it;
        or None, and then this process holds the stage until the block ends and should compute
        it and ``publish`` it inside the block. A stored stage that fails its check is set
        aside first and then computed as if it had never existed. StageDamaged raised inside
        the block (a verified file that still does not load) sets the stage aside too."""
        ...

    def publish(self, phase: str, key: str, folder: Path, record: StageRecord) -> None:
        """Keep the stage in ``folder`` (``record.files``) under ``key``, whole or not at all."""
        ...

    def recomputed(self, phase: str, key: str) -> str | None:
        """Why this process computed the stage again (the damage found in the stored one), if so."""
        ...


class NoStages:
    """Every stage computed, none kept (``share_stages: false``, or a cycle on its own)."""

    @contextlib.contextmanager
    def claim(self, phase: str, key: str) -> Iterator[Found | None]:
        yield None

    def publish(self, phase: str, key: str, folder: Path, record: StageRecord) -> None:
        return None

    def recomputed(self, phase: str, key: str) -> str | None:
        return None
