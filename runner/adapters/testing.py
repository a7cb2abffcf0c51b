"""Test-only fault injection in trial workers. Nothing here runs, nor is this module imported,
unless ``DCSWEEP_TEST_FAULT`` is set; a set value is validated before it is used.

``DCSWEEP_TEST_FAULT=KIND:PHASE:DIR[:KEY=VALUE]`` makes each trial (with config KEY equal to
VALUE) act right after reporting PHASE:

- ``raise`` raises once per trial, ``kill`` SIGKILLs its worker process once per trial (DIR
  keeps a marker per trial, so the retry goes through); ``always`` raises on every attempt
  (after PHASE, or after the first phase a retry that resumed past PHASE reports);
- ``diverge`` raises DivergedError, as a NaN loss would;
- ``meet`` waits (up to MEET_S) until a second trial of the same sweep has reported PHASE too,
  so two trials run at once: Tune hands a short trial to a warm worker before a cold node's
  first worker has imported torch.

While it is set, every report also carries ``node_id`` (which Ray node ran it: several test
nodes share one IP).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcsweep.runner.cycle import PHASES, DivergedError

from .env import TEST_HOOKS as FAULT_ENV

KINDS = ("raise", "kill", "always", "diverge", "meet")
MEET_S = 120.0


@dataclass(frozen=True)
class Fault:
    kind: str
    phase: str
    folder: Path
    key: str = ""
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> Fault:
        parts = text.split(":", 3)
        kind, phase, folder = (parts + ["", "", ""])[:3]
        only = parts[3] if len(parts) == 4 else None
        key, sep, value = (only or "").partition("=")
        if (kind not in KINDS or phase not in PHASES or not Path(folder).is_absolute()
                or (only is not None and not (sep and key))):
            raise ValueError(f"{FAULT_ENV}={text!r} is not allowed; it must be KIND:PHASE:DIR[:KEY=VALUE] with KIND "
                             f"one of {list(KINDS)}, PHASE one of {list(PHASES)} and DIR an absolute path")
        return cls(kind, phase, Path(folder), key, value)

    def applies(self, phase: str, config: Mapping[str, Any]) -> bool:
        # ``always`` fires at PHASE and at every phase after it: a retry resumes past PHASE's
        # checkpoint, and must fail again
        at = PHASES.index(phase) >= PHASES.index(self.phase) if self.kind == "always" else phase == self.phase
        return at and (not self.key or str(config.get(self.key)) == self.value)


def from_env() -> Fault | None:
    text = os.environ.get(FAULT_ENV)
    return Fault.parse(text) if text else None


def extra_metrics() -> dict[str, Any]:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None}


def after_report(phase: str, config: Mapping[str, Any], trial_id: str) -> None:
    """Inject the configured fault after a trial reported ``phase``."""
    fault = from_env()
    if fault is None or not fault.applies(phase, config):
        return
    marker = fault.folder / trial_id
    if fault.kind == "meet":
        _meet(marker)
        return
    if fault.kind == "diverge":
        raise DivergedError(f"{phase}: loss became nan (injected by {FAULT_ENV})")
    if fault.kind != "always":
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    if fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected fault after phase {phase!r} ({FAULT_ENV})")


def _meet(marker: Path) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    sweep = marker.name.split("_")[0]  # Tune's trial ids are "<experiment prefix>_<index>"
    deadline = time.monotonic() + MEET_S
    while len(list(marker.parent.glob(f"{sweep}_*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
