"""What a sweep is, validated before Ray starts: its space, name, storage and tracking store.

Storage layout (``--storage``: a path, or an ``s3://``/``gs://`` URI with a tracking server;
default ``$DCSWEEP_STORAGE`` or ``~/dcsweep-runs``)::

    mlflow.db                  the default MLflow store (one experiment per sweep)
    mlartifacts/<sweep>/       its artifacts
    stages/<phase>/<key>/      dense, pruned and shared models, each computed once (stages.py)
    sweeps/<sweep>/space.yaml  the space as run (smoke overrides and CLI resources applied)
    sweeps/<sweep>/sweep.json  its sha256, the tracking URI and the smoke flag, for resuming
    sweeps/<sweep>/tune/       Ray Tune's experiment: trials, checkpoints after each phase

A sweep is opened one of two ways: :func:`new_sweep` (a name not yet in the storage) or
:func:`resume_sweep` (a name that is, as it was started: its saved space, smoke flag and
tracking URI). ``dcsweep run``, ``dcsweep run --resume`` and ``dcsweep resume`` all come here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import string
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from dcsweep.runner.cycle import ConfigError, CycleConfig, DataError, load_dataset
from dcsweep.runner.cycle.config import check_settings
from dcsweep.runner.cycle.datasets import BUNDLED_SHAPES, synthetic_stand_in
from dcsweep.runner.cycle.pretrained import check_weights
from dcsweep.search_spaces import SearchSpace, SpaceError, check_workers, load_space

from .lease import refuse_if_held
from .places import check_tracking_uri, fit_resources, local_resources, tracking_uri_for
from .storage import Storage

log = logging.getLogger("dcsweep")
SMOKE_TRIALS = 3
MAX_NAME = 100  # a sweep's name is a folder, an MLflow experiment and part of Tune's paths
NAME_CHARS = frozenset(string.ascii_letters + string.digits + "-_.")
SPACE_FILE, SWEEP_FILE = "space.yaml", "sweep.json"


@dataclass(frozen=True)
class Sweep:
    """Everything a sweep needs, validated before Ray starts."""

    name: str
    space: SearchSpace
    storage: Storage
    tracking_uri: str
    smoke: bool = False
    address: str | None = None
    resume: bool = False

    @property
    def folder(self) -> tuple[str, str]:
        """The sweep's folder in the storage, as parts."""
        return ("sweeps", self.name)


def space_as_run(space_name: str | Path, smoke: bool = False, cpus: float | None = None,
                 gpus: float | None = None, workers: int | None = None) -> SearchSpace:
    """The space a sweep would run: loaded and validated, CLI resources and smoke overrides
    applied. Raises ConfigError."""
    try:
        space = load_space(space_name, check_settings)
    except SpaceError as exc:
        raise ConfigError(str(exc)) from None
    if cpus is not None or gpus is not None:
        space = replace(space, cpu=space.cpu if cpus is None else cpus, gpu=space.gpu if gpus is None else gpus)
    if workers is not None:
        space = replace(space, workers=workers)
        try:
            check_workers(space)
        except SpaceError as exc:
            raise ConfigError(str(exc).replace("resources.workers", "--workers-per-trial")) from None
    return _smoke(space) if smoke else space


def new_sweep(space: SearchSpace, name: str | None, storage: Storage, tracking_uri: str | None, smoke: bool,
              address: str | None) -> Sweep:
    """A sweep not yet in the storage (an existing name is refused, nothing touched)."""
    name = sweep_name(space, name)
    uri = tracking_uri_for(storage, tracking_uri)  # before the storage is touched: it may need none
    refuse_if_held(storage, name)
    if storage.exists("sweeps", name):
        raise ConfigError(f"sweep {name!r} already exists in {storage}; give another --name, or "
                          f"continue it with `dcsweep resume {name}`")
    if address is None:  # a local Ray instance gets this machine: trials must fit, known now
        space = fit_resources(space, smoke, *local_resources())
        check_local_data(space)
    sweep = Sweep(name, space, storage, uri, smoke, address)
    _check_places(sweep)
    return sweep


