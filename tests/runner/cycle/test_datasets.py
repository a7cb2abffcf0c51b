"""Data sets: bundled ones with fixed splits, official on-disk formats read from a root."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from dcsweep.runner.cycle import DataError, list_datasets, load_dataset

from ..helpers import write_cifar_bin, write_cifar_py, write_imagefolder, write_mnist

CPU = torch.device("cpu")


def first_batch(source, n: int = 8, shuffle: bool = False):
    return next(source.batches(n, CPU, torch.Generator().manual_seed(0) if shuffle else None))


@pytest.mark.parametrize(("name", "shape", "train", "test"), [
    ("digits", (1, 8, 8), 1297, 500), ("mnist5k", (1, 28, 28), 4000, 1000)])
def test_bundled_sets(name: str, shape: tuple, train: int, test: int) -> None:
    data = load_dataset(name)
    assert data.input_shape == shape and data.num_classes == 10
    assert (len(data.train), len(data.test)) == (train, test)
    again = load_dataset(name)
    assert torch.equal(data.test.labels, again.test.labels)  # fixed split
    assert torch.bincount(data.test.labels).min() >= test // 10 - 3  # stratified
    x, y = first_batch(data.train, shuffle=True)
    assert x.shape == (8, *shape) and x.dtype == torch.float32 and abs(float(x.mean())) < 1.5


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_files(tmp_path: Path, name: str, folder: str, compress: bool) -> None:
    root = write_mnist(tmp_path, folder, compress=compress)
    data = load_dataset(name, root)
    assert data.input_shape == (1, 28, 28) and (len(data.train), len(data.test)) == (60, 20)
    assert data.train.labels[:3].tolist() == [0, 1, 2]


@pytest.mark.parametrize("writer", [write_cifar_bin, write_cifar_py], ids=["binary", "python"])
@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_files(tmp_path: Path, writer, classes: int) -> None:
    data = load_dataset(f"cifar{classes}", writer(tmp_path, classes))
    train_n = 50 if classes == 10 else 10
    assert (len(data.train), len(data.test)) == (train_n, 10) and data.input_shape == (3, 32, 32)
    assert data.train.augment and not data.test.augment
    x, _ = first_batch(data.train, shuffle=True)
    plain, _ = first_batch(data.train)
    assert x.shape == plain.shape == (8, 3, 32, 32)


def test_imagefolder(tmp_path: Path) -> None:
    data = load_dataset(f"imagefolder:{write_imagefolder(tmp_path)}", image_size=32)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 3 and len(data.train) == 12
    x, y = first_batch(data.test, 5)
    assert x.shape == (5, 3, 32, 32) and y.tolist() == [0, 0, 0, 0, 1]


@pytest.mark.parametrize(("name", "message"), [
    ("mnist", r"needs --data-root DIR"), ("cifar10", r"needs --data-root DIR.*--download")])
def test_missing_root(name: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(name)


def test_root_without_files_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"data root {tmp_path} has no cifar10 files"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DataError, match=f"data root {tmp_path / 'nope'} does not exist"):
        load_dataset("mnist", tmp_path / "nope")
    with pytest.raises(DataError, match="needs train/ and val/"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_corrupt_files(tmp_path: Path) -> None:
    root = write_mnist(tmp_path / "m")
    images = root / "MNIST/raw/train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("mnist", root)
    root = write_cifar_bin(tmp_path / "c")
    batch = root / "cifar-10-batches-bin/data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-1])
    with pytest.raises(DataError, match="not a whole number of 3073-byte CIFAR records"):
        load_dataset("cifar10", root)


def test_cifar_pickles_cannot_run_code(tmp_path: Path) -> None:
    root = write_cifar_py(tmp_path)

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    (root / "cifar-10-batches-py/test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="refers to builtins.print, which a data file never needs"):
        load_dataset("cifar10", root)


def test_unknown_dataset_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'; valid datasets: cifar10, cifar100, digits"):
        load_dataset("cifar")
    assert "imagefolder:PATH" in list_datasets()


def test_cifar_augmentation_crops_and_flips(tmp_path: Path) -> None:
    data = load_dataset("cifar10", write_cifar_bin(tmp_path))
    augmented = first_batch(data.train, 50, shuffle=True)[0]
    data.train.augment = False
    plain = first_batch(data.train, 50, shuffle=True)[0]  # same order, no augmentation
    assert augmented.shape == plain.shape == (50, 3, 32, 32)
    assert not torch.equal(augmented, plain)
    # a crop of a zero-padded image: some rows or columns are all padding (the mean's negative)
    background = (0 - torch.tensor(data.train.mean).view(3, 1, 1)) / torch.tensor(data.train.std).view(3, 1, 1)
    padded_rows = (augmented == background).all(dim=(1, 3)).any(dim=1)
    assert padded_rows.float().mean() > 0.5
