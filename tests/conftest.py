"""Shared fixtures: small real models trained briefly on scikit-learn's bundled digits, one
local Ray instance per session, the `slow` marker kept true, and a temporary folder of the
session's own.

A test that uses a fixture of SLOW_FIXTURES (a sweep, a Ray instance, a cluster, a tracking
server) is marked ``slow`` here, whatever its module says: ``-m "not slow"`` then runs no sweep.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.datasets import load_digits

from .helpers import SLOW_FIXTURES, convnet, mlp, train


def pytest_configure(config: pytest.Config) -> None:
    """Every process the tests start (Ray's workers included, which inherit the environment)
    keeps its temporary files in a folder of this session's own, so a check of what dcsweep
    left there never sees another process's files: the suite passes beside running sweeps.
    Ray's own session folders stay where they were (RAY_TMPDIR): under a deep TMPDIR its
    socket paths would pass the 107 bytes a Unix socket allows."""
    os.environ.setdefault("RAY_TMPDIR", tempfile.gettempdir())
    os.environ["TMPDIR"] = config.stash[_TEMP] = tempfile.mkdtemp(prefix="pytest-dcsweep-")
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again


def pytest_unconfigure(config: pytest.Config) -> None:
    if _TEMP in config.stash:
        shutil.rmtree(config.stash[_TEMP], ignore_errors=True)


_TEMP = pytest.StashKey[str]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as float images in [0, 1], split 1,297 train / 500 test with a fixed seed."""
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x = torch.tensor(x[order] / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(y[order])
    return x[500:], y[500:], x[:500], y[:500]


@pytest.fixture(scope="session")
def trained_mlp_state(digits) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return train(mlp(), digits).state_dict()


@pytest.fixture(scope="session")
def trained_convnet_state(digits) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return train(convnet(), digits, epochs=2).state_dict()


@pytest.fixture()
def trained_mlp(trained_mlp_state) -> nn.Module:
    model = mlp()
    model.load_state_dict(trained_mlp_state)
    return model.eval()


@pytest.fixture()
def trained_convnet(trained_convnet_state) -> nn.Module:
    model = convnet()
    model.load_state_dict(trained_convnet_state)
    return model.eval()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole test session: 2 CPUs, no dashboard."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             address="local")
    yield ray
    ray.shutdown()
