"""The sweep storage: a local or shared path, or an object store (``s3://``, ``gs://``) reached
through pyarrow's filesystems, as Ray Tune reaches it.

Only small files go through here (the space, sweep.json, the stages); Tune writes its own
experiment and checkpoints to ``uri(...)``. Credentials for object stores come from the usual
environment (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AWS_ENDPOINT_URL`` for S3-compatible
stores) and are never written anywhere.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from dcsweep.compression._files import write_atomic
from dcsweep.runner.cycle import ConfigError

SCHEMES = ("s3", "gs", "gcs", "file")


class Storage:
    """A root (a local path or a URI) and files under it, named by relative parts."""

    def __init__(self, location: str | Path) -> None:
        text = str(location)
        scheme = text.split("://", 1)[0] if "://" in text else ""
        if scheme and scheme not in SCHEMES:
            raise ConfigError(f"--storage={text!r}: scheme {scheme!r} is not supported; use a path or one of "
                              f"{[s + '://' for s in SCHEMES]}")
        self.remote = scheme in ("s3", "gs", "gcs")
        if self.remote:
            self.root = text.rstrip("/")
            self.local: Path | None = None
        else:
            self.local = Path(text.removeprefix("file://")).expanduser().resolve()
            self.root = str(self.local)
        self._fs: Any = None

    def __str__(self) -> str:
        return self.root

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Storage) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # -- names ----------------------------------------------------------------------------
    def uri(self, *parts: str) -> str:
        """Where ``parts`` are, as Ray Tune's ``storage_path`` takes it."""
        return "/".join([self.root, *parts])

    @property
    def fs(self) -> Any:
        return self._open()[0]

    def _open(self) -> tuple[Any, str]:
        """pyarrow's filesystem for the root, and the root's path in it (opened once)."""
        if self._fs is None:
            from pyarrow import fs

            try:
                self._fs, self._base = fs.FileSystem.from_uri(self.root)
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
                raise ConfigError(f"--storage={self.root!r} cannot be opened: {str(exc).splitlines()[0]}") from None
        return self._fs, self._base

    def _remote(self, *parts: str) -> str:
        return "/".join([self._open()[1], *parts])

    # -- files ----------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        if self.local is not None:
            return self.local.joinpath(*parts).exists()
        from pyarrow import fs

        return self.fs.get_file_info(self._remote(*parts)).type != fs.FileType.NotFound

    def read_bytes(self, *parts: str) -> bytes:
        if self.local is not None:
            return self.local.joinpath(*parts).read_bytes()
        with self.fs.open_input_stream(self._remote(*parts)) as f:
            return f.read()

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode()

    def open_input(self, *parts: str) -> BinaryIO:
        """A file to read as a stream (a large model is never read whole into memory)."""
        if self.local is not None:
            return self.local.joinpath(*parts).open("rb")
        return cast(BinaryIO, self.fs.open_input_stream(self._remote(*parts)))

    def size(self, *parts: str) -> int:
        """The file's size in bytes; FileNotFoundError if it is not there."""
        if self.local is not None:
            return self.local.joinpath(*parts).stat().st_size
        from pyarrow import fs

        info = self.fs.get_file_info(self._remote(*parts))
        if info.type != fs.FileType.File:
            raise FileNotFoundError(self.uri(*parts))
        return int(info.size)

    def move(self, source: tuple[str, ...], target: tuple[str, ...]) -> None:
        """One file to another name (a rename locally; a copy and a delete on an object store)."""
        if self.local is not None:
            path = self.local.joinpath(*target)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.local.joinpath(*source), path)
        else:
            self.fs.move(self._remote(*source), self._remote(*target))

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Whole or not at all: a local file is renamed into place, an object store's put is atomic."""
        if self.local is not None:
            path = self.local.joinpath(*parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
            return
        with self.fs.open_output_stream(self._remote(*parts)) as f:
            f.write(data)

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode(), *parts)

    def remove(self, *parts: str) -> None:
        """Delete one file; FileNotFoundError if it is not there."""
        if self.local is not None:
            self.local.joinpath(*parts).unlink()
        else:
            self.fs.delete_file(self._remote(*parts))

    def remove_tree(self, *parts: str) -> None:
        """Delete a folder and everything under it."""
        if self.local is not None:
            shutil.rmtree(self.local.joinpath(*parts))
        else:
            self.fs.delete_dir(self._remote(*parts))

    def folders(self, *parts: str) -> list[str]:
        """Names of the folders directly under ``parts`` (none if it does not exist)."""
        return self._entries(parts, folders=True)

    def files(self, *parts: str) -> list[str]:
        """Names of the files directly under ``parts`` (none if it does not exist)."""
        return self._entries(parts, folders=False)

    def _entries(self, parts: tuple[str, ...], folders: bool) -> list[str]:
        if self.local is not None:
            base = self.local.joinpath(*parts)
            try:
                return sorted(p.name for p in base.iterdir() if p.is_dir() == folders)
            except (FileNotFoundError, NotADirectoryError):  # none, or removed while we looked
                return []
        from pyarrow import fs

        infos = self.fs.get_file_info(fs.FileSelector(self._remote(*parts), allow_not_found=True))
        kind = fs.FileType.Directory if folders else fs.FileType.File
        return sorted(Path(i.path).name for i in infos if i.type == kind)

    def check_writable(self) -> None:
        """Write and delete a probe file; ConfigError (exit 2) when that fails."""
        name = f".probe-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            self.write_bytes(b"", name)  # at the root: a refused sweep leaves no folder behind
            self.remove(name)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - OSError locally, pyarrow's errors remotely
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]
            raise ConfigError(f"storage {self.root} is not writable: {reason}") from None


