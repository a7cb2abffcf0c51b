"""Ray Tune callbacks of the driver: MLflow logging and a concise progress line."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from dcsweep.search_spaces import SearchSpace

from .config import CycleConfig
from .pareto import label, pareto_mask
from .tracking import SweepTracker

log = logging.getLogger("dcsweep")


def _swept(space: SearchSpace, config: dict[str, Any]) -> dict[str, Any]:
    return {d.name: config.get(d.name) for d in space.swept}


class MlflowCallback(tune.Callback):
    """One child run per trial (found again by tag after a restore), metrics per phase,
    artifacts and the Pareto tags when a trial ends."""

    def __init__(self, tracker: SweepTracker, space: SearchSpace) -> None:
        self.tracker, self.space = tracker, space

    def _run(self, trial: Any) -> str:
        params = CycleConfig.from_dict(trial.config).to_dict()
        name = f"{trial.trial_id}: {label(_swept(self.space, trial.config))}".strip(": ")
        return self.tracker.trial_run(trial.trial_id, params, name)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._run(trial)
        phase = result.get("phase")
        if phase:
            numbers = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                       and (k.startswith(("accuracy", "seconds_")) or k in (
                           "sparsity", "compressed_bytes", "dense_bytes", "compression_ratio"))}
            self.tracker.log_phase(trial.trial_id, phase, numbers)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run(trial)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(trial.checkpoint.to_directory(tmp)) if trial.checkpoint else Path(tmp)
            result_file = folder / "result.json"
            result = json.loads(result_file.read_text()) if result_file.is_file() else {}
            files = {n: folder / n for n in ("model.dcz", "plots")}
            self.tracker.finish_trial(trial.trial_id, result, files)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run(trial)
        error = getattr(trial, "error_msg", None) or str(getattr(trial, "error_file", "") or "trial failed")
        self.tracker.fail_trial(trial.trial_id, error)


class ProgressCallback(tune.Callback):
    """A line per finished phase on stderr instead of Ray's full table."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.finished: dict[str, tuple[float, float]] = {}  # label -> (accuracy, bytes)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
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
