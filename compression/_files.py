"""Files written whole or not at all, with the permissions the user's umask gives any file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, flushed to disk
    and then renamed over ``path``: a reader sees the old file or the new one, never a part
    (a full disk fails the write, not the file already there).

    The temporary file is created with mode 0666 less the umask, as ``open()`` would create
    ``path`` itself; ``tempfile.mkstemp`` would leave every file 0600 whatever the umask.
    """
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # another writer's name: draw again
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
