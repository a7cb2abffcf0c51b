"""The sweep storage on a local path and on S3: a real S3 API (moto's server on 127.0.0.1) reached
through pyarrow, as Ray Tune reaches it, with the endpoint and keys from the environment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dcsweep.runner.cycle import ConfigError
from dcsweep.runner.sweep import Storage

from ..helpers import BUCKET, SPACE, cli, finish


def _keys(env: dict[str, str], prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_files_round_trip(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if where == "s3":
        request.getfixturevalue("s3_env")
    storage = Storage(tmp_path / "store" if where == "local" else f"s3://{BUCKET}/unit-{os.getpid()}")
    assert not storage.exists("sweeps", "a", "space.yaml") and storage.folders("sweeps") == []
    storage.write_text("name: a\n", "sweeps", "a", "space.yaml")
    storage.write_bytes(b"\x00\x01", "baselines", "k", "model.dcz")
    storage.check_writable()
    assert storage.read_text("sweeps", "a", "space.yaml") == "name: a\n"
    assert storage.read_bytes("baselines", "k", "model.dcz") == b"\x00\x01"
    assert storage.exists("sweeps", "a") and storage.folders("sweeps") == ["a"]  # the probe left nothing
    assert storage.uri("sweeps", "a").endswith("/sweeps/a")


def test_bad_storages_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is not writable"):
        Storage(tmp_path / "file" / "store").check_writable()
    with pytest.raises(ConfigError, match="scheme 'ftp' is not supported"):
        Storage("ftp://host/x")
    assert Storage(f"file://{tmp_path}").local == tmp_path.resolve()


@pytest.mark.slow
def test_a_sweep_on_s3(s3: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(SPACE.replace("k: {grid: [2, 16]}", "k: {grid: [16]}")
                                         .replace("[0.5, 0.9, 0.97]", "[0.5, 0.9]"))
    storage, uri = f"s3://{BUCKET}/runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ("--name", "on-s3", "--storage", storage, "--tracking-uri", uri, "--json")
    with cli("run", str(tmp_path / "space.yaml"), *args, env=s3) as proc:
        result = finish(proc)
    assert not result["errors"] and len(result["trials"]) == 2 and result["storage"] == storage
    keys = _keys(s3, "runs/")
    assert {"runs/sweeps/on-s3/space.yaml", "runs/sweeps/on-s3/sweep.json"} <= set(keys)
    dense = [k for k in keys if k.startswith("runs/stages/dense/")]
    assert {k.rsplit("/", 1)[1] for k in dense} >= {"model.dcz", "stage.json"}  # the dense model, once
    assert any(k.startswith("runs/sweeps/on-s3/tune/") and "experiment_state" in k for k in keys)
    assert any(k.startswith("runs/sweeps/on-s3/tune/trial_") and "checkpoint_" in k for k in keys)
    runs = "runs/mlartifacts/on-s3/"
    assert sum(k.startswith(runs) and k.endswith("/artifacts/model.dcz") for k in keys) == 2  # each trial's file
    assert sum(k.startswith(f"{runs}models/") and k.endswith("/data/model.dcz") for k in keys) == 2  # its model
    assert not Path("s3:").exists()
    runs = [r for r in MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("on-s3").experiment_id])]
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)

    with cli("run", str(tmp_path / "space.yaml"), *args, env=s3) as proc:  # the name exists: refused
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "already exists" in err
    with cli("resume", "on-s3", "--storage", storage, "--json", env=s3) as proc:  # nothing left to run
        resumed = finish(proc)
    assert json.dumps(sorted(t["run_id"] for t in resumed["trials"])) == json.dumps(
        sorted(t["run_id"] for t in result["trials"]))


def test_a_full_device_is_recognised_through_causes_and_in_text() -> None:
    import errno

    from dcsweep.runner.sweep.storage import is_full

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("the sweep failed") from inner
    except RuntimeError as outer:
        assert is_full(outer)
    assert is_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_full("OSError: [Errno 28] Error writing bytes to file")
    assert not is_full(OSError(errno.EACCES, "Permission denied")) and not is_full("Errno 2")


def test_a_refused_write_is_recognised_with_its_path_and_os_error() -> None:
    import errno

    from dcsweep.runner.sweep.storage import is_fault, unwritable

    root = "/srv/store"
    # Python's form, through causes; the temporary name a copy had is given as its file
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", f"{root}/t/.state.json.0a1b2c3d.part")
        except OSError as inner:
            raise RuntimeError("Tune's save failed") from inner
    except RuntimeError as outer:
        assert unwritable(outer, root) == f"[Errno 30] Read-only file system: '{root}/t/.state.json.0a1b2c3d.part'"
    assert unwritable(f"OSError: [Errno 30] Read-only file system: '{root}/t/.state.json.0a1b2c3d.part'") == (
        f"[Errno 30] Read-only file system: '{root}/t/state.json'")
    # pyarrow's form (a trial's checkpoint upload), as text in a trial's error file
    text = (f"Traceback ...\nOSError: [Errno 30] Cannot create directory '{root}/t/checkpoint_000003'. "
            f"Detail: [errno 30] Read-only file system\n")
    assert unwritable(text, root) == (f"[Errno 30] Read-only file system: '{root}/t/checkpoint_000003' "
                                      f"(cannot create directory)")
    # a denied write counts inside the storage only: a trial denied its data root is its own failure
    assert unwritable(f"PermissionError: [Errno 13] Permission denied: '{root}/stages/x'", root)
    assert unwritable("PermissionError: [Errno 13] Permission denied: '/data/imagenet/x'", root) is None
    assert unwritable(OSError(errno.EACCES, "Permission denied", "/data/x"), root) is None
    assert not is_fault("FileNotFoundError: [Errno 2] No such file or directory: 'x'", root)
    assert is_fault(OSError(errno.ENOSPC, "No space left on device")) and is_fault(OSError(errno.EROFS, "x"))


def test_a_full_storage_names_its_device(tmp_path) -> None:
    from dcsweep.runner.sweep.storage import StorageFull, storage_full

    error = storage_full(Storage(tmp_path / "not-yet"), "s1")
    assert isinstance(error, StorageFull)
    assert str(error).startswith(f"no space left on the device of the sweep storage {tmp_path / 'not-yet'}: ")
    assert " mounted at /" in str(error) and " free of " in str(error) and "`dcsweep resume s1`" in str(error)
