"""Fixtures of the runner's tests: tiny data sets in the real on-disk formats."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import free_port, mlflow_server_command, served, write_cifar_bin, write_mnist


@pytest.fixture()
def mnist_root(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "data")


@pytest.fixture()
def cifar_root(tmp_path: Path) -> Path:
    return write_cifar_bin(tmp_path / "data")


@pytest.fixture()
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real `mlflow server` on 127.0.0.1 (its URL, and the folder of its artifacts), started
    and ended (its whole process group) here."""
    port = free_port()
    with served(mlflow_server_command(tmp_path, port), port) as url:
        yield url, tmp_path / "server-artifacts"
