"""Ray Tune's uploads into a sweep storage on a filesystem, made whole-or-nothing.

Tune (2.60) saves its experiment state, searcher state and each trial's checkpoints in a local
staging folder, then copies them into the storage with pyarrow's ``copy_files``, which truncates
the target before writing it: a full disk left a 0-byte ``basic-variant-state-*.json`` behind,
and the sweep could not be resumed even after space was freed. Here each file is copied to a
temporary name beside its target and renamed over it, so the storage keeps the last whole copy
of every file. Object stores need none of this: a put is atomic. The copies that failed because
the device is full are remembered, so the driver stops the sweep at once (see callbacks.py)
instead of letting every trial fail in turn.
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from typing import Any

from dcsweep.runner.sweep.storage import is_full

#: Destinations of copies that failed on a full device, in this process.
FULL_WRITES: list[str] = []
_ORIGINAL = "_dcsweep_original_copy_files"


def make_uploads_atomic() -> None:
    """Patch ``ray.train._internal.storage._pyarrow_fs_copy_files`` (idempotent). Called by the
    driver before Tune starts and by each trial's worker before it reports a checkpoint."""
    from ray.train._internal import storage

    if hasattr(storage, _ORIGINAL):
        return
    setattr(storage, _ORIGINAL, storage._pyarrow_fs_copy_files)
    storage._pyarrow_fs_copy_files = _copy_files


def _copy_files(source: str, destination: str, source_filesystem: Any = None, destination_filesystem: Any = None,
                **kwargs: Any) -> Any:
    from pyarrow import fs
    from ray.train._internal import storage

    original = getattr(storage, _ORIGINAL)
    if not isinstance(destination_filesystem, fs.LocalFileSystem):
        return original(source, destination, source_filesystem=source_filesystem,
                        destination_filesystem=destination_filesystem, **kwargs)
    source_fs = source_filesystem or fs.LocalFileSystem()
    pairs = [(source, destination)]
    if source_fs.get_file_info(source).type == fs.FileType.Directory:
        infos = source_fs.get_file_info(fs.FileSelector(source, recursive=True))
        pairs = [(i.path, posixpath.join(destination, posixpath.relpath(i.path, source)))
                 for i in infos if i.type == fs.FileType.File]
    for src, dst in pairs:
        destination_filesystem.create_dir(posixpath.dirname(dst), recursive=True)
        temporary = posixpath.join(posixpath.dirname(dst), f".{posixpath.basename(dst)}.{uuid.uuid4().hex[:8]}.part")
        try:
            original(src, temporary, source_filesystem=source_fs, destination_filesystem=destination_filesystem,
                     **kwargs)
            destination_filesystem.move(temporary, dst)
        except BaseException as exc:
            with contextlib.suppress(OSError):  # never created, or the device refuses even this
                destination_filesystem.delete_file(temporary)
            if is_full(exc):
                FULL_WRITES.append(dst)
            raise
    return None
