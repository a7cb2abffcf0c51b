"""``dcsweep submit``: a sweep as a Ray job on a cluster, through the Ray Jobs API.

The job's runtime environment ships this project (the ``dcsweep`` package and, for a space
given as a file, that file), so the cluster's nodes need torch, Ray and MLflow but not dcsweep.
Only ``MLFLOW_TRACKING_URI`` travels with the job: credentials are never put in a runtime
environment (Ray keeps it in the job's metadata, visible on the dashboard); give them to the
cluster's nodes through their own environment (a Kubernetes secret, an instance profile).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from dcsweep.runner.cycle import ConfigError
from dcsweep.runner.sweep import Storage, space_as_run
from dcsweep.runner.sweep.places import check_per_trial, refuse_credentials
from dcsweep.runner.sweep.spec import sweep_name
from dcsweep.search_spaces import list_spaces

from .env import use_ray_token

log = logging.getLogger("dcsweep")


def stage_package(folder: Path) -> Path:
    """A copy of the installed ``dcsweep`` package under ``folder`` (code and space files)."""
    import dcsweep.compression
    import dcsweep.runner
    import dcsweep.search_spaces

    target = folder / "dcsweep"
    target.mkdir(parents=True)
    (target / "__init__.py").write_text('"""dcsweep, shipped with a Ray job."""\n')
    for module in (dcsweep.compression, dcsweep.runner, dcsweep.search_spaces):
        source = Path(str(module.__file__)).parent
        shutil.copytree(source, target / module.__name__.split(".")[-1],
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def submit(space: str, address: str, name: str | None, storage: str | None, tracking_uri: str | None,
           smoke: bool, cpus: float | None, gpus: float | None, workers: int | None = None) -> dict[str, Any]:
    """Validate here, submit there; returns the job id and how to follow it."""
    use_ray_token()  # before Ray reads its configuration
    check_per_trial(cpus, gpus, workers)  # here, not in a job that fails on the cluster
    name = sweep_name(space_as_run(space, workers=workers), name)
    if storage:
        Storage(storage)  # its scheme is checked here; the place itself only the cluster can see
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:  # no health check: a tracking server may answer only inside the cluster
        refuse_credentials(uri)
    stage = Path(tempfile.mkdtemp(prefix="dcsweep-submit-"))
    try:
        package = stage_package(stage)
        space_arg = space
        if space not in list_spaces():  # a YAML file travels as one of the shipped package's spaces
            space_arg = f"submitted-{name}"
            shutil.copy(space, package / "search_spaces" / f"{space_arg}.yaml")
        command = ["python", "-m", "dcsweep.runner.cli", "run", space_arg, "--name", name, "--address", "auto",
                   "--json"]
        command += ["--storage", storage] if storage else []
        command += ["--smoke-test"] if smoke else []
        command += ["--cpus-per-trial", str(cpus)] if cpus is not None else []
        command += ["--gpus-per-trial", str(gpus)] if gpus is not None else []
        command += ["--workers-per-trial", str(workers)] if workers is not None else []
        runtime_env: dict[str, Any] = {"py_modules": [str(package)]}
        if uri:
            runtime_env["env_vars"] = {"MLFLOW_TRACKING_URI": uri}
        from ray.job_submission import JobSubmissionClient  # after use_ray_token: Ray reads it on import

        try:
            client = JobSubmissionClient(address)
        except Exception as exc:  # noqa: BLE001 - connection, auth and version errors alike
            raise ConfigError(f"--address={address!r}: no Ray Jobs API answers there "
                              f"({str(exc).splitlines()[0][:200]})") from None
        job_id = _submit(client, shlex.join(command), runtime_env, name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("submitted sweep %s as Ray job %s", name, job_id)
    return {"job_id": job_id, "name": name, "address": address, "entrypoint": shlex.join(command),
            "follow": f"ray job logs --address {address} --follow {job_id}",
            "status": f"ray job status --address {address} {job_id}"}


def _submit(client: Any, entrypoint: str, runtime_env: dict[str, Any], name: str, within: float = 60.0) -> str:
    """The job, submitted; a cluster just started answers "No available agent" until its job
    agent is up (seconds), so that answer is retried for up to ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return str(client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                         metadata={"dcsweep.sweep": name}))
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            log.info("the cluster's job agent is not up yet; trying again")
            time.sleep(2.0)
