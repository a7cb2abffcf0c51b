"""Small real models and a plain training loop, shared by the tests of every package."""

from __future__ import annotations

import torch
import torch.nn as nn

#: Fixtures that start a sweep, Ray, a cluster or a server (seconds to minutes each): a test
#: that uses one is marked ``slow`` (conftest.py), so ``-m "not slow"`` runs none of them.
SLOW_FIXTURES = frozenset({"ray_local", "swept", "store", "cluster", "mlflow_server", "s3"})


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def train(model: nn.Module, data, epochs: int = 3, lr: float = 1e-2) -> nn.Module:
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


def accuracy(model: nn.Module, data) -> float:
    with torch.no_grad():
        return float((model.eval()(data[2]).argmax(1) == data[3]).float().mean())
