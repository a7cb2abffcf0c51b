"""One driver per sweep: a lease in the sweep storage, taken before anything is written.

The lease is a small file ``sweeps/<name>/leases/<time>-<token>.json`` naming its holder (host,
pid, the process's start time, when it started and when it last renewed). It works the same on
a local path, a shared filesystem and an object store (s3://, gs://), which offer no atomic
create-if-absent between hosts but do list what was written before:

1. leases whose holder is provably gone are removed: on this host, a pid that no longer runs
   (or now runs another process); elsewhere, a lease not renewed for ``STALE_S``;
2. a live lease left means another driver holds the sweep: refused, naming it;
3. we write our lease, then list again; if any other live lease is there, ours is withdrawn
   and we are refused. Of two drivers that start together, the later lister always sees the
   earlier one's lease, so at most one goes on (both may be refused; the next try succeeds);
4. while the sweep runs the lease is renewed every ``RENEW_S``; it is removed on exit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from dcsweep.runner.cycle import ConfigError

from .storage import Storage

log = logging.getLogger("dcsweep")
#: Sweeps whose lease this process lost while it ran (see ``Lease._renew``); the driver stops.
LOST: list[str] = []
RENEW_S = 10.0
STALE_S = 90.0  # nine missed renewals: the holder (on another host) is taken to be gone
FOLDER = "leases"


class LeaseLost(RuntimeError):
    """Another driver took over this driver's sweep while it ran: this one did not renew its
    lease for STALE_S (paused, or cut off from the storage), and two must not run one sweep."""


@dataclass(frozen=True)
class Holder:
    host: str
    boot: str  # this boot of the host: a pid is only comparable within one
    pid: int
    pid_started: str  # the process's start time (clock ticks since boot): a reused pid differs
    started: float
    renewed: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"host {self.host}, pid {self.pid}, since {when}"

    def gone(self, now: float) -> bool:
        """Provably gone: on this host and boot, its process no longer runs; elsewhere, it
        stopped renewing its lease long ago."""
        if (self.host, self.boot) == (socket.gethostname(), _boot_id()) and self.boot:
            return _process_start(self.pid) != self.pid_started
        return now - self.renewed > STALE_S


class Lease:
    """The lease of one process on one thing (a driver on a sweep: :func:`hold`; a trial on a
    stage it computes: ``stages.py``), kept in ``folder`` of the storage."""

    def __init__(self, storage: Storage, name: str, folder: tuple[str, ...] | None = None,
                 what: str = "sweep") -> None:
        self.storage, self.name, self.what = storage, name, what
        self._folder = folder if folder is not None else ("sweeps", name, FOLDER)
        self.file = f"{time.time_ns():020d}-{secrets.token_hex(4)}.json"
        now = time.time()
        self.holder = Holder(socket.gethostname(), _boot_id(), os.getpid(), _process_start(os.getpid()), now, now)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def folder(self) -> tuple[str, ...]:
        return self._folder

    def others(self) -> dict[str, Holder]:
        """Live leases of other drivers; the gone ones are removed on the way."""
        found = {}
        now = time.time()
        for file in self.storage.files(*self.folder):
            if file == self.file or not file.endswith(".json"):
                continue
            holder = self._read(file)
            if holder is None:
                continue
            if holder.gone(now):
                log.info("%s %s: taking over from a holder that is gone (%s)", self.what, self.name,
                         holder.describe())
                self._remove(file)
                continue
            found[file] = holder
        return found

    def acquire(self) -> None:
        self.refuse_if_held()
        if self.try_acquire() is not None:
            self.refuse_if_held()  # names the holder (or, gone meanwhile, lets the next try in)
            raise ConfigError(f"sweep {self.name!r} was claimed by another driver at the same moment; try again")

    def try_acquire(self) -> Holder | None:
        """Take the lease and start renewing it: None; or a live holder's record, and nothing
        taken (of two processes that try together, both may be refused)."""
        others = self.others()
        if others:
            return others[min(others)]
        self._write()
        others = self.others()
        if others:
            self._remove(self.file)
            self._tidy()
            return others[min(others)]
        self._thread = threading.Thread(target=self._renew, name="dcsweep-lease", daemon=True)
        self._thread.start()
        return None

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._remove(self.file)
        self._tidy()

    def refuse_if_held(self) -> None:
        others = self.others()
        if others:
            holder = others[min(others)]
            raise ConfigError(f"sweep {self.name!r} is being run by another driver ({holder.describe()}); one "
                              f"driver at a time: wait for it to end, or stop it and `dcsweep resume {self.name}`")

    def _tidy(self) -> None:
        """A driver refused, or failed, before its sweep wrote anything leaves no folder behind
        (object stores have none)."""
        if self.storage.local is not None and self.what == "sweep":
            root = self.storage.local
            for folder in (root.joinpath(*self.folder), root / "sweeps" / self.name, root / "sweeps"):
                with contextlib.suppress(OSError):  # not empty: the sweep is there
                    folder.rmdir()

    def _write(self) -> None:
        self.storage.write_text(json.dumps(asdict(self.holder)), *self.folder, self.file)

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            self.holder = Holder(**{**asdict(self.holder), "renewed": time.time()})
            try:
                # Renew only what is still ours. Gone means another process judged us gone and
                # took over (we were paused, or the storage was out of reach, for STALE_S):
                # writing it again would make two holders.
                if not self.storage.exists(*self.folder, self.file):
                    self._lost()
                    return
                self._write()
            except Exception:  # noqa: BLE001 - a storage hiccup: the next renewal retries
                continue

    def _lost(self) -> None:
        log.error("%s %s: lease lost: another process took it over (this one did not renew it for %g s: "
                  "paused, or cut off from the storage)%s", self.what, self.name, STALE_S,
                  "; this driver stops" if self.what == "sweep" else "; its result is published whole anyway")
        if self.what == "sweep":
            LOST.append(self.name)

    def _read(self, file: str) -> Holder | None:
        try:
            text = self.storage.read_text(*self.folder, file)
        except OSError:  # released meanwhile, or unreadable now: not ours to remove
            return None
        try:
            return Holder(**json.loads(text))
        except (ValueError, TypeError):  # not a lease: a file cut short, or something else
            log.info("%s %s: removing a damaged lease file %s", self.what, self.name, file)
            self._remove(file)
            return None

    def _remove(self, file: str) -> None:
        with contextlib.suppress(OSError):
            self.storage.remove(*self.folder, file)


@contextlib.contextmanager
def hold(storage: Storage, name: str) -> Iterator[Lease]:
    """Hold sweep ``name``'s lease for the block; ConfigError (exit 2) if another driver does."""
    lease = Lease(storage, name)
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()


def refuse_if_held(storage: Storage, name: str) -> None:
    """ConfigError naming the driver that runs sweep ``name`` now, if one does."""
    Lease(storage, name).refuse_if_held()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: pids cannot be checked, renewals decide
        return ""


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` (field 22 of /proc/PID/stat), "" if none runs."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
