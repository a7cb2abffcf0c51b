"""Credentials come from the environment and go nowhere else: not into MLflow, the sweep
storage or the output."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ..helpers import SPACE, cli

CREDENTIALS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME",
               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS",
               "RAY_AUTH_TOKEN_SECRET_PROBE")
RAY_TEMP = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"  # Ray's sessions: logs, runtime envs


@pytest.mark.slow
def test_planted_credentials_leak_nowhere(tmp_path: Path) -> None:
    planted = {name: f"s3cr3t-{secrets.token_hex(12)}" for name in CREDENTIALS}
    (tmp_path / "space.yaml").write_text(SPACE.replace("k: {grid: [2, 16]}", "k: {grid: [16]}")
                                         .replace("[0.5, 0.9, 0.97]", "[0.5, 0.9]"))
    storage = tmp_path / "store"
    sessions = set(RAY_TEMP.glob("session_2*"))
    with cli("run", str(tmp_path / "space.yaml"), "--name", "secret", "--storage", str(storage), "--json",
              env=planted) as proc:
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    values = [v.encode() for v in planted.values()]
    assert not [v for v in values if v in out.encode() or v in err.encode()]
    files = [p for p in storage.rglob("*") if p.is_file()]
    assert len(files) > 20  # the store, the artifacts, Tune's state and checkpoints
    assert not [(p, v) for p in files for v in values if v in p.read_bytes()]
    # ...nor any file of the Ray session the sweep started (Tune copied AWS_* into every trainable's
    # runtime environment, which Ray logs in clear in runtime_env_agent.log)
    ray_files = [p for session in set(RAY_TEMP.glob("session_2*")) - sessions for p in session.rglob("*")
                 if p.is_file() and not p.is_symlink()]
    assert any(p.name == "runtime_env_agent.log" for p in ray_files)
    assert not [(p, v) for p in ray_files for v in values if v in p.read_bytes()]
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("secret").experiment_id])
    assert len(runs) == 3
    for run in runs:
        logged = " ".join([*run.data.params.values(), *run.data.tags.values()])
        assert not [v for v in planted.values() if v in logged]
