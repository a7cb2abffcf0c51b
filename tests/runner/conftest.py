"""Writers of tiny data sets in the real on-disk formats, to exercise the loading code."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        Path(f"{path}.gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 60, n_test: int = 20, compress: bool = False) -> Path:
    """The layout torchvision's MNIST download leaves: ROOT/MNIST/raw/*-ubyte."""
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 50, (n, 28, 28))
        images[np.arange(n), labels * 2 + 3, 5:20] = 255  # a learnable stroke per class
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return root


def cifar_arrays(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 60, (n, 3, 32, 32)).astype(np.uint8)
    for i, label in enumerate(labels):  # a learnable bar per class
        images[i, label % 3, :, : 3 + label % 20] = 250
    return images, labels


def write_cifar_bin(root: Path, classes: int = 10, n: int = 10) -> Path:
    """CIFAR's binary version: cifar-10-batches-bin/data_batch_N.bin (cifar-100-binary/*.bin)."""
    if classes == 10:
        folder, files = root / "cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    else:
        folder, files = root / "cifar-100-binary", ["train.bin", "test.bin"]
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(files):
        images, labels = cifar_arrays(n, classes, i)
        label_bytes = labels[:, None] if classes == 10 else np.stack((labels // 5, labels), 1)
        records = np.concatenate((label_bytes.astype(np.uint8), images.reshape(n, -1)), axis=1)
        (folder / name).write_bytes(records.tobytes())
    return root


def write_cifar_py(root: Path, classes: int = 10, n: int = 10) -> Path:
    """CIFAR's Python version: pickled dicts with bytes keys, as the official archive has."""
    if classes == 10:
        folder, files, key = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
    else:
        folder, files, key = root / "cifar-100-python", ["train", "test"], b"fine_labels"
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(files):
        images, labels = cifar_arrays(n, classes, i)
        batch = {b"data": images.reshape(n, -1), key: labels.tolist(), b"batch_label": b"batch"}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def write_imagefolder(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{i}.png")
    return root


@pytest.fixture()
def mnist_root(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "data")


@pytest.fixture()
def cifar_root(tmp_path: Path) -> Path:
    return write_cifar_bin(tmp_path / "data")
