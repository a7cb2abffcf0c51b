"""Data sets: bundled ones with fixed splits, official on-disk formats read from a root."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dcsweep.runner.cycle import DataError, list_datasets, load_dataset

from ..helpers import cifar_arrays, write_cifar_bin, write_cifar_py, write_idx, write_imagefolder, write_mnist

CPU = torch.device("cpu")


def first_batch(source, n: int = 8, shuffle: bool = False):
    return next(source.batches(n, CPU, torch.Generator().manual_seed(0) if shuffle else None))


@pytest.mark.parametrize(("name", "shape", "train", "val", "test"), [
    ("digits", (1, 8, 8), 1167, 130, 500), ("mnist5k", (1, 28, 28), 3600, 400, 1000)])
def test_bundled_sets(name: str, shape: tuple, train: int, val: int, test: int) -> None:
    data = load_dataset(name)
    assert data.input_shape == shape and data.num_classes == 10
    assert (len(data.train), len(data.validation), len(data.test)) == (train, val, test)
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
    assert data.input_shape == (1, 28, 28)
    assert (len(data.train), len(data.validation), len(data.test)) == (50, 10, 20)
    assert sorted(data.validation.labels.tolist()) == list(range(10))  # one of each class


@pytest.mark.parametrize("writer", [write_cifar_bin, write_cifar_py], ids=["binary", "python"])
@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_files(tmp_path: Path, writer, classes: int) -> None:
    n = 10 if classes == 10 else 200  # CIFAR-100 has one training file: two images a class give a validation split
    data = load_dataset(f"cifar{classes}", writer(tmp_path, classes, n))
    train_n = 50 if classes == 10 else 200
    assert len(data.train) + len(data.validation) == train_n and len(data.test) == n
    assert data.input_shape == (3, 32, 32)
    assert data.train.augment and not data.test.augment and not data.validation.augment
    x, _ = first_batch(data.train, shuffle=True)
    plain, _ = first_batch(data.train)
    assert x.shape == plain.shape == (8, 3, 32, 32)


def test_imagefolder(tmp_path: Path) -> None:
    data = load_dataset(f"imagefolder:{write_imagefolder(tmp_path)}", image_size=32)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 3
    assert (len(data.train), len(data.validation)) == (9, 3)  # one image of each class held out
    x, y = first_batch(data.test, 5)
    assert x.shape == (5, 3, 32, 32) and y.tolist() == [0, 0, 0, 0, 1]
    xv, yv = first_batch(data.validation, 3)
    assert sorted(yv.tolist()) == [0, 1, 2] and torch.equal(xv, first_batch(data.validation, 3)[0])  # no augment
    train_files = {data.train.dataset.dataset.samples[i][0] for i in data.train.dataset.indices}
    val_files = {data.validation.dataset.dataset.samples[i][0] for i in data.validation.dataset.indices}
    assert not train_files & val_files and len(train_files | val_files) == 12


def _rows(source) -> set[bytes]:
    return {bytes(row.numpy().tobytes()) for row in source.images}


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_the_validation_split_is_carved_from_train_and_disjoint_from_both(name: str) -> None:
    data = load_dataset(name)
    train, val, test = _rows(data.train), _rows(data.validation), _rows(data.test)
    assert not val & train and not val & test
    counts = torch.bincount(data.validation.labels, minlength=10)
    share = torch.bincount(data.train.labels, minlength=10) / len(data.train)
    assert (counts - share * len(data.validation)).abs().max() <= 1.5  # stratified
    bigger = load_dataset(name, val_fraction=0.2)
    assert abs(len(bigger.validation) - 2 * len(data.validation)) <= 10
    assert torch.equal(bigger.test.labels, data.test.labels)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 0.6])
def test_a_validation_fraction_out_of_range_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 0.5\]"):
        load_dataset("digits", val_fraction=fraction)


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


def _idx_header(shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def test_hostile_idx_files_are_refused_before_they_allocate(tmp_path: Path) -> None:
    """Found by a hostile review: each of these gave a traceback or gigabytes of memory."""
    root = write_mnist(tmp_path / "m", compress=True)
    images = root / "MNIST/raw/train-images-idx3-ubyte.gz"
    # a gzip bomb: the header says 60 images, the stream inflates to 64 MB of zeros
    images.write_bytes(gzip.compress(_idx_header((60, 28, 28)) + bytes(64 << 20)))
    with pytest.raises(DataError, match=r"inflates to more than 47056 bytes; its header declares shape \(60, 28, 28\)"):
        load_dataset("mnist", root)
    images.write_bytes(b"\x1f\x8bjunk" * 10)  # not gzip
    with pytest.raises(DataError, match=f"{images} cannot be read: "):
        load_dataset("mnist", root)
    images.write_bytes(gzip.compress(_idx_header((60, 28, 28)) + bytes(47040))[:-30])  # cut short
    with pytest.raises(DataError, match=f"{images} cannot be read: "):
        load_dataset("mnist", root)
    images.write_bytes(gzip.compress(_idx_header((1 << 31, 1 << 31, 4))))  # its product wraps int64 to 0
    with pytest.raises(DataError, match=r"declares shape \(2147483648, 2147483648, 4\), 18446744073709551616 bytes"):
        load_dataset("mnist", root)


@pytest.mark.parametrize(("train", "test", "message"), [
    ((0, 28, 28), (20, 28, 28), "mnist's training part holds no images"),
    ((60, 28, 28), (20, 10, 10), r"mnist's test images have shape \(1, 10, 10\), its training images \(1, 28, 28\)"),
    ((60, 0, 0), (20, 0, 0), r"mnist's training images have shape \(1, 0, 0\); an image is \(channels, height"),
    ((10, 28, 28), (20, 28, 28), "leaves no validation split at val_fraction=0.1: a class needs two or more"),
])
def test_data_no_model_can_use_is_refused_before_any_training(tmp_path: Path, train: tuple, test: tuple,
                                                              message: str) -> None:
    raw = write_mnist(tmp_path) / "MNIST" / "raw"
    for prefix, shape in (("train", train), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", np.zeros(shape, dtype=np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(shape[0]) % 10)
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", tmp_path)


def test_hostile_cifar_pickles_are_refused(tmp_path: Path) -> None:
    root = write_cifar_py(tmp_path)
    batch = root / "cifar-10-batches-py" / "data_batch_2"

    class Huge:  # what numpy's _reconstruct is asked for: an array of 400,000 images, allocated unfilled
        def __reduce__(self) -> tuple:
            return (np._core.multiarray._reconstruct, (np.ndarray, (400_000, 3072), b"B"))

    batch.write_bytes(pickle.dumps({b"data": Huge(), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match=rf"{batch}: a CIFAR batch's array is built with shape \(400000, 3072\)"):
        load_dataset("cifar10", root)
    images, _ = cifar_arrays(10, 10, 0)
    batch.write_bytes(pickle.dumps({b"data": images.reshape(10, -1), b"labels": [-1] + [0] * 9}, protocol=2))
    with pytest.raises(DataError, match="cifar10 has label -1; its 10 classes are 0..9"):
        load_dataset("cifar10", root)


def test_an_unreadable_image_is_named_and_links_are_not_walked(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path)
    (root / "train" / "class0" / "loop1").symlink_to("..")  # torchvision's walk followed these forever
    (root / "train" / "class0" / "loop2").symlink_to("..")
    data = load_dataset(f"imagefolder:{root}", image_size=16)
    assert len(data.train) + len(data.validation) == 12  # 3 classes x 4 images, none counted twice
    bad = root / "train" / "class1" / "img9.png"
    bad.write_bytes((root / "train" / "class1" / "img0.png").read_bytes()[:60])  # a truncated PNG
    data = load_dataset(f"imagefolder:{root}", image_size=16)
    with pytest.raises(DataError, match=f"{bad} is not a readable image: "):
        for _ in data.train.batches(4, CPU, torch.Generator().manual_seed(0)):
            pass
        for _ in data.validation.batches(4, CPU):
            pass


def test_unknown_dataset_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'; valid datasets: cifar10, cifar100, digits"):
        load_dataset("cifar")
    assert "imagefolder:PATH" in list_datasets()


def test_cifar_augmentation_crops_and_flips(tmp_path: Path) -> None:
    data = load_dataset("cifar10", write_cifar_bin(tmp_path))
    augmented = first_batch(data.train, 40, shuffle=True)[0]
    data.train.augment = False
    plain = first_batch(data.train, 40, shuffle=True)[0]  # same order, no augmentation
    assert augmented.shape == plain.shape == (40, 3, 32, 32)
    assert not torch.equal(augmented, plain)
    # a crop of a zero-padded image: some rows or columns are all padding (the mean's negative)
    background = (0 - torch.tensor(data.train.mean).view(3, 1, 1)) / torch.tensor(data.train.std).view(3, 1, 1)
    padded_rows = (augmented == background).all(dim=(1, 3)).any(dim=1)
    assert padded_rows.float().mean() > 0.5


def test_the_validation_split_is_the_same_whatever_the_runs_seed() -> None:
    from dcsweep.runner.cycle import run as cycle_run

    splits = [cycle_run._Cycle(cycle_run.CycleConfig(seed=seed), cycle_run.CycleCallbacks(), False).data
              for seed in (0, 7)]
    assert torch.equal(splits[0].validation.images, splits[1].validation.images)
    assert torch.equal(splits[0].train.labels, splits[1].train.labels)


def test_a_synthetic_stand_in_for_imagenet_has_a_validation_split() -> None:
    """A smoke test's stand-in for an image folder has ImageNet's 1,000 classes over 256
    images: one image a class left no validation split."""
    data = load_dataset("synthetic:3x16x16:1000")
    assert data.num_classes == 1000 and len(data.validation) > 0
    assert int(data.train.labels.max()) < 1000
