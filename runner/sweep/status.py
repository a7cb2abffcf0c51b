"""`dcsweep list` and `dcsweep status`: what the sweeps in a storage are doing, read from the
storage alone (no Ray, no MLflow), so it answers at once and while a sweep runs.

A sweep's state: ``running`` while a driver holds its lease; else ``finished`` when every trial
ended (finished, failed or diverged); else ``stopped`` (interrupted or killed: `dcsweep resume`
continues it). Trials come from Ray Tune's trial folders (each result.json line is one phase a
trial reported), the total from the space as run, the front from the finished trials'
validation accuracy and bytes, as the sweep marks it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dcsweep.runner.cycle.config import ConfigError
from dcsweep.runner.cycle.pareto import label, pareto_mask

from .lease import Lease
from .spec import SWEEP_FILE, saved_meta, saved_space
from .storage import Storage

RESULT, ERROR = "result.json", "error.txt"  # in each of Tune's trial folders


@dataclass(frozen=True)
class TrialState:
    label: str
    phase: str | None  # the last phase it reported; None before its first
    failed: bool
    val_accuracy: float | None = None
    compressed_bytes: int | None = None


@dataclass(frozen=True)
class SweepStatus:
    name: str
    space: str
    state: str
    created: str
    total: int
    trials: list[TrialState] = field(default_factory=list)
    driver: str | None = None  # who runs it, while it runs
    damage: str | None = None  # why its files cannot be read (state "damaged")

    @property
    def finished(self) -> list[TrialState]:
        return [t for t in self.trials if t.phase == "final" and not t.failed]

    @property
    def ended(self) -> int:
        return sum(t.phase == "final" or t.failed for t in self.trials)

    def front(self) -> list[TrialState]:
        """The finished trials no other beats on validation accuracy and bytes, smallest first."""
        scored = [t for t in self.finished if t.val_accuracy is not None and t.compressed_bytes is not None]
        mask = pareto_mask([t.val_accuracy or 0.0 for t in scored], [t.compressed_bytes or 0 for t in scored])
        return sorted((t for t, keep in zip(scored, mask, strict=True) if keep), key=lambda t: t.compressed_bytes or 0)

    def to_json(self, trials: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "space": self.space, "state": self.state, "created": self.created,
            "trials_total": self.total, "trials_ended": self.ended, "trials_finished": len(self.finished),
            "trials_failed": sum(t.failed for t in self.trials),
            "trials_running": sum(t.phase != "final" and not t.failed for t in self.trials),
            "front_size": len(self.front()), "driver": self.driver}
        if self.damage is not None:
            out["damage"] = self.damage
        if trials:
            out["front"] = [{"label": t.label, "val_accuracy": t.val_accuracy, "compressed_bytes": t.compressed_bytes}
                            for t in self.front()]
            out["trials"] = [{"label": t.label, "phase": t.phase, "failed": t.failed} for t in self.trials]
        return out


def list_sweeps(storage: Storage) -> list[SweepStatus]:
    """Every sweep in ``storage``, oldest first; one whose files cannot be read is listed as
    ``damaged``, with the reason, and hides none of the others."""
    names = [n for n in storage.folders("sweeps") if storage.exists("sweeps", n, SWEEP_FILE)]
    return sorted((_listed(storage, n) for n in names), key=lambda s: (s.created, s.name))


def _listed(storage: Storage, name: str) -> SweepStatus:
    try:
        return sweep_status(storage, name)
    except ConfigError as exc:
        return SweepStatus(name, "?", "damaged", "", 0, damage=str(exc))


def sweep_status(storage: Storage, name: str) -> SweepStatus:
    """One sweep's status; ConfigError naming the sweeps there when ``name`` is not one."""
    space = saved_space(storage, name)  # checked against its digest, as a resume does
    meta = saved_meta(storage, name)
    swept = tuple(d.name for d in space.swept)
    trials = [_trial(storage, ("sweeps", name, "tune", folder), swept, space.max_failures)
              for folder in sorted(storage.folders("sweeps", name, "tune")) if folder.startswith("trial_")]
    holders = Lease(storage, name).others()
    driver = holders[min(holders)].describe() if holders else None
    ended = sum(t.phase == "final" or t.failed for t in trials)
    state = "running" if driver else "finished" if ended >= space.total_trials else "stopped"
    return SweepStatus(name, space.name, state, str(meta.get("created", "")), space.total_trials, trials, driver)


def _trial(storage: Storage, folder: tuple[str, ...], swept: tuple[str, ...], max_failures: int) -> TrialState:
    rows = []
    if storage.exists(*folder, RESULT):
        for line in storage.read_text(*folder, RESULT).splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short while being written
                continue
    last = rows[-1] if rows else {}
    config = last.get("config") or {}
    failed = last.get("phase") == "diverged" or (last.get("phase") != "final" and _failures(storage, folder)
                                                 > max_failures)
    size = last.get("compressed_bytes")
    return TrialState(label({k: config.get(k) for k in swept}) or folder[-1], last.get("phase"), failed,
                      last.get("val_accuracy"), int(size) if isinstance(size, (int, float)) else None)


def _failures(storage: Storage, folder: tuple[str, ...]) -> int:
    """How often a trial failed: Tune appends each failure to its error file, and keeps the file
    when a retry then runs or succeeds; it gives up after ``max_failures`` retries."""
    if not storage.exists(*folder, ERROR):
        return 0
    return sum(line.startswith("Failure # ") for line in storage.read_text(*folder, ERROR).splitlines())
