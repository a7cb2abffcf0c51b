"""Readers for the data sets' real on-disk formats: MNIST's IDX files and CIFAR's batches.

They read the layouts torchvision's downloaders create (``MNIST/raw/``, ``cifar-10-batches-py/``)
and the official archives' other layouts (CIFAR's binary version), and check sizes instead of
MD5 sums, so a partial or truncated file is reported, not silently used. CIFAR's Python batches
are pickles; they are read with an unpickler that only admits numpy arrays and plain values.
"""

from __future__ import annotations

import gzip
import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np


class DataError(ValueError):
    """A data set is missing or corrupt at the path the user gave."""


def _open(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def find_file(dirs: list[Path], name: str) -> Path | None:
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format): magic 0x0800|ndim, big-endian dims."""
    data = _open(path)
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise DataError(f"{path} is not an IDX file of {ndim}-d unsigned bytes (bad magic)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {body.size} bytes for shape {dims}: truncated or corrupt")
    return body.reshape(dims)


def read_cifar_bin(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR's binary version: records of label byte(s) then 3x32x32 pixels."""
    record = label_bytes + 3072
    data = np.frombuffer(path.read_bytes(), np.uint8)
    if data.size == 0 or data.size % record:
        raise DataError(f"{path} is {data.size} bytes, not a whole number of {record}-byte CIFAR records")
    rows = data.reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_bytes - 1].astype(np.int64)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("__builtin__", "object"),
    ("builtins", "object"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise DataError(f"CIFAR batch refers to {module}.{name}, which a data file never needs")
        module = {"numpy.core.multiarray": "numpy._core.multiarray", "copy_reg": "copyreg",
                  "__builtin__": "builtins"}.get(module, module)
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:  # numpy < 2 names it numpy.core
            return getattr(importlib.import_module(module.replace("_core", "core")), name)


def read_cifar_py(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR's Python version: a pickled dict with b"data" (N x 3072) and the labels."""
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read is a corrupt file to the user
        raise DataError(f"{path} is not a readable CIFAR batch: {exc}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path} holds data of shape {data.shape} and {len(labels)} labels: corrupt")
    return data.reshape(-1, 3, 32, 32), labels
