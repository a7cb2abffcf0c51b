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
import urllib.parse
import urllib.request

from dcsweep.runner.cycle import ConfigError

from .storage import Storage

log = logging.getLogger("dcsweep")
#: Per-trial CPUs and GPUs a sweep may ask for (fractions share a device).
MAX_PER_TRIAL = 1024.0


def default_storage() -> str:
    return os.environ.get("DCSWEEP_STORAGE", "~/dcsweep-runs")


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


def check_per_trial(cpus: float | None, gpus: float | None) -> None:
    """``--cpus-per-trial``/``--gpus-per-trial``, refused here rather than on a cluster."""
    for flag, value in (("--cpus-per-trial", cpus), ("--gpus-per-trial", gpus)):
        if value is not None and not 0 <= value <= MAX_PER_TRIAL:
            raise ConfigError(f"{flag}={value} is not allowed; it must be a number in [0, {MAX_PER_TRIAL:g}]")
