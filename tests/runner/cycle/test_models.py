"""Every registered model builds, runs on every data set shape, and names itself for .dcz."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dcsweep.compression import build_architecture
from dcsweep.runner.cycle.models import create_model, list_models

SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar": (3, 32, 32), "imagefolder-64": (3, 64, 64)}
HEAVY = {"vgg16", "alexnet", "resnet50"}  # torchvision's ImageNet models: run on two shapes only


def cases() -> list:
    out = []
    for model in list_models():
        for shape_name, shape in SHAPES.items():
            if model in HEAVY and shape_name not in ("mnist", "cifar"):
                continue
            out.append(pytest.param(model, shape, id=f"{model}-{shape_name}"))
    return out


@pytest.mark.parametrize(("name", "shape"), cases())
def test_model_forward(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = create_model(name, shape, 7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert model.dcz_arch == {"name": name, "kwargs": {"input_shape": list(shape), "num_classes": 7}}
    rebuilt = build_architecture(model.dcz_arch)  # what load_compressed uses
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    # load_compressed checks a file against the model built on the meta device first
    meta = build_architecture(model.dcz_arch, device="meta")
    assert {k: (v.shape, v.dtype) for k, v in meta.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in model.state_dict().items()}


def test_the_papers_layer_sizes() -> None:
    lenet300 = create_model("lenet300", (1, 28, 28), 10)
    assert sum(p.numel() for p in lenet300.parameters()) == 266_610  # 1070 KB in float32
    lenet5 = create_model("lenet5", (1, 28, 28), 10)
    shapes = [tuple(m.weight.shape) for m in lenet5.modules() if hasattr(m, "weight")]
    assert shapes == [(20, 1, 5, 5), (50, 20, 5, 5), (500, 800), (10, 500)]
    vgg = create_model("vgg19_bn", (3, 32, 32), 10)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in vgg.modules()) == 16


def test_unknown_model_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'vgg19'; valid models: alexnet, lenet300, .*vgg19_bn"):
        create_model("vgg19", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="input_shape must be"):
        create_model("lenet300", (28, 28), 10)


def test_a_file_the_runner_wrote_loads_from_the_compression_library_alone(tmp_path) -> None:
    """No import of dcsweep.runner needed: the runner provides its models through the
    ``dcsweep.architectures`` entry point, read when a file names one."""
    from dcsweep.compression import save_compressed

    torch.manual_seed(0)
    model = create_model("lenet5", (1, 8, 8), 10)
    save_compressed(model, tmp_path / "m.dcz")
    code = ("import sys, torch; from dcsweep.compression import load_compressed; "
            f"m = load_compressed({str(tmp_path / 'm.dcz')!r}); "
            "print(type(m).__name__, float(m(torch.ones(1, 1, 8, 8)).sum()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    name, total = done.stdout.split()
    with torch.no_grad():
        assert name == "LeNet5" and float(total) == float(model(torch.ones(1, 1, 8, 8)).sum())