def check_local_data(space: SearchSpace) -> None:
    """A local sweep's data set is on this machine, read as its trials will read it: otherwise
    every trial fails in turn, each with a traceback. A cluster's data is on its nodes, and an
    image folder is only looked for (reading a million file names twice is not a check). So
    are a pretrained start's weights (downloaded now, once, when the space allows it)."""
    swept = {d.name for d in space.swept}
    if space.fixed.get("pretrained") is True and not {"model", "download"} & swept:
        check_weights(CycleConfig.from_dict(space.fixed))
    if {"dataset", "data_root", "download"} & swept:
        return
    cfg = CycleConfig.from_dict(space.fixed)
    if cfg.download or cfg.dataset.startswith("synthetic:") or cfg.dataset in BUNDLED_SHAPES:
        return
    if cfg.dataset.startswith("imagefolder:"):
        folder = Path(cfg.dataset.split(":", 1)[1]).expanduser()
        if not (folder / "train").is_dir() or not any((folder / d).is_dir() for d in ("val", "test")):
            raise DataError(f"image folder {folder} needs train/ and val/ (or test/) subfolders")
        return
    load_dataset(cfg.dataset, cfg.data_root, False, cfg.image_size, cfg.val_fraction)  # DataError: exit 2


def resume_sweep(name: str | None, storage: Storage, tracking_uri: str | None, address: str | None,
                 expect: SearchSpace | None = None) -> Sweep:
    """The sweep ``name`` as it was started: its saved space, smoke flag and tracking URI
    (``tracking_uri`` only when given explicitly). With ``expect`` (``run SPACE --resume``), that
    space must be the one the sweep was started with."""
    if not name:
        raise ConfigError("--resume needs the sweep's --name")
    refuse_if_held(storage, name)
    space = saved_space(storage, name)
    if expect is not None and expect.to_dict() != space.to_dict():
        differ = sorted(k for k, v in expect.to_dict().items() if space.to_dict().get(k) != v)
        raise ConfigError(f"sweep {name!r} was started with another space (differ: {differ}); resume it "
                          f"with `dcsweep resume {name}` or give a new --name")
    meta = saved_meta(storage, name)
    if not isinstance(meta.get("tracking_uri"), str) and not tracking_uri:
        raise ConfigError(f"{storage.uri('sweeps', name, SWEEP_FILE)} names no tracking_uri; pass --tracking-uri "
                          f"with the MLflow store sweep {name!r} logged to")
    uri = tracking_uri_for(storage, tracking_uri, saved=meta.get("tracking_uri"))
    if address is None:
        fit_resources(space, False, *local_resources())  # its trials fit, or it is refused here
        if not meta.get("smoke"):
            check_local_data(space)
    check_tune_state(storage, name)
    sweep = Sweep(name, space, storage, uri, bool(meta.get("smoke")), address, resume=True)
    _check_places(sweep)
    return sweep


def check_tune_state(storage: Storage, name: str) -> None:
    """Refuse to resume from a damaged Ray Tune state (a full disk truncates files to 0 bytes):
    Tune would log "Failed to restore the run state" and start another experiment with settings
    that are not from the space. Once Tune has saved an experiment, its pickled tuner, the latest
    experiment state (JSON) and searcher state (a pickle, though named .json) must be whole; a
    sweep killed before Tune saved one simply starts."""
    folder = ("sweeps", name, "tune")
    files = storage.files(*folder)
    if not any(f.startswith("experiment_state-") for f in files):
        return
    damaged: list[str] = []
    checks = {"experiment_state-": _not_json, "basic-variant-state-": _not_pickle, "search_gen_state-": _not_pickle,
              "tuner.pkl": _not_pickle}
    for prefix, check in checks.items():
        saved = sorted(f for f in files if f.startswith(prefix))
        if not saved and prefix == "tuner.pkl":
            damaged.append("tuner.pkl (missing)")
        problem = check(storage.read_bytes(*folder, saved[-1])) if saved else None
        if problem:
            damaged.append(f"{saved[-1]} ({problem})")
    if damaged:
        raise ConfigError(f"sweep {name!r} cannot be resumed: Ray Tune's saved state in {storage.uri(*folder)} is "
                          f"damaged ({', '.join(damaged)}); nothing was run. Its finished trials, their checkpoints "
                          f"and MLflow runs are intact (`dcsweep pareto {name}`); run what is missing as a new sweep")


def _not_pickle(data: bytes) -> str | None:
    """A pickle cut short, judged by its frame alone (never unpickled): protocol 2+ starts with
    PROTO (0x80) and ends with STOP ('.')."""
    if not data:
        return "empty"
    return None if data[:1] == b"\x80" and data.endswith(b".") else "cut short"


def _not_json(data: bytes) -> str | None:
    if not data:
        return "empty"
    try:
        json.loads(data)
    except ValueError as exc:
        return f"not JSON: {exc}"
    return None


def saved_tracking_uri(storage: Storage, name: str) -> str | None:
    """The tracking URI sweep ``name`` was started with, if the storage holds it."""
    if not storage.exists("sweeps", name, SWEEP_FILE):
        return None
    try:
        return saved_meta(storage, name).get("tracking_uri")
    except ConfigError:
        return None