# -- a full or unwritable device ----------------------------------------------------------------

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
#: A device that turned read-only (a remount after an I/O error, a snapshot mounted over it) or
#: a folder whose rights changed under the sweep. EROFS only ever comes from a write; EACCES and
#: EPERM count only on a path inside the storage (a trial may also be denied its data root).
UNWRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
#: How a full device reads in an error's text (a trial's error reaches the driver as text).
FULL_TEXT = re.compile(r"\[Errno (?:28|122)\]|No space left on device|Disk quota exceeded")
#: An unwritable path in an error's text: Python's ``[Errno 13] Permission denied: '/path'``, or
#: pyarrow's ``[Errno 30] Cannot create directory '/path'. Detail: [errno 30] Read-only file
#: system`` (the path is optional: not every error gives it).
UNWRITABLE_TEXT = re.compile(r"\[Errno (30|13|1)\] ([A-Za-z][^:'\n]*?):? ?(?:'([^'\n]+)')?"
                             r"(?:\. Detail: \[errno \d+\] ([^\n]+))?$", re.MULTILINE)
#: The temporary name a file is copied to before it is renamed over its target (see uploads.py).
TEMPORARY = re.compile(r"/\.([^/]+)\.[0-9a-f]{8}\.part$")


class StorageFault(OSError):
    """The sweep storage refuses a write: its device is full, read-only, or denies this user."""


class StorageFull(StorageFault):
    """The device holding the sweep storage is full (or the user's quota is spent)."""


class StorageUnwritable(StorageFault):
    """The sweep storage became read-only or denies this user a write."""


def is_full(error: BaseException | str | None) -> bool:
    """Whether ``error`` (an exception with its causes, or an error's text) is a full device."""
    if isinstance(error, str):
        return bool(FULL_TEXT.search(error))
    return any(isinstance(e, StorageFull) or (isinstance(e, OSError) and e.errno in FULL_ERRNOS)
               or FULL_TEXT.search(str(e)) for e in _chain(error))


def unwritable(error: BaseException | str | None, root: str | None = None) -> str | None:
    """The OS error (``[Errno 30] Read-only file system: '/path'``) when ``error`` (an exception
    with its causes, or an error's text) is a refused write: any EROFS, and an EACCES or EPERM on
    a path under the local storage ``root`` (any path when ``root`` is None). Else None."""
    if isinstance(error, str):
        for match in UNWRITABLE_TEXT.finditer(error):
            code, path, detail = int(match[1]), match[3], match[4]
            reason, doing = (detail.strip(), match[2].strip()) if detail else (match[2].strip(), "")
            path = path and TEMPORARY.sub(r"/\1", path)  # the file, not the name it was copied to first
            if _refused(code, path, root):
                return (f"[Errno {code}] {reason}" + (f": {path!r}" if path else "")
                        + (f" ({doing[0].lower()}{doing[1:]})" if doing else ""))
        return None
    for e in _chain(error):
        if isinstance(e, StorageUnwritable):
            return str(e)
        if isinstance(e, OSError) and e.errno in UNWRITABLE_ERRNOS and _refused(e.errno, e.filename, root):
            return f"[Errno {e.errno}] {e.strerror}" + (f": {str(e.filename)!r}" if e.filename else "")
        if text := unwritable(str(e), root):  # wrapped as text (a Ray task's error)
            return text
    return None


def is_fault(error: BaseException | str | None, root: str | None = None) -> bool:
    """Whether ``error`` is the storage refusing a write: full, read-only or denied."""
    return is_full(error) or unwritable(error, root) is not None


def _refused(code: int, path: Any, root: str | None) -> bool:
    if code == errno.EROFS:
        return True
    if code not in UNWRITABLE_ERRNOS:
        return False
    return root is None or (path is not None and (str(path) == root or str(path).startswith(root.rstrip("/") + "/")))


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and its causes and contexts, each once."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def storage_full(storage: Storage, name: str) -> StorageFull:
    """The one-line error of a sweep stopped by a full storage device, naming the device."""
    return StorageFull(f"no space left on the device of the sweep storage {storage}: "
                       f"{describe_device(storage)}. The sweep stopped; what it saved before is intact. "
                       f"Free space there, then `dcsweep resume {name}`")


def storage_unwritable(storage: Storage, name: str, cause: str) -> StorageUnwritable:
    """The one-line error of a sweep stopped by a storage that refused a write, naming the
    path and the OS error (``cause``, from :func:`unwritable`)."""
    return StorageUnwritable(f"the sweep storage {storage} refused a write: {cause}. The sweep stopped; what it "
                             f"saved before is intact. Make the storage writable again, then "
                             f"`dcsweep resume {name}`")


def describe_device(storage: Storage) -> str:
    if storage.local is None:
        return "an object store (its quota is spent)"
    path = storage.local
    while not path.exists() and path != path.parent:
        path = path.parent
    mount, device, kind = _mount_of(path)
    try:
        usage = shutil.disk_usage(path)
        space = f"{_size(usage.free)} free of {_size(usage.total)}"
    except OSError:
        space = "its size unknown"
    return f"{device} ({kind}) mounted at {mount}, {space}"


def _mount_of(path: Path) -> tuple[str, str, str]:
    """(mount point, device, filesystem type) of the mount holding ``path``: the longest mount
    point above it in /proc/self/mounts (Linux); else the path itself."""
    best = (str(path), "the device", "unknown filesystem")
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return best
    resolved, length = str(path.resolve()), -1
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) > length:
            best, length = (point, fields[0], fields[2]), len(point)
    return best


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
