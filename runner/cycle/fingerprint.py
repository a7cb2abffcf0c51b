"""A data set's identity for stage keys: what it holds, not where it lies.

A stage key holds the data's fingerprint, so the same command run from another folder (a
relative ``data_root``), as another user (``~``) or on another node reuses the stages of the
same data, and data replaced in place never reuses another's.

- A set held in memory (digits, mnist5k, MNIST and CIFAR files, synthetic stand-ins): the
  digest of its arrays as loaded, images and labels of every part, with their shapes, types
  and normalisation. Any changed pixel or label re-keys.
- An image folder: the digest of its manifest: class names, and each image's path relative to
  the folder, class, size and modification time. Adding, removing, moving or relabelling an
  image, or rewriting one (its time changes), re-keys; no image is read, so an ImageNet-sized
  folder costs one ``stat`` per file. Not noticed: a file changed in place with its size and
  modification time restored by hand.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import torch

from .datasets import Data, Folder, InMemory


def fingerprint(data: Data) -> str:
    """The data set's fingerprint (hex): its train, validation and test parts as loaded."""
    digest = hashlib.sha256()
    for name, part in (("train", data.train), ("validation", data.validation), ("test", data.test)):
        digest.update(f"{name}\0".encode())
        digest.update(_part(part))
    digest.update(repr((data.input_shape, data.num_classes)).encode())
    return digest.hexdigest()[:32]


def _part(part: InMemory | Folder) -> bytes:
    if isinstance(part, InMemory):
        digest = hashlib.sha256(repr((part.mean, part.std, part.augment)).encode())
        for tensor in (part.images, part.labels):
            digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
            digest.update(_bytes(tensor))
        return digest.digest()
    return _manifest(part.dataset)


def _bytes(tensor: torch.Tensor) -> bytes | memoryview:
    array = np.ascontiguousarray(tensor.detach().cpu().numpy())
    return array.data.cast("B")  # the array's own memory: no copy of a large set


def _manifest(dataset: Any) -> bytes:
    """An image folder's part (an ImageFolder, or a Subset of one): its classes, and each of
    its images by relative path, class, size and modification time."""
    indices = None
    if isinstance(dataset, torch.utils.data.Subset):
        dataset, indices = dataset.dataset, list(dataset.indices)
    root = os.path.abspath(dataset.root)
    digest = hashlib.sha256(repr(list(dataset.classes)).encode())
    samples = dataset.samples if indices is None else [dataset.samples[i] for i in indices]
    for path, label in samples:
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.digest()