def saved_meta(storage: Storage, name: str) -> dict[str, Any]:
    try:
        meta = json.loads(storage.read_text("sweeps", name, SWEEP_FILE))
        if not isinstance(meta, dict) or not isinstance(meta.get("space_sha256"), str):
            raise ValueError("it holds no space_sha256")
        return meta
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{storage.uri('sweeps', name, SWEEP_FILE)} is unreadable ({exc}); this sweep cannot "
                          f"be resumed") from None


def saved_space(storage: Storage, name: str) -> SearchSpace:
    """The space a sweep was started with, checked against the digest taken then."""
    where = f"{storage.uri('sweeps', name)}/"
    if not storage.exists("sweeps", name, SPACE_FILE) or not storage.exists("sweeps", name, SWEEP_FILE):
        names = [n for n in storage.folders("sweeps") if storage.exists("sweeps", n, SPACE_FILE)]
        raise ConfigError(f"no sweep named {name!r} in {storage}; sweeps there: {names}")
    digest = saved_meta(storage, name)["space_sha256"]
    text = storage.read_bytes("sweeps", name, SPACE_FILE)
    if hashlib.sha256(text).hexdigest() != digest:
        raise ConfigError(f"{where}{SPACE_FILE} no longer matches the space sweep {name!r} was started with "
                          f"(its sha256 changed); restore the file or start a new sweep")
    with tempfile.TemporaryDirectory() as tmp:  # the bytes just checked, wherever the storage is
        path = Path(tmp, SPACE_FILE)
        path.write_bytes(text)
        try:
            return load_space(path, check_settings)
        except SpaceError as exc:
            raise ConfigError(str(exc).replace(str(path), f"{where}{SPACE_FILE}")) from None


def write_sweep_files(sweep: Sweep) -> None:
    """space.yaml (the space as run) and sweep.json (its digest, the tracking URI, the smoke flag)."""
    if sweep.storage.exists(*sweep.folder, SWEEP_FILE):  # checked again under the lease: another driver's
        raise ConfigError(f"sweep {sweep.name!r} was started by another driver meanwhile; give another --name, "
                          f"or continue it with `dcsweep resume {sweep.name}`")
    text = yaml.safe_dump(sweep.space.to_dict(), sort_keys=False)
    sweep.storage.write_text(text, *sweep.folder, SPACE_FILE)
    sweep.storage.write_text(json.dumps({
        "space_sha256": hashlib.sha256(text.encode()).hexdigest(), "tracking_uri": sweep.tracking_uri,
        "smoke": sweep.smoke, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1), *sweep.folder, SWEEP_FILE)


def _check_places(sweep: Sweep) -> None:
    """The tracking store is reachable and the storage writable, before anything starts."""
    check_tracking_uri(sweep.tracking_uri)
    sweep.storage.check_writable()


def sweep_name(space: SearchSpace, name: str | None) -> str:
    """The given name, checked, or SPACE-YYYYmmdd-HHMMSS."""
    name = name or f"{space.name[:MAX_NAME - 16]}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not 0 < len(name) <= MAX_NAME or not set(name) <= NAME_CHARS or name.startswith("."):
        raise ConfigError(f"--name={name[:40]!r}{'...' if len(name) > 40 else ''} is not allowed; use at most "
                          f"{MAX_NAME} ASCII letters, digits, '-', '_' and '.', not starting with '.'")
    return name


def _smoke(space: SearchSpace) -> SearchSpace:
    """Tiny epochs and a few trials; a data set that is not on disk becomes generated data of
    the same shape, and a pretrained start a random one (each said in the log)."""
    fixed = {**space.fixed, **space.smoke}
    if fixed.get("pretrained") is True:
        log.warning("smoke test: a random start instead of torchvision's weights for %s", fixed.get("model"))
        fixed["pretrained"] = False
        fixed["epochs"] = fixed.get("epochs") or 1  # a random start cannot be evaluated untrained
    settings = CycleConfig.from_dict(fixed)
    try:
        load_dataset(settings.dataset, settings.data_root, False, settings.image_size)
    except (DataError, OSError):
        stand_in = synthetic_stand_in(settings.dataset, settings.image_size)
        log.warning("smoke test: %s is not on disk; using generated data of the same shape (%s)",
                    settings.dataset, stand_in)
        fixed["dataset"] = stand_in
        fixed.pop("data_root", None)
    # two trials: the first swept setting's first two values, the others' first
    swept = tuple(replace(d, values=d.values[: 2 if i == 0 else 1]) if d.kind in ("grid", "choice") else d
                  for i, d in enumerate(space.swept))
    samples = 1 if space.algorithm == "grid" else min(space.num_samples, SMOKE_TRIALS)
    return replace(space, fixed=fixed, swept=swept, num_samples=samples)
