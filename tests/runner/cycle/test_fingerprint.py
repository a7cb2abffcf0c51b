"""Stage keys hold the data by its content: the same files from another folder share stages,
changed files never do."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dcsweep.runner.cycle import CycleConfig, load_dataset
from dcsweep.runner.cycle.fingerprint import fingerprint
from dcsweep.runner.cycle.stages import stage_keys

from ..helpers import write_idx, write_imagefolder, write_mnist


def _keys(dataset: str, data_root: str | None = None) -> dict[str, str]:
    cfg = CycleConfig.from_dict({"model": "lenet300", "dataset": dataset, "data_root": data_root})
    return stage_keys(cfg, None, fingerprint(load_dataset(dataset, data_root, image_size=32)))


def test_a_relative_data_root_from_two_folders_is_keyed_by_what_each_holds(tmp_path: Path, monkeypatch) -> None:
    for where in ("a", "b", "c"):
        write_mnist(tmp_path / where / "data")
    labels = tmp_path / "c" / "data" / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    changed = (__import__("numpy").arange(60) % 10)
    changed[0] = 9  # one image relabelled
    write_idx(labels, changed)
    seen = {}
    for where in ("a", "b", "c"):
        monkeypatch.chdir(tmp_path / where)
        seen[where] = _keys("mnist", "data")  # the same text, "data", in every folder
    assert seen["a"] == seen["b"]  # the same files: the same stages
    assert all(seen["c"][p] != seen["a"][p] for p in seen["a"])  # other labels: never another's stages


def test_an_image_folder_is_keyed_by_its_manifest(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "one")
    shutil.copytree(tmp_path / "one", tmp_path / "two")  # copytree keeps modification times
    assert _keys(f"imagefolder:{tmp_path / 'one'}") == _keys(f"imagefolder:{tmp_path / 'two'}")
    before = _keys(f"imagefolder:{tmp_path / 'two'}")
    (tmp_path / "two" / "train" / "class0" / "img0.png").rename(tmp_path / "two" / "train" / "class1" / "moved.png")
    assert _keys(f"imagefolder:{tmp_path / 'two'}")["dense"] != before["dense"]  # one image relabelled


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_in_memory_sets_are_keyed_by_their_arrays(name: str) -> None:
    data = load_dataset(name)
    first = fingerprint(data)
    assert fingerprint(load_dataset(name)) == first
    data.train.labels[0] = (data.train.labels[0] + 1) % 10
    assert fingerprint(data) != first
