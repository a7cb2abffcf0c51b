"""Readers for the data sets' real on-disk formats: MNIST's IDX files and CIFAR's batches.

They read the layouts torchvision's downloaders create (``MNIST/raw/``, ``cifar-10-batches-py/``)
and the official archives' other layouts (CIFAR's binary version), and check sizes instead of
MD5 sums, so a partial or truncated file is reported, not silently used. CIFAR's Python batches
are pickles; they are read with an unpickler that only admits numpy arrays and plain values.
"""

from __future__ import annotations

import gzip
import importlib
import io
import math
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

#: The most bytes one data file may hold (or inflate to): the largest official file, CIFAR-100's
#: pickled training part, is 158 MB; MNIST's training images 47 MB.
MAX_FILE_BYTES = 1 << 31


class DataError(ValueError):
    """A data set is missing or corrupt at the path the user gave."""


def _open(path: Path, limit: int = MAX_FILE_BYTES, why: str = "a data file here holds at most that") -> bytes:
    """The file's bytes, inflated if it is gzipped: at most ``limit`` of them (a gzip bomb
    stops there), and any read or gzip failure a DataError naming the file."""
    try:
        if path.suffix != ".gz":
            if path.stat().st_size > limit:
                raise DataError(f"{path} is {path.stat().st_size} bytes; a data file here holds at most {limit}")
            return path.read_bytes()
        with gzip.open(path) as f:
            data = f.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path} cannot be read: {exc}") from None
    if len(data) > limit:
        raise DataError(f"{path} inflates to more than {limit} bytes; {why}")
    return data


def _head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of the file, inflated if it is gzipped."""
    try:
        with (gzip.open(path) if path.suffix == ".gz" else path.open("rb")) as f:
            return f.read(size)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} cannot be read: {exc}") from None


def find_file(dirs: list[Path], name: str) -> Path | None:
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format): magic 0x0800|ndim, big-endian dims."""
    head = _head(path, 4 + 4 * ndim)
    if len(head) < 4 + 4 * ndim or head[:3] != b"\x00\x00\x08" or head[3] != ndim:
        raise DataError(f"{path} is not an IDX file of {ndim}-d unsigned bytes (bad magic)")
    dims = tuple(int(d) for d in np.frombuffer(head, ">u4", ndim, 4))
    size = math.prod(dims)  # Python's integers: numpy's product of four u4 can wrap to 0
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path} declares shape {dims}, {size} bytes; a data file here holds at most {MAX_FILE_BYTES}")
    data = _open(path, 4 + 4 * ndim + size, f"its header declares shape {dims}: corrupt")  # no byte more
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != size:
        raise DataError(f"{path} holds {body.size} bytes for shape {dims}: truncated or corrupt")
    return body.reshape(dims)


def read_cifar_bin(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR's binary version: records of label byte(s) then 3x32x32 pixels."""
    record = label_bytes + 3072
    data = np.frombuffer(_open(path), np.uint8)
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
            found = getattr(importlib.import_module(module), name)
        except ImportError:  # numpy < 2 names it numpy.core
            found = getattr(importlib.import_module(module.replace("_core", "core")), name)
        return _empty_reconstruct(found) if name == "_reconstruct" else found


def _empty_reconstruct(reconstruct: Any) -> Any:
    """numpy's ``_reconstruct`` for empty arrays only. numpy pickles an array as an empty one
    (shape (0,)) and then its state, whose bytes are in the file; a crafted pickle could ask
    ``_reconstruct`` itself for an array of any shape, allocated before anything is checked."""
    def guarded(subtype: Any, shape: Any, dtype: Any) -> Any:
        dims = shape if isinstance(shape, tuple) else (shape,)
        if not all(isinstance(d, int) and d >= 0 for d in dims) or math.prod(dims) != 0:
            raise DataError(f"a CIFAR batch's array is built with shape {str(shape)[:60]}; numpy builds (0,) and "
                            f"fills it from the file")
        return reconstruct(subtype, shape, dtype)

    return guarded


def read_cifar_py(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR's Python version: a pickled dict with b"data" (N x 3072) and the labels."""
    try:
        raw = _open(path)  # the array bytes are in the file: a pickle holds no more than its size
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except DataError as exc:
        raise DataError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure to read is a corrupt file to the user
        raise DataError(f"{path} is not a readable CIFAR batch: {exc}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path} holds data of shape {data.shape} and {len(labels)} labels: corrupt")
    return data.reshape(-1, 3, 32, 32), labels
