"""Where a sweep's results go, checked before anything starts: the storage's default, the
tracking-URI rule, and the per-trial resources a user may ask for.

The tracking URI of a new sweep is ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else a
SQLite file in the storage. A sweep that exists keeps the URI it was started with (saved in its
``sweep.json``): resuming it, or reading its front, logs to and reads from that store unless
``--tracking-uri`` names another (a server that moved).
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

from dcsweep.runner.cycle import ConfigError
from dcsweep.search_spaces import MAX_RESOURCE, MAX_WORKERS, MIN_CPU, SearchSpace

from .storage import Storage

log = logging.getLogger("dcsweep")
#: Per-trial CPUs and GPUs a sweep may ask for (fractions share a device).
MAX_PER_TRIAL = MAX_RESOURCE


def default_storage() -> str:
    return os.environ.get("DCSWEEP_STORAGE") or "~/dcsweep-runs"  # set but empty is unset, not "here"


def default_tracking_uri(storage: Storage) -> str:
    """SQLite beside a local storage; an object store holds no database, so it needs a server."""
    if storage.local is None:
        raise ConfigError(f"storage {storage} is an object store, which cannot hold the default SQLite MLflow "
                          f"store; pass --tracking-uri (or MLFLOW_TRACKING_URI) with a tracking server")
    return f"sqlite:///{storage.local / 'mlflow.db'}"


def tracking_uri_for(storage: Storage, given: str | None, saved: str | None = None) -> str:
    """--tracking-uri, else the URI a sweep was started with, else $MLFLOW_TRACKING_URI, else
    SQLite in the storage."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if given:
        if saved and given != saved:
            log.warning("this sweep was tracked at %s; its runs now go to --tracking-uri %s", saved, given)
        return given
    if saved:
        if env and env != saved:
            log.info("MLFLOW_TRACKING_URI is ignored: this sweep is tracked at %s (pass --tracking-uri to move "
                     "it)", saved)
        return saved
    return env or default_tracking_uri(storage)


#: Tracking-URI schemes MLflow's stores take (a bare path would be MLflow 3's refused file store).
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")
#: Query parameters that carry secrets, by any of these words in their name.
SECRET_WORDS = ("token", "pass", "pwd", "secret", "key", "auth", "sig", "cred")


def _split(uri: str) -> urllib.parse.SplitResult:
    try:
        parsed = urllib.parse.urlsplit(uri)
        _ = parsed.port  # raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"tracking URI {uri!r} is not a valid URI ({exc})") from None
    return parsed


def refuse_credentials(uri: str) -> None:
    """Credentials in the URI would be saved in sweep.json and printed: refused, in the user
    part or in the query string, without echoing them."""
    parsed = _split(uri)
    secret = [k for k, _ in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
              if any(word in k.lower() for word in SECRET_WORDS)]
    if parsed.username or parsed.password or secret:
        where = f" (query parameter {secret[0]!r})" if secret else ""
        raise ConfigError(f"the MLflow tracking URI must not carry credentials{where}; set MLFLOW_TRACKING_USERNAME/"
                          "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN in the environment instead")


def check_tracking_uri(uri: str, write: bool = True) -> None:
    """A URI MLflow can use, with no credentials inside (they would be logged and saved); a
    SQLite file that can be written (``write``); a tracking server that answers its health
    check (MLflow's own client would retry a dead one for minutes)."""
    refuse_credentials(uri)
    scheme = _split(uri).scheme.split("+")[0]  # postgresql+psycopg2: a driver named
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(f"tracking URI {uri!r} is not allowed; it must start with one of "
                          f"{[s + ':' for s in TRACKING_SCHEMES]} (e.g. http://127.0.0.1:5000)")
    if scheme == "sqlite" and write:
        _check_sqlite(uri)
    if scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as answer:
            answer.read()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConfigError(f"MLflow tracking server {uri} does not answer ({reason}); start it or pass "
                          f"another --tracking-uri") from None


