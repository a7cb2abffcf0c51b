"""The .dcz as an MLflow model (no Ray): what MLflow's own loader returns, what the folder holds,
and which trials the registered front's aliases name."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
import torch
import yaml

from dcsweep.compression import load_compressed
from dcsweep.runner.adapters.pyfunc import ALIASES, choose_aliases, save_model
from dcsweep.runner.cycle import Trial, load_dataset, run_cycle


@pytest.fixture(scope="module")
def dcz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pyfunc") / "model.dcz"
    run_cycle({"model": "lenet300", "dataset": "digits", "epochs": 3, "prune_steps": 1, "prune_epochs": 1,
               "share_epochs": 1, "sparsity": 0.9, "k": 8}, output=path)
    return path


def test_mlflow_loads_the_dcz_as_the_decoded_network(dcz: Path, tmp_path: Path) -> None:
    folder = save_model(dcz, tmp_path / "model")
    model = mlflow.pyfunc.load_model(str(folder))
    images = next(iter(load_dataset("digits").test.batches(64, torch.device("cpu"))))[0]
    with torch.no_grad():
        expected = load_compressed(dcz).eval()(images).numpy()
    assert np.array_equal(model.predict(images.numpy()), expected)
    signature = model.metadata.signature
    assert signature.inputs.inputs[0].shape == (-1, 1, 8, 8) and signature.outputs.inputs[0].shape == (-1, 10)


def test_the_model_folder_is_the_dcz_and_a_loader_name_never_a_pickle(dcz: Path, tmp_path: Path) -> None:
    folder = save_model(dcz, tmp_path / "model")
    flavour = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavour["loader_module"] == "dcsweep.runner.adapters.pyfunc"
    assert (folder / flavour["data"]).read_bytes() == dcz.read_bytes()
    assert not [p for p in folder.rglob("*") if p.suffix in (".pkl", ".pickle", ".pt", ".pth")]
    assert "dcsweep==" in (folder / "requirements.txt").read_text()


def _trial(run: str, val: float, size: int) -> Trial:
    return Trial(run, {}, val, size, 100_000 / size, val_accuracy=val, pareto_optimal=True)


def test_aliases_name_the_best_and_the_smallest_within_a_point_and_half_a_point() -> None:
    front = [_trial("a", 0.950, 9_000), _trial("b", 0.945, 5_000), _trial("c", 0.938, 2_000),
             _trial("d", 0.900, 800)]
    # dense 0.948: within 1 pt means >= 0.938 (c, smallest); within 0.5 pt, >= 0.943 (b)
    chosen = {alias: t.run_id for alias, t in choose_aliases(front, 0.948).items()}
    assert chosen == {"best": "a", "smallest-within-1pt": "c", "smallest-within-0_5pt": "b"}
    assert set(chosen) == set(ALIASES)
    assert {a: t.run_id for a, t in choose_aliases(front, 0.99).items()} == {"best": "a"}  # none within
    assert {a: t.run_id for a, t in choose_aliases(front, None).items()} == {"best": "a"}
    assert choose_aliases([], 0.9) == {}
