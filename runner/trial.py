"""The trial side of a sweep, in Ray's workers: the Tune trainable and the baseline task.

Everything here runs on the cluster's nodes, so it reads nothing from the driver's disk: the
dense baseline comes through Ray's object store, checkpoints through Tune's storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from .cycle import CycleCallbacks, run_cycle, train_baseline
from .train import DivergedError

# A test hook, never set in normal use: "KIND:PHASE:DIR[:KEY=VALUE]" makes each trial (with
# config KEY equal to VALUE) fail right after reporting PHASE: KIND "raise" raises once, "kill"
# SIGKILLs its worker process once (DIR keeps a marker per trial, so the retry goes through),
# "always" raises on every attempt, "diverge" raises DivergedError as a NaN loss would, "meet"
# waits (up to MEET_S) until a second trial of the same sweep has reported PHASE too, so two
# trials run at once: Tune hands a short trial to a warm worker before a cold node's starts.
FAULT_ENV = "DCSWEEP_TEST_FAULT"
MEET_S = 120.0


def baseline_task(settings: dict[str, Any]) -> tuple[bytes, tuple[float, float]]:
    """The dense baseline's .dcz bytes (through the object store, so any node can run it and
    any node's trials read it), its accuracy and the seconds of training itself."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dcsweep-baseline-") as tmp:
        accuracy = train_baseline(settings, Path(tmp) / "model.dcz")
        blob = (Path(tmp) / "model.dcz").read_bytes()
    return blob, (accuracy, time.perf_counter() - started)


class _TuneReporter(CycleCallbacks):
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_phase_end(self, phase: str, checkpoint_dir: Path | None, result: dict[str, Any]) -> None:
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(phase_metrics(phase, result), checkpoint=checkpoint)
        _maybe_fault(phase, self.config)


def _maybe_fault(phase: str, config: dict[str, Any]) -> None:
    fault = os.environ.get(FAULT_ENV)
    if not fault:
        return
    kind, when, folder, *only = fault.split(":", 3)
    key, _, value = (only[0] if only else "").partition("=")
    if when != phase or (key and str(config.get(key)) != value):
        return
    from ray import tune

    marker = Path(folder) / tune.get_context().get_trial_id()
    if kind == "meet":
        _meet(marker)
        return
    if kind == "diverge":
        raise DivergedError(f"{phase}: loss became nan (injected by {FAULT_ENV})")
    if kind != "always":
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected fault after phase {phase!r} ({FAULT_ENV})")


def _meet(marker: Path) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    sweep = marker.name.split("_")[0]  # Tune's trial ids are "<experiment prefix>_<index>"
    deadline = time.monotonic() + MEET_S
    while len(list(marker.parent.glob(f"{sweep}_*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)


def phase_metrics(phase: str, result: dict[str, Any]) -> dict[str, Any]:
    acc = result.get("accuracy", {})
    metrics: dict[str, Any] = {"phase": phase, "accuracy": acc.get("decoded", acc.get(phase))}
    metrics.update({f"accuracy_{k}": v for k, v in acc.items()})
    metrics.update({f"seconds_{k}": v for k, v in result.get("seconds", {}).items()})
    for key, name in (("sparsity", "sparsity"), ("compressed_bytes", "compressed_bytes"),
                      ("dense_bytes", "dense_bytes"), ("ratio", "compression_ratio")):
        if key in result:
            metrics[name] = result[key]
    # before the end: the size of the .dcz if the trial stopped after this phase, so every
    # result carries both objectives (Tune checks that a multi-objective searcher gets them)
    metrics.setdefault("compressed_bytes", result.get("bytes_by_phase", {}).get(phase))
    metrics["node_id"] = _node_id()  # which Ray node ran it: several nodes may share one IP
    return metrics


def _node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def trial(config: dict[str, Any], baseline: list[Any] | None = None) -> None:
    """Ray Tune trainable: one full cycle, continuing from the trial's last checkpoint.
    ``baseline`` is [key, ObjectRef of the dense .dcz bytes] when the sweep trains one."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    with contextlib.ExitStack() as stack:
        resume = Path(stack.enter_context(checkpoint.as_directory())) if checkpoint else None
        if resume is not None and (resume / "result.json").is_file():  # finished before the restart
            result = json.loads((resume / "result.json").read_text())
            tune.report(phase_metrics("final", result))
            return
        if baseline is not None:
            config = {**config, "dense_path": str(_local_baseline(*baseline))}
        out = Path(tempfile.mkdtemp(prefix="dcsweep-trial-"))
        try:
            result = run_cycle(config, output=out / "model.dcz", callbacks=_TuneReporter(config), resume_from=resume,
                               plots=out / "plots")
        except DivergedError as exc:
            # deterministic: a retry would diverge again. The trial ends here with the reason;
            # both objectives at their worst keep a multi-objective searcher away from it.
            tune.report({"phase": "diverged", "error": str(exc), "accuracy": 0.0,
                         "compressed_bytes": float("inf")})
            return
        (out / "result.json").write_text(json.dumps(result))
        tune.report(phase_metrics("final", result), checkpoint=tune.Checkpoint.from_directory(str(out)))


def _local_baseline(key: str, ref: Any) -> Path:
    """The baseline as a file on this node (waiting for the baseline task if it still runs), at
    a path fixed by its key and content: a retried trial's checkpoint names the same
    ``dense_path``, and a stale file of another sweep is never taken for it."""
    import ray

    blob = ray.get(ref)
    path = Path(tempfile.gettempdir()) / "dcsweep-baselines" / f"{key}-{hashlib.sha256(blob).hexdigest()[:16]}.dcz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")  # trials on one node may race: atomic
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    return path