def _check_sqlite(uri: str) -> None:
    path = uri.removeprefix("sqlite:///")
    if path == uri or path.startswith(":memory:"):
        raise ConfigError(f"tracking URI {uri!r} is not allowed; a SQLite store is sqlite:////absolute/path.db")
    file = Path(path)  # sqlite:////abs/path.db holds /abs/path.db; sqlite:///rel.db a relative path
    folder = file.parent
    while not folder.exists() and folder != folder.parent:  # the store's folders are made as needed
        folder = folder.parent
    where = file if file.exists() else folder
    try:  # a real write: os.access says yes to root everywhere, /proc included
        if file.exists():
            with file.open("r+b"):
                pass
        else:
            tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise ConfigError(f"tracking URI {uri!r}: {where} is not writable ({exc.strerror or exc}); MLflow must "
                          f"write its SQLite store there") from None



#: The CPU a multi-worker trial's own process asks for: it only relays its workers' reports
#: (Tune refuses a trial of no resources at all).
TRIAL_PROCESS_CPU = 0.001


def fit_resources(space: SearchSpace, smoke: bool, cpus: float, gpus: float,
                  total: tuple[float, float] | None = None) -> SearchSpace:
    """Trials that no node can hold (the largest has ``cpus`` and ``gpus``; with several
    workers, each worker on a node and all of them in the cluster's ``total`` CPUs and GPUs)
    are refused before anything starts; a smoke test shrinks a one-worker trial to fit instead."""
    if space.workers > 1:
        all_cpus, all_gpus = total or (cpus, gpus)
        need = (space.workers * space.cpu + TRIAL_PROCESS_CPU, space.workers * space.gpu)
        if space.cpu > cpus or space.gpu > gpus or need[0] > all_cpus or need[1] > all_gpus:
            raise ConfigError(f"trials ask for {space.workers} workers of {space.cpu:g} CPU and {space.gpu:g} GPU "
                              f"({need[0]:g} CPU and {need[1]:g} GPU in all), but the largest node has {cpus:g} CPU "
                              f"and {gpus:g} GPU and the cluster {all_cpus:g} and {all_gpus:g}; pass "
                              f"--workers-per-trial/--cpus-per-trial/--gpus-per-trial or use a bigger cluster")
        return space
    if space.cpu <= cpus and space.gpu <= gpus:
        return space
    if smoke:
        fitted = replace(space, cpu=min(space.cpu, max(cpus, 1.0)), gpu=min(space.gpu, gpus))
        log.warning("smoke test: trials ask for %g CPU and %g GPU; the largest node has %g and %g, so each "
                    "trial gets %g CPU and %g GPU", space.cpu, space.gpu, cpus, gpus, fitted.cpu, fitted.gpu)
        return fitted
    raise ConfigError(f"trials ask for {space.cpu:g} CPU and {space.gpu:g} GPU, but the largest node has "
                      f"{cpus:g} CPU and {gpus:g} GPU; pass --cpus-per-trial/--gpus-per-trial or use a bigger cluster")


def trials_at_once(space: SearchSpace, cpus: float, gpus: float) -> int:
    """How many trials run at once: ``search.max_concurrent``, and for multi-worker trials no
    more than the cluster's ``cpus`` and ``gpus`` hold at ``workers`` each. Tune counts only a
    trial's own process, so more would start trials whose workers then wait for devices."""
    if space.workers == 1:
        return space.max_concurrent
    fits = [int((cpus - TRIAL_PROCESS_CPU) // (space.workers * space.cpu))]
    if space.gpu > 0:
        fits.append(int(gpus // (space.workers * space.gpu)))
    return max(1, min(space.max_concurrent, *fits))


def local_resources() -> tuple[float, float]:
    """CPUs and GPUs of this machine: what a local Ray instance gets."""
    import torch

    return float(os.cpu_count() or 1), float(torch.cuda.device_count())


def check_per_trial(cpus: float | None, gpus: float | None, workers: int | None = None) -> None:
    """``--cpus-per-trial``/``--gpus-per-trial``/``--workers-per-trial``, refused here rather
    than on a cluster."""
    # the space loader's own bounds: a sweep saved with another value could not be loaded again
    for flag, value, lo in (("--cpus-per-trial", cpus, MIN_CPU), ("--gpus-per-trial", gpus, 0.0)):
        if value is not None and not lo <= value <= MAX_PER_TRIAL:
            raise ConfigError(f"{flag}={value} is not allowed; it must be a number in [{lo:g}, {MAX_PER_TRIAL:g}]")
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers-per-trial={workers} is not allowed; it must be an integer in [1, {MAX_WORKERS}]")
