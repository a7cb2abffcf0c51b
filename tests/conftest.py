"""Shared fixtures: small real models trained briefly on scikit-learn's bundled digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.datasets import load_digits


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as float images in [0, 1], split 1,297 train / 500 test with a fixed seed."""
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x = torch.tensor(x[order] / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(y[order])
    return x[500:], y[500:], x[:500], y[:500]


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def train(model: nn.Module, data, epochs: int = 3, lr: float = 1e-2) -> nn.Module:  # noqa: ANN001
    x, y = data[0], data[1]
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(y), 64):
            loss = nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, data) -> float:  # noqa: ANN001
    with torch.no_grad():
        return float((model.eval()(data[2]).argmax(1) == data[3]).float().mean())


@pytest.fixture(scope="session")
def trained_mlp_state(digits) -> dict[str, torch.Tensor]:  # noqa: ANN001
    torch.manual_seed(0)
    return train(mlp(), digits).state_dict()


@pytest.fixture(scope="session")
def trained_convnet_state(digits) -> dict[str, torch.Tensor]:  # noqa: ANN001
    torch.manual_seed(0)
    return train(convnet(), digits, epochs=2).state_dict()


@pytest.fixture()
def trained_mlp(trained_mlp_state) -> nn.Module:  # noqa: ANN001
    model = mlp()
    model.load_state_dict(trained_mlp_state)
    return model.eval()


@pytest.fixture()
def trained_convnet(trained_convnet_state) -> nn.Module:  # noqa: ANN001
    model = convnet()
    model.load_state_dict(trained_convnet_state)
    return model.eval()


@pytest.fixture(scope="session")
def ray_local():  # noqa: ANN201
    """One local Ray instance for the whole test session: 2 CPUs, no dashboard."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             address="local")
    yield ray
    ray.shutdown()
