"""Stages kept in the sweep storage and computed once, however many trials, nodes and sweeps
ask for them.

A stage lives in ``stages/<phase>/<key>/`` of the storage (outside Tune's per-trial folders,
so no trial's ``num_to_keep`` ever deletes it): its files (``model.dcz``;
the sensitivity table's ``sensitivity.json``, ``.csv`` and ``.png``), then ``stage.json``, written
last, which names them and marks the stage done. A process that finds no stage takes a lease
on it (``leases/`` in the same folder, as one driver holds a sweep: works on a shared filesystem
and on an object store), computes it and publishes it; the others wait for ``stage.json`` to
appear. A holder that dies leaves a lease that is provably gone (its pid, on its own host; no
renewal for 90 s, from another), and the next waiter takes the stage over.

Nothing stored is trusted: a reuse checks the record (``read_record``) and each file's size
and sha256 while copying it to a private folder, and a stage that fails is moved aside to
``<key>.damaged-<UTC time>/`` (never deleted) and computed again under its lease, once.

The dense model is a stage like the others: the first trial to need it trains it while the
others wait, their workers already started (a sweep never holds a slot back for it). A sweep
with ``share_stages: false`` shares only that one (``phases=("dense",)``); every trial then
computes its own pruned and shared models.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from dcsweep.runner.cycle.stages import (
    MAX_RECORD_BYTES,
    PHASES_KEPT,
    STAGE_FILE,
    Found,
    StageDamaged,
    StageRecord,
    read_record,
    record_json,
)

from .lease import Lease
from .storage import Storage, is_full

log = logging.getLogger("dcsweep")
ROOT = "stages"
POLL_S = (0.2, 1.0)  # a waiter looks again after a random pause in this range
DAMAGED = ".damaged-"  # a damaged stage set aside: <key>.damaged-<UTC time>/
CHUNK = 1 << 22  # bytes read at a time while a stored file is hashed
USED_BY = "used-by"  # beside stage.json: one file per sweep that made or reused the stage, its last time
ANONYMOUS = "(no sweep)"  # the user of a stage a `dcsweep compress` or `sensitivity` made or reused


class StageStore:
    """The :class:`dcsweep.runner.cycle.stages.Stages` of a sweep storage."""

    def __init__(self, storage: Storage | str, phases: Collection[str] | None = None,
                 workdir: Path | None = None, user: str | None = None) -> None:
        """``phases``: the phases whose stages are shared (default: all); the others are
        computed by every cycle and never kept. ``workdir``: where the verified copies of
        stages go (a trial's own folder, removed even when its worker is killed; default the
        system's temporary folder). ``user``: the sweep this store serves (a checked sweep
        name, so a plain file name), noted in each stage it makes or reuses."""
        self.workdir, self.user = workdir, user
        self.storage = storage if isinstance(storage, Storage) else Storage(storage)
        self.phases = None if phases is None else frozenset(phases)
        self._damage: dict[tuple[str, str], str] = {}  # (phase, key) -> why this process recomputed it

    def shares(self, phase: str) -> bool:
        return self.phases is None or phase in self.phases

    def folder(self, phase: str, key: str) -> tuple[str, ...]:
        return (ROOT, phase, key)

    def done(self, phase: str, key: str) -> bool:
        return self.storage.exists(*self.folder(phase, key), STAGE_FILE)

    @contextlib.contextmanager
    def claim(self, phase: str, key: str) -> Iterator[Found | None]:
        if not self.shares(phase):
            yield None
            return
        waited = False
        while True:
            found, damage = self._take(phase, key) if self.done(phase, key) else (None, None)
            if found is not None:
                with self._used(phase, key, found):
                    yield found
                return
            lease = Lease(self.storage, key, (*self.folder(phase, key), "leases"), what=f"{phase} stage")
            holder = lease.try_acquire()
            if holder is None:
                try:
                    found, damage = self._take(phase, key) if self.done(phase, key) else (None, None)
                    if found is not None:  # published between our look and our lease
                        with self._used(phase, key, found):
                            yield found
                        return
                    if damage is not None:
                        self._set_aside(phase, key, damage)
                    yield None
                finally:
                    lease.release()
                return
            if not waited:
                log.info("%s stage %s is being computed (%s); waiting for it", phase, key, holder.describe())
                waited = True
            time.sleep(random.uniform(*POLL_S))

    def recomputed(self, phase: str, key: str) -> str | None:
        return self._damage.get((phase, key))

    def publish(self, phase: str, key: str, folder: Path, record: StageRecord) -> None:
        """The files first, the record last: a stage without its record is not done, and is
        computed again by whoever next finds no live lease on it. The record holds each file's
        sha256 and size, taken as the file is read to be stored."""
        if not self.shares(phase):
            return
        where = self.folder(phase, key)
        files = {}
        for name in record.files:
            data = (folder / name).read_bytes()
            files[name] = (hashlib.sha256(data).hexdigest(), len(data))
            self.storage.write_bytes(data, *where, name)
        self.storage.write_text(json.dumps(record_json(record, files, _now()), indent=1), *where, STAGE_FILE)
        self._note_use(phase, key)

    def _note_use(self, phase: str, key: str) -> None:
        """The time in ``used-by/<sweep>``: one small file per sweep and no lease (the last
        writer's time is as good as any), which `dcsweep stages list` counts and `gc` reads."""
        with contextlib.suppress(OSError):  # a read-only storage still serves its stages
            self.storage.write_text(_now(), *self.folder(phase, key), USED_BY, self.user or ANONYMOUS)

    # -- checking what is stored ----------------------------------------------------------
    def verify(self, phase: str, key: str) -> StageRecord:
        """The stage's record once every check of reuse passed; StageDamaged naming the first
        that failed. Reads each file once (``dcsweep stages verify``)."""
        with self._verified(phase, key, None) as record:
            return record

    def _take(self, phase: str, key: str) -> tuple[Found | None, str | None]:
        """(the stage as a verified private copy, None), or (None, what is wrong with it)."""
        tmp = Path(tempfile.mkdtemp(prefix="dcsweep-stage-", dir=self.workdir))
        try:
            with self._verified(phase, key, tmp) as record:
                return Found(tmp, record), None
        except StageDamaged as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            return None, str(exc)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @contextlib.contextmanager
    def _verified(self, phase: str, key: str, into: Path | None) -> Iterator[StageRecord]:
        """Check the stage's record and each file's size and sha256 while copying it ``into`` a
        folder (or only reading it): one pass over each file, however large."""
        where = self.folder(phase, key)
        try:
            size = self.storage.size(*where, STAGE_FILE)
            if size > MAX_RECORD_BYTES:
                raise StageDamaged(f"{STAGE_FILE} is {size} bytes; a record is at most {MAX_RECORD_BYTES}")
            text = self.storage.read_bytes(*where, STAGE_FILE)
            record, files = read_record(text, phase, key)
            for name, (sha, size) in files.items():
                _copy_checked(self.storage, (*where, name), sha, size, None if into is None else into / name)
        except FileNotFoundError as exc:
            raise StageDamaged(f"{Path(str(exc.filename or exc)).name} is missing") from None
        except OSError as exc:
            if is_full(exc):
                raise
            raise StageDamaged(f"cannot be read: {exc.strerror or exc}") from None
        if into is not None:
            (into / STAGE_FILE).write_bytes(text)
        yield record

    def _set_aside(self, phase: str, key: str, reason: str) -> None:
        """Move the damaged stage's files (not its leases) to ``<key>.damaged-<UTC time>``, record
        first, so it is no longer done; never delete them."""
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        where, aside = self.folder(phase, key), (ROOT, phase, f"{key}{DAMAGED}{when}")
        names = self.storage.files(*where)
        for name in sorted(names, key=lambda n: n != STAGE_FILE):
            with contextlib.suppress(FileNotFoundError):
                self.storage.move((*where, name), (*aside, name))
        self._damage[(phase, key)] = reason
        log.warning("%s stage %s is damaged (%s): moved aside to %s and computed again", phase, key, reason,
                    self.storage.uri(*aside))

    @contextlib.contextmanager
    def _used(self, phase: str, key: str, found: Found) -> Iterator[None]:
        """The block that uses a verified stage; its private copy is removed afterwards. A
        verified file that still does not load (StageDamaged from the block) sets the stage
        aside, under its lease when that is free, so the next to need it computes it."""
        self._note_use(phase, key)
        try:
            yield
        except StageDamaged as exc:
            lease = Lease(self.storage, key, (*self.folder(phase, key), "leases"), what=f"{phase} stage")
            if lease.try_acquire() is None:
                try:
                    self._set_aside(phase, key, str(exc))
                finally:
                    lease.release()
            raise
        finally:
            shutil.rmtree(found.folder, ignore_errors=True)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _copy_checked(storage: Storage, parts: tuple[str, ...], sha256: str, size: int, target: Path | None) -> None:
    """Stream one stored file, hashing it (and writing it to ``target``); StageDamaged when its
    size or digest is not the record's. Reads at most ``size`` + 1 bytes."""
    digest, read = hashlib.sha256(), 0
    with storage.open_input(*parts) as source, (open(target, "wb") if target else contextlib.nullcontext()) as out:
        while chunk := source.read(min(CHUNK, size + 1 - read)):
            digest.update(chunk)
            read += len(chunk)
            if out is not None:
                out.write(chunk)
            if read > size:
                break
    name = parts[-1]
    if read != size:
        raise StageDamaged(f"{name} is {'longer' if read > size else f'{read} bytes'}; its record says {size} bytes")
    if digest.hexdigest() != sha256:
        raise StageDamaged(f"{name} is not the file its record names (sha256 {digest.hexdigest()[:12]}..., "
                           f"recorded {sha256[:12]}...)")


# -- the store as people manage it (`dcsweep stages`) -----------------------------------------

def list_stages(store: StageStore, phase: str | None = None) -> list[dict[str, Any]]:
    """Every stage folder of the store (of ``phase``), as `dcsweep stages list` shows it: its
    phase, key, model and data set, the settings that set it apart, bytes, when it was made and
    last used, by how many sweeps, whether it is being computed now (a live lease), and damaged
    folders set aside. Records
    are read, not verified (``stages verify`` reads every file)."""
    rows = []
    for each in [phase] if phase else PHASES_KEPT:
        for name in store.storage.folders(ROOT, each):
            rows.append(_row(store, each, name))
    return rows


def _row(store: StageStore, phase: str, name: str) -> dict[str, Any]:
    key, _, when = name.partition(DAMAGED)
    where = (ROOT, phase, name)
    row: dict[str, Any] = {"phase": phase, "key": key, "folder": store.storage.uri(*where), "damaged": bool(when),
                           "computing": bool(not when and Lease(store.storage, key, (*where, "leases")).others())}
    try:
        text = store.storage.read_bytes(*where, STAGE_FILE)
        record, files = read_record(text, phase, key)
    except (OSError, StageDamaged) as exc:
        row["problem"] = str(exc) if isinstance(exc, StageDamaged) else f"{STAGE_FILE} unreadable"
        return row
    row.update(model=record.about.get("model"), dataset=record.about.get("dataset"),
               data_path=record.about.get("data_path"), settings=record.about.get("settings", {}),
               accuracy=record.accuracy, val_accuracy=record.val_accuracy, seconds=record.seconds,
               bytes=sum(size for _, size in files.values()),
               created=json.loads(text).get("created"))
    used = {}
    for user in store.storage.files(*where, USED_BY)[:MAX_USERS]:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            used[user] = store.storage.read_bytes(*where, USED_BY, user)[:40].decode().strip()
    row["sweeps"] = len([u for u in used if u != ANONYMOUS])
    row["last_used"] = max(used.values(), default=None)
    return row


#: The most users read per stage: a hostile store's million files do not stall `stages list`.
MAX_USERS = 10_000


def unused_stages(store: StageStore, days: float, now: datetime.datetime | None = None) -> list[dict[str, Any]]:
    """What `dcsweep stages gc --unused-days N` removes: every damaged folder set aside, and
    every stage neither reused nor made in ``days`` days; never one under a live lease."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    out = []
    for row in list_stages(store):
        if row["computing"]:
            continue
        when = row.get("last_used") or row.get("created")
        try:
            age = (now - datetime.datetime.fromisoformat(when)).total_seconds() / 86400 if when else None
        except (TypeError, ValueError):
            age = None
        if row["damaged"] or (age is not None and age >= days):  # a record of no known age is kept
            out.append(row)
    return out


def remove_stage(store: StageStore, row: dict[str, Any]) -> None:
    name = row["key"] if not row["damaged"] else row["folder"].rsplit("/", 1)[1]
    store.storage.remove_tree(ROOT, row["phase"], name)


def verify_stages(store: StageStore) -> list[dict[str, Any]]:
    """Each stage checked as its reuse would check it (damaged folders set aside are skipped):
    ``{"phase", "key", "ok", "problem"}``."""
    out = []
    for phase in PHASES_KEPT:
        for name in store.storage.folders(ROOT, phase):
            if DAMAGED in name or not store.storage.exists(ROOT, phase, name, STAGE_FILE):
                continue  # set aside, or being computed (no record yet)
            try:
                store.verify(phase, name)
                out.append({"phase": phase, "key": name, "ok": True, "problem": None})
            except StageDamaged as exc:
                out.append({"phase": phase, "key": name, "ok": False, "problem": str(exc)})
    return out
