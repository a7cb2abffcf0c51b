"""Ray Tune callbacks of the driver: MLflow logging and a concise progress line."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from dcsweep.search_spaces import SearchSpace

from .config import CycleConfig
from .pareto import label, pareto_mask
from .tracking import STEPS, SweepTracker

log = logging.getLogger("dcsweep")


def _swept(space: SearchSpace, config: dict[str, Any]) -> dict[str, Any]:
    return {d.name: config.get(d.name) for d in space.swept}


# Tune pickles its callbacks into the experiment state and unpickles them on restore; ours keep
# only the sweep's name and find this driver's tracker here, so a restored sweep logs through a
# fresh MLflow client (and no client, URI or credential is pickled into the storage).
_TRACKERS: dict[str, SweepTracker] = {}
RETRY_AFTER_S = 30.0


def register_tracker(tracker: SweepTracker) -> None:
    _TRACKERS[tracker.name] = tracker


class MlflowCallback(tune.Callback):
    """One child run per trial (found again by tag after a restore), metrics per phase,
    artifacts and the Pareto tags when a trial ends. MLflow being unreachable never stops the
    sweep: what was not logged is logged from the sweep storage by ``sync_results``."""

    def __init__(self, name: str, space: SearchSpace) -> None:
        self.name, self.space = name, space
        self.pending = False  # something was not logged: sync_results logs it at the end
        self.failed_at = -RETRY_AFTER_S

    @property
    def tracker(self) -> SweepTracker:
        return _TRACKERS[self.name]

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "space": self.space, "pending": False, "failed_at": -RETRY_AFTER_S}

    def _safely(self, what: str, call: Any) -> None:
        # after a failure, wait a while before calling MLflow again: each call to a server that
        # is down costs its retries, and the Tune loop waits for callbacks
        if time.monotonic() - self.failed_at < RETRY_AFTER_S:
            self.pending = True
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - any MLflow or network failure
            if not self.pending:
                log.warning("MLflow is unreachable (%s: %s); the sweep goes on and its results, kept in the "
                            "sweep storage, are logged at the end or by `dcsweep resume`", what,
                            str(exc).splitlines()[0][:200])
            self.pending, self.failed_at = True, time.monotonic()

    def _run(self, trial: Any) -> str:
        return trial_run(self.tracker, self.space, trial.trial_id, trial.config)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely("start", lambda: (self._run(trial), self.tracker.reopen(trial.trial_id)))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        phase = result.get("phase")
        if phase in STEPS:
            self._safely("metrics", lambda: (self._run(trial),
                                             self.tracker.log_phase(trial.trial_id, phase, phase_numbers(result))))
        elif phase == "diverged":
            self._safely("divergence", lambda: (self._run(trial),
                                                self.tracker.fail_trial(trial.trial_id, result.get("error", ""))))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if (trial.last_result or {}).get("phase") == "final":
            self._safely("artifacts", lambda: (self._run(trial), finish_from_checkpoint(
                self.tracker, trial.trial_id, trial.checkpoint)))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = getattr(trial, "error_msg", None) or str(getattr(trial, "error_file", "") or "trial failed")
        self._safely("failure", lambda: (self._run(trial), self.tracker.fail_trial(trial.trial_id, error)))


def trial_run(tracker: SweepTracker, space: SearchSpace, trial_id: str, config: dict[str, Any]) -> str:
    params = CycleConfig.from_dict(config).to_dict()
    name = f"{trial_id}: {label(_swept(space, config))}".strip(": ")
    return tracker.trial_run(trial_id, params, name)


def phase_numbers(result: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and v == v and (k.startswith(("accuracy", "seconds_")) or k in (
                "sparsity", "compressed_bytes", "dense_bytes", "compression_ratio"))}


def finish_from_checkpoint(tracker: SweepTracker, trial_id: str, checkpoint: Any) -> None:
    """The final result.json, model.dcz and plots of a trial's last checkpoint into its run."""
    if tracker.finished(trial_id):
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(checkpoint.to_directory(tmp)) if checkpoint else Path(tmp)
        result_file = folder / "result.json"
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
        tracker.finish_trial(trial_id, result, {n: folder / n for n in ("model.dcz", "plots")})


def sync_results(tracker: SweepTracker, space: SearchSpace, results: Any) -> None:
    """Bring MLflow level with Tune's results in the sweep storage: runs of trials whose driver
    died before logging them, phases logged while MLflow was down. Finished runs are left as
    they are; no step is logged twice."""
    for result in results:
        metrics = result.metrics or {}
        # a trial that never reported: its folder is trial_<id>_<n>_<settings>_<date>
        trial_id = metrics.get("trial_id") or "_".join(Path(result.path).name.split("_")[1:3])
        trial_run(tracker, space, trial_id, result.config)
        if tracker.finished(trial_id):
            continue
        frame = result.metrics_dataframe
        for row in [] if frame is None else frame.to_dict("records"):
            if row.get("phase") in STEPS:
                tracker.log_phase(trial_id, row["phase"], phase_numbers(row))
        if metrics.get("phase") == "diverged":
            tracker.fail_trial(trial_id, metrics.get("error", ""))
        elif result.error is not None:
            tracker.fail_trial(trial_id, str(result.error))
        elif metrics.get("phase") == "final":
            finish_from_checkpoint(tracker, trial_id, result.checkpoint)


class ProgressCallback(tune.Callback):
    """A line per finished phase on stderr instead of Ray's full table."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.finished: dict[str, tuple[float, float]] = {}  # label -> (accuracy, bytes)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("phase") == "diverged":
            sys.stderr.write(f"{label(_swept(self.space, trial.config))}: stopped, {result.get('error')}\n")
            return
        if result.get("phase") == "final" and result.get("compressed_bytes"):
            self.finished[label(_swept(self.space, trial.config))] = (result["accuracy"], result["compressed_bytes"])
        done = sum(t.status == "TERMINATED" for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        size = f", {int(result['compressed_bytes']):,} B" if result.get("compressed_bytes") else ""
        if "compression_ratio" in result:
            size += f" ({result['compression_ratio']:.1f}x)"
        acc = result.get("accuracy")
        sys.stderr.write(f"[{done}/{len(trials)} done, {running} running] {label(_swept(self.space, trial.config))}: "
                         f"{result.get('phase')} accuracy {acc if acc is None else round(acc, 4)}{size}\n")
        if result.get("phase") == "final":
            names = list(self.finished)
            optimal = pareto_mask([self.finished[n][0] for n in names], [self.finished[n][1] for n in names])
            front = sorted((self.finished[n][1], n) for n, o in zip(names, optimal, strict=True) if o)
            sys.stderr.write("  front so far: " + " | ".join(
                f"{n} {self.finished[n][0]:.4f} @ {b / 1024:.1f} KB" for b, n in front) + "\n")
        sys.stderr.flush()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        sys.stderr.write(f"trial {trial.trial_id} ({label(_swept(self.space, trial.config))}) failed\n")
