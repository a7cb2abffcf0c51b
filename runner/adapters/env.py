"""Environment defaults the adapters set before Ray Tune and MLflow read them.

Each is a ``setdefault``: a value the user exported wins.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

#: The test-only fault hook's variable (see testing.py); never set in normal use.
TEST_HOOKS = "DCSWEEP_TEST_FAULT"

#: Tune snapshots its experiment this often (seconds): a killed driver redoes at most the phase
#: each running trial was in (Tune's "auto" can be 10 s or more, whole trials here).
EXPERIMENT_SNAPSHOT_S = "0.5"

DEFAULTS = {
    "TUNE_GLOBAL_CHECKPOINT_S": EXPERIMENT_SNAPSHOT_S,
    # ...and Tune's own warning about snapshotting that often
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # no progress.csv or TensorBoard events per trial (the driver's CPU, files in every
    # snapshot): each trial's result.json, which the driver adds itself, holds every report
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # a tracking server that went away must not stall the driver for minutes of retries
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def set_driver_defaults() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)


#: Credentials Ray Tune copies from the driver's environment into every trainable's runtime
#: environment, which Ray then writes in clear to its world-readable session logs
#: (runtime_env_agent.log). Workers need not get them that way: a local Ray's workers inherit
#: the driver's environment, a cluster's nodes have their own (a secret, an instance profile).
TUNE_PROPAGATED_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


def keep_secrets_out_of_runtime_env() -> None:
    """Stop Ray Tune (2.x: ``ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE``) from putting
    cloud credentials into trainables' runtime environments. The planted-secret test searches
    every file of Ray's session for them."""
    from ray.tune.execution import class_cache

    propagated = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if isinstance(propagated, set):
        propagated.difference_update(TUNE_PROPAGATED_SECRETS)


def use_ray_token() -> None:
    """Ray 2.60 clusters authenticate every client with a token, but a client only sends one
    when RAY_AUTH_MODE says so: when the user has a token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token) and has not chosen a mode, use it. Call before Ray reads its settings."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if (os.environ.get("RAY_AUTH_TOKEN") or Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"))
            .expanduser().is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


#: What a local Ray 2.60 would otherwise expose to the network: Prometheus endpoints (the
#: dashboard agent's exporter, and dashboard.py's and the autoscaler monitor's, which start even
#: without a dashboard). The metrics collection switch removes the first; a port of -1 makes the
#: other two fail to bind, which Ray catches (one logged ERROR each in the session's logs).
NO_METRICS_ENV = {"RAY_enable_metrics_collection": "0", "DASHBOARD_METRIC_PORT": "-1",
                  "AUTOSCALER_METRIC_PORT": "-1"}


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Around ``ray.init`` of a local instance: every process it starts listens on 127.0.0.1
    only, and none serves metrics. Ray 2.60 binds to its node IP address and turns a loopback
    ``_node_ip_address`` back into the host's; its own switch for a machine-local node (what it
    does on macOS and Windows) is ``ray_constants.ENABLE_RAY_CLUSTER``, read when the node's
    address is chosen, so it is turned off only for this call (a later ``ray.init`` that joins a
    cluster in the same process must see the host's address). The processes started read the
    metrics settings from the environment they inherit; a value the user exported wins."""
    from ray._private import ray_constants

    saved_env = {key: os.environ.get(key) for key in NO_METRICS_ENV}
    saved_cluster = ray_constants.ENABLE_RAY_CLUSTER
    for key, value in NO_METRICS_ENV.items():
        os.environ.setdefault(key, value)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster
        for key, old in saved_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
