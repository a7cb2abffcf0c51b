"""Ray Tune's uploads into a sweep storage on a filesystem, made whole-or-nothing.

Tune (2.60) saves its experiment state, searcher state and each trial's checkpoints in a local
staging folder, then copies them into the storage with pyarrow's ``copy_files``, which truncates
the target before writing it: a full disk left a 0-byte ``basic-variant-state-*.json`` behind,
and the sweep could not be resumed even after space was freed. Here each file is copied to a
temporary name beside its target and renamed over it, so the storage keeps the last whole copy
of every file. Object stores need none of this: a put is atomic. The copies that failed
because the device is full, read-only or denies this user are remembered, so the driver stops
the sweep at once (see callbacks.py) instead of letting every trial fail in turn, or Tune
ending ``fit`` with its trials unended as if the user had pressed Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from typing import Any

from dcsweep.runner.sweep import lease
from dcsweep.runner.sweep.storage import is_fault

#: The copies the storage refused in this process (full, read-only, denied), each as an OSError
#: naming its destination (not the temporary name the copy had).
REFUSED_WRITES: list[OSError] = []
#: A source file is copied again unless it is unchanged (size, inode, mtime and ctime, which
#: no one can set back) since its last copy *and* was last changed this much before that copy:
#: a file rewritten at the same size within one tick of a coarse clock keeps its times, and is
#: still copied (git's "racily clean" rule).
SETTLED_S = 2.0
#: destination -> (the source's size, inode, mtime_ns and ctime_ns when last copied there, when).
_COPIED: dict[str, tuple[tuple[int, int, int, int], float]] = {}
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

    if lease.LOST:  # another driver runs this sweep now: this one's stale state must not overwrite its
        return None
    if not (isinstance(destination_filesystem, fs.LocalFileSystem)
            and isinstance(source_filesystem or fs.LocalFileSystem(), fs.LocalFileSystem)):
        return getattr(storage, _ORIGINAL)(source, destination, source_filesystem=source_filesystem,
                                           destination_filesystem=destination_filesystem, **kwargs)
    if not os.path.isdir(source):
        _copy_all([(source, destination)])
        return None
    pairs = []
    for folder, _, names in os.walk(source):
        target = os.path.join(destination, os.path.relpath(folder, source))
        pairs += [(os.path.join(folder, name), os.path.join(target, name)) for name in names]
    _copy_all(pairs)
    return None


def _copy_all(pairs: list[tuple[str, str]]) -> None:
    """Every file to a temporary name beside its destination first, then every rename: a
    folder lands whole or not at all. Tune's experiment folder holds the trial list and the
    searcher's state in separate files; when only the searcher's newer state fitted on a full
    device, a resume found the searcher past a trial that the trial list never had, and the
    trial was lost. A rename needs no space, so once every copy fits the whole set lands.
    One plain copy per file, not a pyarrow ``copy_files`` (threads and all), and only the files
    that changed since this process last copied them (see ``SETTLED_S``): Tune uploads its whole
    experiment folder at every snapshot, and the finished trials' files in it would otherwise be
    copied again every half second, a cost that grows with the trials."""
    temporaries: list[tuple[str, str, tuple[tuple[int, int, int, int], float]]] = []
    now = time.time()
    target = ""  # the destination being written when a copy fails
    try:
        for source, destination in pairs:
            target = destination
            stat = os.stat(source)
            seen = (stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns)
            last = _COPIED.get(destination)
            if (last is not None and last[0] == seen and max(seen[2:]) / 1e9 < last[1] - SETTLED_S
                    and os.path.exists(destination)):
                continue
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            temporary = os.path.join(os.path.dirname(destination),
                                     f".{os.path.basename(destination)}.{uuid.uuid4().hex[:8]}.part")
            temporaries.append((temporary, destination, (seen, now)))
            shutil.copyfile(source, temporary)
        for temporary, destination, copied in temporaries:  # a rename needs no space, but a device
            target = destination  # turned read-only refuses it
            os.replace(temporary, destination)
            _COPIED[destination] = copied
    except BaseException as exc:
        for temporary, _, _ in temporaries:
            with contextlib.suppress(OSError):  # never created, renamed, or the device refuses even this
                os.unlink(temporary)
        if isinstance(exc, OSError) and exc.filename != source and is_fault(exc):  # not reading Tune's copy
            REFUSED_WRITES.append(OSError(exc.errno, exc.strerror, target or exc.filename))
        raise
