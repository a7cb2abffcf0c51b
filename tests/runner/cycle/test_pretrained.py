"""Starts from given weights: torchvision-format state dicts (saved here from randomly initialised
torchvision models: nothing is downloaded), torchvision's cache under TORCH_HOME, and what a
data set's classes and channels leave to re-initialise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from dcsweep.runner.cycle import ConfigError, CycleCallbacks, run_cycle
from dcsweep.runner.cycle import pretrained as pretrained_module
from dcsweep.runner.cycle import run as cycle_run
from dcsweep.runner.cycle.config import CycleConfig
from dcsweep.runner.cycle.models import TORCHVISION_MODELS, meta_model
from dcsweep.runner.cycle.pretrained import load_state_, published
from dcsweep.runner.sweep.stages import StageStore

CLASSIFIER = {"alexnet": "model.classifier.6", "vgg16": "model.classifier.6", "resnet18": "model.fc",
              "resnet50": "model.fc"}
FIRST_CONV = {"alexnet": "model.features.0", "vgg16": "model.features.0", "resnet18": "model.conv1",
              "resnet50": "model.conv1"}
TINY = {"model": "resnet18", "dataset": "synthetic:3x32x32:10", "epochs": 0, "prune_steps": 1, "prune_epochs": 0,
        "share_epochs": 0, "k": 4}


def torchvision_state(name: str, device: str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in torchvision's own names and ImageNet's 1,000 classes."""
    torch.manual_seed(seed)
    with torch.device(device):
        return torchvision.models.get_model(name, weights=None).state_dict()


def test_every_torchvision_model_is_covered() -> None:
    assert set(CLASSIFIER) == set(FIRST_CONV) == set(TORCHVISION_MODELS)


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_only_the_layers_the_data_decides_are_reinitialised(name: str) -> None:
    """Checked on the meta device: shapes only, so VGG-16 costs no memory."""
    state = torchvision_state(name, "meta")
    assert load_state_(meta_model(name, (3, 32, 32), 1000), state, "w", apply=False) == []
    assert load_state_(meta_model(name, (3, 32, 32), 10), state, "w", apply=False) == [CLASSIFIER[name]]
    assert load_state_(meta_model(name, (1, 28, 28), 10), state, "w", apply=False) == sorted(
        [CLASSIFIER[name], FIRST_CONV[name]])


def test_another_architectures_weights_are_refused_listing_the_tensors() -> None:
    with pytest.raises(ConfigError, match=r"^w does not fit this model: unexpected \['layer1\.0\.bn3\.bias', .*; "
                                          r"other shapes \(file vs model\) \[layer1\.0\.conv1\.weight \(64, 64, 1, 1\) "
                                          r"vs \(64, 64, 3, 3\).*; only the classifier and the first conv may differ"):
        load_state_(meta_model("resnet18", (3, 32, 32), 10), torchvision_state("resnet50", "meta"), "w",
                    apply=False)


def test_a_torchvision_state_dict_as_dense_path_loads_all_but_the_classifier_and_trains_nothing(
        tmp_path: Path) -> None:
    state = torchvision_state("resnet18")
    path = tmp_path / "resnet18.pt"
    torch.save(state, path)

    class Epochs(CycleCallbacks):
        seen: list[str] = []

        def on_epoch(self, phase: str, epoch: int, loss: float) -> None:
            self.seen.append(phase)

    callbacks = Epochs()
    cycle = cycle_run._Cycle(CycleConfig.from_dict({**TINY, "dense_path": str(path)}), callbacks, False)
    assert cycle.result.start["reinitialised"] == ["model.fc"]
    initial_fc = cycle.model.model.fc.weight.detach().clone()
    cycle.dense(torch.Generator())
    assert callbacks.seen == []  # epochs: 0 trains nothing
    loaded = cycle.model.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert torch.equal(loaded["fc.weight"], initial_fc) and loaded["fc.weight"].shape == (10, 512)


def test_a_pretrained_start_needs_the_cached_weights_or_leave_to_download(tmp_path: Path) -> None:
    env = {"TORCH_HOME": str(tmp_path / "torch"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "dcsweep.runner.cli", "compress", "--model", "resnet18",
                           "--dataset", "synthetic:3x32x32:10", "--pretrained", "-o", str(tmp_path / "m.dcz")],
                          capture_output=True, text=True, env=env, timeout=300)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and f"ResNet18_Weights.IMAGENET1K_V1 for resnet18 at {expected}" in done.stderr
    assert "--download" in done.stderr and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in done.stderr
    assert not (tmp_path / "m.dcz").exists() and not expected.exists()


def test_a_cached_file_that_is_not_torchvisions_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    file = published("resnet18").file
    file.parent.mkdir(parents=True)
    torch.save(torchvision_state("resnet18"), file)  # the right format, not the published bytes
    with pytest.raises(ConfigError, match=r"has sha256 [0-9a-f]{12}\.\.\., not the f37072fd\.\.\. its name says"):
        run_cycle({**TINY, "pretrained": True})


def test_a_pretrained_start_is_one_dense_stage_for_every_cycle_from_the_same_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file in the cache is not torchvision's published one (nothing is downloaded here), so
    its name's digest check is turned off; the test above holds that check."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(pretrained_module, "_HASH_PREFIX", re.compile(r"(?!)"))
    file = published("resnet18").file
    file.parent.mkdir(parents=True)
    torch.save(torchvision_state("resnet18"), file)
    store = StageStore(tmp_path / "store")
    first = run_cycle({**TINY, "pretrained": True}, stages=store)
    assert first.start["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert first.start["reinitialised"] == ["model.fc"] and not first.stages["dense"]["reused"]
    # another sweep's settings that the untrained dense phase does not read: the same stage
    again = run_cycle({**TINY, "pretrained": True, "lr": 0.01, "sparsity": 0.5}, stages=store)
    assert again.stages["dense"]["reused"] and again.stages["dense"]["key"] == first.stages["dense"]["key"]
    assert again.accuracy["dense"] == first.accuracy["dense"]
