"""What a sweep is, validated before Ray starts: its space, name, storage and tracking store.

Storage layout (``--storage``: a path, or an ``s3://``/``gs://`` URI with a tracking server;
default ``$DCSWEEP_STORAGE`` or ``~/dcsweep-runs``)::

    mlflow.db                  the default MLflow store (one experiment per sweep)
    mlartifacts/<sweep>/       its artifacts
    baselines/<key>/model.dcz  dense baselines, keyed by model, data and training settings
    sweeps/<sweep>/space.yaml  the space as run (smoke overrides and CLI resources applied)
    sweeps/<sweep>/sweep.json  its sha256, the tracking URI and the smoke flag, for resuming
    sweeps/<sweep>/tune/       Ray Tune's experiment: trials, checkpoints after each phase

The dense baseline is trained once per key as its own Ray task and reused by every trial and
by later sweeps with the same key. The driver that runs a sweep is ``driver.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from dcsweep.search_spaces import SearchSpace, SpaceError, load_space

from .config import ConfigError, CycleConfig
from .datasets import DataError, load_dataset, synthetic_stand_in
from .storage import Storage

log = logging.getLogger("dcsweep")
BASELINE_FIELDS = ("model", "dataset", "data_root", "image_size", "epochs", "optimizer", "lr", "momentum",
                   "weight_decay", "batch_size", "seed", "device")
SMOKE_TRIALS = 3
SPACE_FILE, SWEEP_FILE = "space.yaml", "sweep.json"


def default_storage() -> str:
    return os.environ.get("DCSWEEP_STORAGE", "~/dcsweep-runs")


def default_tracking_uri(storage: Storage) -> str:
    """SQLite beside a local storage; an object store holds no database, so it needs a server."""
    if storage.local is None:
        raise ConfigError(f"storage {storage} is an object store, which cannot hold the default SQLite MLflow "
                          f"store; pass --tracking-uri (or MLFLOW_TRACKING_URI) with a tracking server")
    return f"sqlite:///{storage.local / 'mlflow.db'}"


def tracking_uri_for(storage: Storage, given: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else SQLite in the storage."""
    return given or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(storage)


def check_settings(settings: dict[str, Any]) -> None:
    CycleConfig.from_dict(settings)


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


def prepare(space_name: str, name: str | None, storage: Storage | str | Path, tracking_uri: str | None, smoke: bool,
            cpus: float | None, gpus: float | None, address: str | None, resume: bool = False) -> Sweep:
    """Validate the space and the place; raise ConfigError (exit 2) before anything starts.
    With ``resume``, the sweep must exist and have been started with this very space."""
    space = load_space(space_name, check_settings)
    if cpus is not None or gpus is not None:
        space = replace(space, cpu=space.cpu if cpus is None else cpus, gpu=space.gpu if gpus is None else gpus)
    if smoke:
        space = _smoke(space)
    if resume and not name:
        raise ConfigError("--resume needs the sweep's --name")
    name = sweep_name(space, name)
    place = storage if isinstance(storage, Storage) else Storage(storage)
    sweep = Sweep(name, space, place, tracking_uri_for(place, tracking_uri), smoke, address, resume)
    if resume:
        saved = _saved(sweep.storage, name)
        if saved.to_dict() != space.to_dict():
            differ = sorted(k for k, v in space.to_dict().items() if saved.to_dict().get(k) != v)
            raise ConfigError(f"sweep {name!r} was started with another space (differ: {differ}); resume it "
                              f"with `dcsweep resume {name}` or give a new --name")
    elif sweep.storage.exists(*sweep.folder):
        raise ConfigError(f"sweep {name!r} already exists in {sweep.storage}; give another --name, or "
                          f"continue it with `dcsweep resume {name}`")
    _check_places(sweep)
    return sweep


def prepare_resume(name: str, storage: Storage | str | Path, tracking_uri: str | None,
                   address: str | None) -> Sweep:
    """The sweep ``name`` as it was started: its saved space, smoke flag and tracking URI."""
    place = storage if isinstance(storage, Storage) else Storage(storage)
    space = _saved(place, name)
    meta = json.loads(place.read_text("sweeps", name, SWEEP_FILE))
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or meta["tracking_uri"]
    sweep = Sweep(name, space, place, uri, bool(meta.get("smoke")), address, resume=True)
    _check_places(sweep)
    return sweep


def _saved(storage: Storage, name: str) -> SearchSpace:
    """The space a sweep was started with, checked against the digest taken then."""
    where = f"{storage.uri('sweeps', name)}/"
    if not storage.exists("sweeps", name, SPACE_FILE) or not storage.exists("sweeps", name, SWEEP_FILE):
        names = [n for n in storage.folders("sweeps") if storage.exists("sweeps", n, SPACE_FILE)]
        raise ConfigError(f"no sweep named {name!r} in {storage}; sweeps there: {names}")
    try:
        digest = json.loads(storage.read_text("sweeps", name, SWEEP_FILE))["space_sha256"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{where}{SWEEP_FILE} is unreadable ({exc}); this sweep cannot be resumed") from None
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
    text = yaml.safe_dump(sweep.space.to_dict(), sort_keys=False)
    sweep.storage.write_text(text, *sweep.folder, SPACE_FILE)
    sweep.storage.write_text(json.dumps({
        "space_sha256": hashlib.sha256(text.encode()).hexdigest(), "tracking_uri": sweep.tracking_uri,
        "smoke": sweep.smoke, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1), *sweep.folder, SWEEP_FILE)


def _check_places(sweep: Sweep) -> None:
    """The tracking store is reachable and the storage writable, before anything starts."""
    check_tracking_uri(sweep.tracking_uri)
    sweep.storage.check_writable()


def use_ray_token() -> None:
    """Ray 2.60 clusters authenticate every client with a token, but a client only sends one
    when RAY_AUTH_MODE says so: when the user has a token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token) and has not chosen a mode, use it."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if (os.environ.get("RAY_AUTH_TOKEN") or Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"))
            .expanduser().is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def refuse_credentials(uri: str) -> None:
    parsed = urllib.parse.urlsplit(uri)
    if parsed.username or parsed.password:
        raise ConfigError("the MLflow tracking URI must not carry credentials; set MLFLOW_TRACKING_USERNAME/"
                          "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN in the environment instead")


def check_tracking_uri(uri: str) -> None:
    """No credentials inside the URI (they would be logged and saved); a tracking server must
    answer its health check."""
    refuse_credentials(uri)
    if urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as answer:
            answer.read()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConfigError(f"MLflow tracking server {uri} does not answer ({reason}); start it or pass "
                          f"another --tracking-uri") from None


def sweep_name(space: SearchSpace, name: str | None) -> str:
    """The given name, checked, or SPACE-YYYYmmdd-HHMMSS."""
    name = name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"--name={name!r} is not allowed; use letters, digits, '-', '_' and '.'")
    return name


def _smoke(space: SearchSpace) -> SearchSpace:
    """Tiny epochs and a few trials; a data set that is not on disk becomes generated data of
    the same shape (said in the log)."""
    fixed = {**space.fixed, **space.smoke}
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


def baseline_key(settings: dict[str, Any]) -> str:
    cfg = CycleConfig.from_dict(settings).to_dict()
    blob = json.dumps({k: cfg[k] for k in BASELINE_FIELDS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
