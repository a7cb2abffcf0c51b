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

The dense model is a stage like the others: the first trial to need it trains it while the
others wait, their workers already started (a sweep never holds a slot back for it). A sweep
with ``share_stages: false`` shares only that one (``phases=("dense",)``); every trial then
computes its own pruned and shared models.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path

from dcsweep.runner.cycle.stages import STAGE_FILE, StageRecord

from .lease import Lease
from .storage import Storage

log = logging.getLogger("dcsweep")
ROOT = "stages"
POLL_S = (0.2, 1.0)  # a waiter looks again after a random pause in this range


class StageStore:
    """The :class:`dcsweep.runner.cycle.stages.Stages` of a sweep storage."""

    def __init__(self, storage: Storage | str, phases: Collection[str] | None = None) -> None:
        """``phases``: the phases whose stages are shared (default: all); the others are
        computed by every cycle and never kept."""
        self.storage = storage if isinstance(storage, Storage) else Storage(storage)
        self.phases = None if phases is None else frozenset(phases)

    def shares(self, phase: str) -> bool:
        return self.phases is None or phase in self.phases

    def folder(self, phase: str, key: str) -> tuple[str, ...]:
        return (ROOT, phase, key)

    def done(self, phase: str, key: str) -> bool:
        return self.storage.exists(*self.folder(phase, key), STAGE_FILE)

    @contextlib.contextmanager
    def claim(self, phase: str, key: str) -> Iterator[Path | None]:
        if not self.shares(phase):
            yield None
            return
        waited = False
        while True:
            if self.done(phase, key):
                with self._local_copy(phase, key) as found:
                    yield found
                return
            lease = Lease(self.storage, key, (*self.folder(phase, key), "leases"), what=f"{phase} stage")
            holder = lease.try_acquire()
            if holder is None:
                try:
                    if self.done(phase, key):  # published between our look and our lease
                        with self._local_copy(phase, key) as found:
                            yield found
                    else:
                        yield None
                finally:
                    lease.release()
                return
            if not waited:
                log.info("%s stage %s is being computed (%s); waiting for it", phase, key, holder.describe())
                waited = True
            time.sleep(random.uniform(*POLL_S))

    def publish(self, phase: str, key: str, folder: Path, record: StageRecord) -> None:
        """The model first, the record last: a stage without its record is not done, and is
        computed again by whoever next finds no live lease on it."""
        if not self.shares(phase):
            return
        where = self.folder(phase, key)
        for name in record.files:
            self.storage.write_bytes((folder / name).read_bytes(), *where, name)
        self.storage.write_text(json.dumps(record.to_json(), indent=1), *where, STAGE_FILE)

    @contextlib.contextmanager
    def _local_copy(self, phase: str, key: str) -> Iterator[Path]:
        """The stage as a local folder: itself on a filesystem, a temporary copy from an
        object store."""
        where = self.folder(phase, key)
        if self.storage.local is not None:
            yield self.storage.local.joinpath(*where)
            return
        tmp = Path(tempfile.mkdtemp(prefix="dcsweep-stage-"))
        try:
            record = self.storage.read_bytes(*where, STAGE_FILE)
            (tmp / STAGE_FILE).write_bytes(record)
            for name in StageRecord.from_json(json.loads(record)).files:
                if Path(name).name != name or name == STAGE_FILE:  # a record names files beside it only
                    raise ValueError(f"stage {phase}/{key} names file {name[:100]!r}; a stage holds plain names")
                (tmp / name).write_bytes(self.storage.read_bytes(*where, name))
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
