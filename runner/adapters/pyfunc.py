"""A trial's compressed model as an MLflow model: the pyfunc flavour that loads a .dcz.

Each finished trial's run produces an MLflow 3 logged model named ``model`` (its output; its
id in the run's tag ``dcsweep.model``): an MLmodel whose ``python_function`` flavour names this
module as its loader (MLflow's ``loader_module``) and the .dcz as its data.
The stored bytes are the .dcz itself; nothing is pickled, and the code that decodes it is
dcsweep's own, installed where the model is loaded. So

    mlflow.pyfunc.load_model("runs:/<run id>/model").predict(images)

decodes the network and returns its class scores, and so does a registered version of the
sweep's front (``models:/<sweep>@best``; see :func:`register_front`).

Input: float32 images already normalised as the data set's loader does, shape
``(n, *input_shape)``; output: float32 scores ``(n, num_classes)``. Both are in the model's
signature, read from the .dcz header; the input example is one such image of zeros.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("dcsweep")

ARTIFACT_PATH = "model"
#: One point of validation accuracy (also the parent's ``best_ratio_within_1pt``).
WITHIN_1PT = 0.01
#: Aliases of the registered front: highest validation accuracy, and the smallest file within
#: one and half a point of the dense model's validation accuracy. MLflow allows letters, digits,
#: '_' and '-' in an alias, so half a point is spelled 0_5pt.
ALIASES = {"best": None, "smallest-within-1pt": WITHIN_1PT, "smallest-within-0_5pt": WITHIN_1PT / 2}
RUN_TAG = "dcsweep.run_id"  # on a model version: the trial's run (a version is registered once)


class DczModel:
    """What ``mlflow.pyfunc.load_model`` wraps: the decoded network, in eval mode on the CPU."""

    def __init__(self, network: Any) -> None:
        self.network = network.eval()

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> np.ndarray:
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.network(x).numpy()


def warm_up() -> None:
    """Import what :func:`save_model` needs (MLflow's model and schema code: seconds), and let
    MLflow build its map of installed packages, which its first ``save_model`` builds to check
    the requirements against the environment (1.4 s of CPU here, once per process)."""
    import mlflow.models
    import mlflow.pyfunc
    import mlflow.types.schema  # noqa: F401

    with contextlib.suppress(Exception):  # a private helper: if it moves, the first save pays
        from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

        warn_dependency_requirement_mismatches(_requirements())


def _requirements() -> list[str]:
    """Named, not inferred: inferring loads the model in a subprocess, seconds per trial."""
    return [f"dcsweep=={_version()}", f"torch>={_major_minor('torch')}", "numpy"]


def _load_pyfunc(data_path: str) -> DczModel:
    """MLflow's entry point for a ``loader_module``: ``data_path`` is the model's .dcz."""
    from dcsweep.compression import load_compressed

    return DczModel(load_compressed(data_path))


def save_model(dcz: Path, folder: Path) -> Path:
    """``folder`` becomes an MLflow model (MLmodel, the .dcz, signature, input example, pip
    requirements) of the compressed model ``dcz``."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from dcsweep.compression import read_header

    logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)  # not a line per trial on validating the example
    kwargs = (read_header(dcz).get("arch") or {}).get("kwargs") or {}
    shape, classes = tuple(int(n) for n in kwargs.get("input_shape", ())), int(kwargs.get("num_classes", 0))
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes))]))
    mlflow.pyfunc.save_model(
        str(folder), loader_module=__name__, data_path=str(dcz), signature=signature,
        input_example=np.zeros((1, *shape), np.float32), pip_requirements=_requirements())
    return folder


def log_model(client: Any, experiment_id: str, run_id: str, dcz: Path, tmp: Path) -> str:
    """The trial's model as an MLflow 3 logged model named ``model``, produced by the trial's run
    and linked to it as its output (so ``runs:/<run>/model`` finds it); returns its id."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    folder = save_model(dcz, tmp / ARTIFACT_PATH)
    model = client.create_logged_model(experiment_id, name=ARTIFACT_PATH, source_run_id=run_id, model_type="dcz")
    client.log_model_artifacts(model.model_id, str(folder))
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])
    shutil.rmtree(folder, ignore_errors=True)
    return str(model.model_id)


def register_front(client: Any, name: str, front: Sequence[Any], models: Mapping[str, str],
                   dense_val_accuracy: float | None) -> dict[str, int]:
    """Register each Pareto-optimal trial (``front``: Trials with run ids; ``models``: run id ->
    its logged model's id) as a version of the registered model ``name`` (once: a resumed sweep
    adds only new ones) and point the aliases at theirs; returns alias -> version."""
    if not front:
        return {}
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"The Pareto front of dcsweep sweep {name}")
    versions = {v.tags.get(RUN_TAG): int(v.version) for v in client.search_model_versions(f"name = '{name}'")}
    for t in front:
        if t.run_id in versions:
            continue
        # the source by its artifact location: a `models:/<id>` source is looked up through the
        # process's default tracking URI, not this client's store
        source = client.get_logged_model(models[t.run_id]).artifact_location
        version = client.create_model_version(name, source, run_id=t.run_id, model_id=models[t.run_id], tags={
            RUN_TAG: t.run_id, "val_accuracy": str(t.val_accuracy), "accuracy": str(t.accuracy),
            "compressed_bytes": str(t.compressed_bytes), "ratio": str(t.ratio)})
        versions[t.run_id] = int(version.version)
    chosen = choose_aliases(front, dense_val_accuracy)
    for alias, trial in chosen.items():
        client.set_registered_model_alias(name, alias, str(versions[trial.run_id]))
    return {alias: versions[trial.run_id] for alias, trial in chosen.items()}


def choose_aliases(front: Sequence[Any], dense_val_accuracy: float | None) -> dict[str, Any]:
    """alias -> trial: ``best`` the highest validation accuracy (then the smaller file), each
    ``smallest-within-X`` the smallest file whose validation accuracy is within X of the dense
    model's (then the higher accuracy); an alias no trial qualifies for is left out."""
    scored = [t for t in front if t.val_accuracy is not None]
    chosen: dict[str, Any] = {}
    if scored:
        chosen["best"] = min(scored, key=lambda t: (-t.val_accuracy, t.compressed_bytes))
    for alias, within in ALIASES.items():
        if within is None or dense_val_accuracy is None:
            continue
        pool = [t for t in scored if t.val_accuracy >= dense_val_accuracy - within - 1e-12]
        if pool:
            chosen[alias] = min(pool, key=lambda t: (t.compressed_bytes, -t.val_accuracy))
    return chosen


def _version() -> str:
    try:
        return importlib.metadata.version("dcsweep")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree (a Ray job's copy)
        return "0"


def _major_minor(package: str) -> str:
    return ".".join(importlib.metadata.version(package).split(".")[:2])
