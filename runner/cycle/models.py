"""Model registry: every model adapts to the data set's input shape and class count.

``create_model(name, input_shape=(C, H, W), num_classes=N)``. The paper's LeNets, the CIFAR
networks the seed and the literature use (VGG with BatchNorm, ResNet-20/56), and torchvision's
ImageNet models by name (built without weights; ``pretrained.py`` loads torchvision's). Each model
carries ``dcz_arch`` so a .dcz file written from it can rebuild it.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from dcsweep.compression import Architecture, register_architecture

Shape = tuple[int, int, int]
Factory = Callable[[Shape, int], nn.Module]
_MODELS: dict[str, Factory] = {}
#: What a .dcz file may pass a model's builder (see dcz_arch below).
ARCH_KWARGS = ("input_shape", "num_classes")


def register_model(name: str) -> Callable[[Factory], Factory]:
    def add(fn: Factory) -> Factory:
        _MODELS[name] = fn
        register_architecture(name, functools.partial(create_model, name), kwargs=ARCH_KWARGS)
        return fn

    return add


def list_models() -> list[str]:
    return sorted(_MODELS)


def architectures() -> dict[str, Architecture]:
    """The ``dcsweep.architectures`` entry point (pyproject.toml): every model as a builder of
    the file's ``{"input_shape", "num_classes"}``, so ``dcsweep.compression.load_compressed``
    rebuilds a model this package wrote in an interpreter that never imported it."""
    return {name: Architecture(functools.partial(create_model, name), ARCH_KWARGS) for name in list_models()}


def meta_model(name: str, input_shape: Shape | list[int], num_classes: int) -> nn.Module:
    """The model built on the meta device: its structure and names without memory for its
    weights, so checking a per-layer rule against VGG-16 costs milliseconds."""
    with torch.device("meta"):
        return create_model(name, input_shape, num_classes)


def create_model(name: str, input_shape: Shape | list[int], num_classes: int) -> nn.Module:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (channels, height, width) >= 1; got {input_shape!r}")
    shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2; got {num_classes}")
    model = _MODELS[name](shape, num_classes)
    # save_compressed reads this to name the architecture in the file (a plain attribute)
    vars(model)["dcz_arch"] = {"name": name, "kwargs": {"input_shape": list(shape), "num_classes": num_classes}}
    return model


def _flat_size(features: nn.Module, shape: Shape) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *shape)).numel())


# -- the paper's LeNets -----------------------------------------------------------------------

@register_model("lenet300")
def lenet300(shape: Shape, num_classes: int) -> nn.Module:
    """LeNet-300-100: two hidden fully connected layers of 300 and 100 units."""
    c, h, w = shape
    return nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(c * h * w, 300), relu1=nn.ReLU(), fc2=nn.Linear(300, 100),
        relu2=nn.ReLU(), fc3=nn.Linear(100, num_classes)))


class LeNet5(nn.Module):
    """Caffe's LeNet-5 as the paper used it: conv20-pool-conv50-pool-fc500-fc10."""

    def __init__(self, shape: Shape, num_classes: int) -> None:
        super().__init__()
        pad = 0 if min(shape[1:]) >= 16 else 2  # small inputs (8x8 digits) keep their size
        self.features = nn.Sequential(
            nn.Conv2d(shape[0], 20, 5, padding=pad), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5, padding=pad), nn.MaxPool2d(2), nn.Flatten())
        self.fc1 = nn.Linear(_flat_size(self.features, shape), 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(self.features(x))))


@register_model("lenet5")
def lenet5(shape: Shape, num_classes: int) -> nn.Module:
    return LeNet5(shape, num_classes)


# -- CIFAR networks ---------------------------------------------------------------------------

_VGG: dict[str, list[int | str]] = {
    "vgg11_bn": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                 512, 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs (the seed's VGG19_BN): 3x3 convs, one linear head.
    Pools that would shrink the map below 1x1 (small inputs) are skipped."""

    def __init__(self, cfg: list[int | str], shape: Shape, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = shape[0], min(shape[1:])
        for v in cfg:
            if v == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
            channels = int(v)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _vgg(cfg: list[int | str]) -> Factory:
    return lambda shape, num_classes: CifarVGG(cfg, shape, num_classes)


for _name, _cfg in _VGG.items():
    register_model(_name)(_vgg(_cfg))


class _Block(nn.Module):
    """ResNet basic block with the CIFAR paper's parameter-free shortcut (option A)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, shape: Shape, num_classes: int) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(shape[0], 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            for j in range(n):
                blocks.append(_Block(cin, cout, 2 if i and not j else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


register_model("resnet20")(lambda shape, n: CifarResNet(20, shape, n))
register_model("resnet56")(lambda shape, n: CifarResNet(56, shape, n))


# -- torchvision's ImageNet models ------------------------------------------------------------

_TORCHVISION_MIN_SIZE = {"alexnet": 63, "vgg16": 32, "resnet18": 32, "resnet50": 32}
#: The models that are torchvision's architectures (its published weights fit them).
TORCHVISION_MODELS = tuple(_TORCHVISION_MIN_SIZE)


class _Resized(nn.Module):
    """Upsamples inputs smaller than the model's minimum (AlexNet needs 63 pixels)."""

    def __init__(self, model: nn.Module, min_size: int) -> None:
        super().__init__()
        self.min_size, self.model = min_size, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_size:
            x = F.interpolate(x, size=(self.min_size, self.min_size), mode="bilinear", align_corners=False)
        return self.model(x)


def torchvision_core(model: nn.Module) -> nn.Module | None:
    """The torchvision model inside one of ours (its state dict has torchvision's names), or
    None for a model that is not one."""
    return model.model if isinstance(model, _Resized) else None


def _torchvision(name: str) -> Callable[[Shape, int], nn.Module]:
    def build(shape: Shape, num_classes: int) -> nn.Module:
        import torchvision

        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        if shape[0] != 3:  # the first conv takes the data set's channels
            path, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
            parent, _, attr = path.rpartition(".")
            pair = tuple[int, int]  # a 2-d conv's sizes (torch types them as tuples of any length)
            setattr(model.get_submodule(parent), attr, nn.Conv2d(
                shape[0], conv.out_channels, cast(pair, conv.kernel_size), cast(pair, conv.stride),
                cast(pair, conv.padding), bias=conv.bias is not None))
        return _Resized(model, _TORCHVISION_MIN_SIZE[name])

    return build


for _name in _TORCHVISION_MIN_SIZE:
    register_model(_name)(_torchvision(_name))
