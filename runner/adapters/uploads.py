"""Ray Tune's uploads into a sweep storage on a filesystem, made whole-or-nothing.

Tune (2.60) saves its experiment state, searcher state and each trial's checkpoints in a local
staging folder, then copies them into the storage with pyarrow's ``copy_files``, which truncates
the target before writing it: a full disk left a 0-byte ``basic-variant-state-*.json`` behind,
and the sweep could not be resumed even after space was freed. Here each file is copied to a
temporary name beside its target and renamed over it, so the storage keeps the last whole copy
of every file. Object stores need none of this: a put is atomic. The copies that failed
because the device is full are remembered, so the driver stops the sweep at once (see
callbacks.py) instead of letting every trial fail in turn.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Any

from dcsweep.runner.sweep.storage import is_full

#: Destinations of copies that failed on a full device, in this process.
FULL_WRITES: list[str] = []
_ORIGINAL = "_dcsweep_original_copy_files"
_ORIGINAL_DELETE = "_dcsweep_original_delete_fs_path"


def make_uploads_atomic() -> None:
    """Patch ``ray.train._internal.storage._pyarrow_fs_copy_files`` and the checkpoint manager's
    ``_delete_fs_path`` (idempotent). Called by the driver before Tune starts and by each trial's
    worker before it reports a checkpoint."""
    from ray.train._internal import checkpoint_manager, storage

    if hasattr(storage, _ORIGINAL):
        return
    setattr(storage, _ORIGINAL, storage._pyarrow_fs_copy_files)
    storage._pyarrow_fs_copy_files = _copy_files
    setattr(checkpoint_manager, _ORIGINAL_DELETE, checkpoint_manager._delete_fs_path)
    checkpoint_manager._delete_fs_path = _delete_fs_path


def _delete_fs_path(fs: Any, fs_path: str) -> None:
    """Tune deletes a trial's oldest kept checkpoint when it registers a new one, and raises
    FileNotFoundError when that checkpoint is already gone: after a resume from a snapshot of
    its state older than the deletions (a full device keeps the last whole snapshot, not the
    newest), a trial that finishes then fails in the driver. Gone is deleted already."""
    from pyarrow import fs as pafs
    from ray.train._internal import checkpoint_manager

    if fs.get_file_info(fs_path).type == pafs.FileType.NotFound:
        return
    getattr(checkpoint_manager, _ORIGINAL_DELETE)(fs=fs, fs_path=fs_path)


def _copy_files(source: str, destination: str, source_filesystem: Any = None, destination_filesystem: Any = None,
                **kwargs: Any) -> Any:
    from pyarrow import fs
    from ray.train._internal import storage

    if not (isinstance(destination_filesystem, fs.LocalFileSystem)
            and isinstance(source_filesystem or fs.LocalFileSystem(), fs.LocalFileSystem)):
        return getattr(storage, _ORIGINAL)(source, destination, source_filesystem=source_filesystem,
                                           destination_filesystem=destination_filesystem, **kwargs)
    if not os.path.isdir(source):
        _copy_one(source, destination)
        return None
    for folder, _, names in os.walk(source):
        target = os.path.join(destination, os.path.relpath(folder, source))
        for name in names:
            _copy_one(os.path.join(folder, name), os.path.join(target, name))
    return None


def _copy_one(source: str, destination: str) -> None:
    """Copy to a temporary name, then rename over ``destination``: one plain copy, not a
    pyarrow ``copy_files`` (threads and all) per file. Every file is copied every time: a file
    rewritten at the same size can keep its coarse mtime, so "unchanged" cannot be told cheaply."""
    temporary = None
    try:
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        temporary = os.path.join(os.path.dirname(destination),
                                 f".{os.path.basename(destination)}.{uuid.uuid4().hex[:8]}.part")
        shutil.copyfile(source, temporary)
        os.replace(temporary, destination)
    except BaseException as exc:
        if temporary is not None:
            with contextlib.suppress(OSError):  # never created, or the device refuses even this
                os.unlink(temporary)
        if is_full(exc):
            FULL_WRITES.append(destination)
        raise
