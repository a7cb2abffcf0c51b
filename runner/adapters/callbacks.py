"""Ray Tune callbacks of the driver: MLflow logging and a concise progress line."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ray import tune

from dcsweep.runner.cycle import DIVERGED, FINAL, CycleConfig, CycleResult, Report
from dcsweep.runner.cycle.pareto import Front, label
from dcsweep.runner.cycle.results import MODEL_FILE, PLOTS_DIR, RESULT_FILE
from dcsweep.runner.sweep import lease
from dcsweep.runner.sweep.lease import LeaseLost
from dcsweep.runner.sweep.storage import StorageFull, StorageUnwritable, is_full, unwritable
from dcsweep.search_spaces import SearchSpace

from . import uploads
from .tracking import SweepTracker

log = logging.getLogger("dcsweep")


def _swept(space: SearchSpace, config: Mapping[str, Any]) -> dict[str, Any]:
    return {d.name: config.get(d.name) for d in space.swept}


# Tune pickles its callbacks into the experiment state and unpickles them on restore; ours keep
# only the sweep's name and find this driver's tracker here, so a restored sweep logs through a
# fresh MLflow client (and no client, URI or credential is pickled into the storage).
_TRACKERS: dict[str, SweepTracker] = {}
RETRY_AFTER_S = 30.0
#: Seconds a phase's metrics may wait for the trial's next MLflow call (see SweepTracker.log_phase).
HOLD_S = 2.0


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

    def _safely(self, what: str, trial: Any, call: Callable[[str], object]) -> None:
        """``call(trial_id)`` once the trial's run exists. After a failure, MLflow is left
        alone a while: each call to a server that is down costs its retries, and Tune's loop
        waits for callbacks."""
        if time.monotonic() - self.failed_at < RETRY_AFTER_S:
            self.pending = True
            return
        try:
            trial_run(self.tracker, self.space, trial.trial_id, trial.config)
            call(trial.trial_id)
        except Exception as exc:  # noqa: BLE001 - any MLflow or network failure: the storage keeps the results
            if not self.pending:
                log.warning("MLflow is unreachable (%s: %s); the sweep goes on and its results, kept in the "
                            "sweep storage, are logged at the end or by `dcsweep resume`", what,
                            str(exc).splitlines()[0][:200])
            self.pending, self.failed_at = True, time.monotonic()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely("start", trial, self.tracker.reopen)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """What was held back longer than ``HOLD_S`` goes now: a reused phase followed by
        a long computed one still shows in the UI within seconds."""
        if time.monotonic() - self.failed_at < RETRY_AFTER_S:
            return
        try:
            self.tracker.flush(HOLD_S)
        except Exception:  # noqa: BLE001 - as in _safely: the storage keeps it, sync_results logs it
            self.pending, self.failed_at = True, time.monotonic()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        report = Report.from_metrics(result)
        if report.step is not None:
            # a phase taken from the stages comes just before the trial's next, the final one
            # just before its end: each goes to MLflow with what follows, in one call
            hold = report.phase == FINAL or report.stages.get(report.phase, ("", False))[1]
            self._safely("metrics", trial, lambda tid: self.tracker.log_phase(
                tid, report.phase, report.numbers, report.stages, hold=hold, recomputed=report.recomputed,
                world_size=report.world_size))
        elif report.phase == DIVERGED:
            self._safely("divergence", trial, lambda tid: self.tracker.fail_trial(tid, report.error or ""))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if (trial.last_result or {}).get("phase") == FINAL:
            self._safely("artifacts", trial,
                         lambda tid: finish_from_checkpoint(self.tracker, tid, trial.checkpoint))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = last_failure(trial) or "trial failed (Tune kept no error text)"
        self._safely("failure", trial, lambda tid: self.tracker.fail_trial(tid, error))


def last_failure(trial: Any) -> str:
    """The text of a trial's latest failure: Tune appends each to the trial's error file under a
    ``Failure # N (occurred at ...)`` line, and keeps the file after a retry succeeds."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        return ""
    latest = text.rsplit("Failure # ", 1)[-1]
    return (latest.split("\n", 1)[1] if "\n" in latest else latest).strip()


def trial_run(tracker: SweepTracker, space: SearchSpace, trial_id: str, config: Mapping[str, Any]) -> str:
    params = {**CycleConfig.from_dict(config).to_dict(), "workers": space.workers}
    name = f"{label(_swept(space, config))} {trial_id}".strip()  # the settings first: what a table shows
    return tracker.trial_run(trial_id, params, name)


def finish_from_checkpoint(tracker: SweepTracker, trial_id: str, checkpoint: Any) -> None:
    """The final result, .dcz and plots of a trial's last checkpoint into its run."""
    if tracker.finished(trial_id):
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(checkpoint.to_directory(tmp)) if checkpoint else Path(tmp)
        result_file = folder / RESULT_FILE
        result = CycleResult.from_json(json.loads(result_file.read_text())) if result_file.is_file() else None
        tracker.finish_trial(trial_id, result, {n: folder / n for n in (MODEL_FILE, PLOTS_DIR)})


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
            report = Report.from_metrics(row)
            if report.step is not None:
                tracker.log_phase(trial_id, report.phase, report.numbers, report.stages,
                                  recomputed=report.recomputed)
        last = Report.from_metrics(metrics)
        if last.phase == DIVERGED:
            tracker.fail_trial(trial_id, last.error or "")
        elif result.error is not None:
            tracker.fail_trial(trial_id, str(result.error))
        elif last.phase == FINAL:
            finish_from_checkpoint(tracker, trial_id, result.checkpoint)


class ProgressCallback(tune.Callback):
    """A line per finished phase on stderr instead of Ray's full table: trials ended of the
    sweep's total (known from the start), an estimate of the time left, and after each trial a
    one-line summary of the front so far (on validation accuracy)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.total = space.total_trials
        self.front = Front()  # label -> (validation accuracy, bytes) of the finished trials on the front
        self.finished = 0
        self._restart()

    def _restart(self) -> None:
        """What is this driver's own: Tune pickles its callbacks with the experiment, and a
        resumed sweep's estimate must not count the time it was stopped."""
        self.start = time.monotonic()
        self.ended_before: int | None = None  # trials a resumed sweep had ended already

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._restart()

    def get_state(self) -> dict[str, Any]:
        """What Tune saves with each snapshot of the experiment and gives back on a resume: the
        front so far, so a resumed sweep's line counts every finished trial, not its own only."""
        return {"front": dict(self.front.points), "finished": self.finished}

    def set_state(self, state: dict[str, Any]) -> None:
        self.front = Front({str(k): (float(v[0]), float(v[1])) for k, v in state.get("front", {}).items()})
        self.finished = int(state.get("finished", 0))
        self._restart()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        report = Report.from_metrics(result)
        name = label(_swept(self.space, trial.config))
        if report.phase == DIVERGED:
            sys.stderr.write(f"{name}: stopped, {report.error}\n")
            return
        if report.phase == FINAL and report.val_accuracy is not None and report.compressed_bytes:
            self.finished += 1
            self.front.add(name, (report.val_accuracy, report.compressed_bytes))
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        if self.ended_before is None:  # a resumed sweep's trials ended before this driver started
            self.ended_before = done
        done += report.phase == FINAL  # this trial ends with this report
        running = sum(t.status == "RUNNING" for t in trials) - (report.phase == FINAL)
        size = f", {int(report.compressed_bytes):,} B" if report.compressed_bytes else ""
        if report.ratio is not None:
            size += f" ({report.ratio:.1f}x)"
        acc = "None" if report.accuracy is None else f"{report.accuracy:.4f}"
        if report.val_accuracy is not None:
            acc += f" (val {report.val_accuracy:.4f})"
        sys.stderr.write(f"[{done}/{self.total} done, {running} running{self.eta(done)}] {name}: {report.phase} "
                         f"accuracy {acc}{size}\n")
        if report.phase == FINAL:
            sys.stderr.write(f"  {self.front_line()}\n")
        sys.stderr.flush()

    def eta(self, done: int) -> str:
        """``, ~3m left``: this driver's time per ended trial so far, times the trials left."""
        new = done - (self.ended_before or 0)
        if new <= 0 or done >= self.total:
            return ""
        left = (time.monotonic() - self.start) / new * (self.total - done)
        return f", ~{left / 60:.0f}m left" if left >= 90 else f", ~{left:.0f}s left"

    def front_line(self) -> str:
        """The front so far in one short line: its size, its most accurate point, its smallest."""
        front = self.front.points
        if not front:
            return f"front so far: 0 of {self.finished} (val)"
        best = max(front, key=lambda n: front[n][0])
        smallest = min(front, key=lambda n: front[n][1])
        line = f"front so far: {len(front)} of {self.finished} (val); best {best} {front[best][0]:.4f}"
        if smallest != best:
            line += f"; smallest {smallest} {front[smallest][1] / 1024:.1f} KB"
        return line

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        sys.stderr.write(f"trial {trial.trial_id} ({label(_swept(self.space, trial.config))}) failed\n")


class StorageGuard(tune.Callback):
    """Stops the sweep when another driver took its lease over (see lease.py), and at the first
    sign that the storage refuses writes (its device full, read-only, or denying this user): a
    trial that failed writing to it (its error reaches the driver as text in the trial's error
    file) or the driver's own upload of Tune's state. Every trial would fail in turn otherwise,
    each after its retries, or Tune would end ``fit`` with the trials unended, as after a
    Ctrl-C. Raised from a callback, the StorageFault ends ``Tuner.fit`` with the experiment
    state as last saved whole (see uploads.py), so the trials resume once the storage takes
    writes again. ``root`` is the storage's local path (None for an object store): a trial's
    permission error counts only on a path under it."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check(trial)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if lease.LOST:
            raise LeaseLost(f"sweep {lease.LOST[-1]!r} was taken over by another driver while this one ran (its "
                            f"lease went unrenewed for {lease.STALE_S:g} s); this driver stops and leaves it to "
                            f"the other")
        if uploads.REFUSED_WRITES:
            refused = uploads.REFUSED_WRITES[-1]
            if is_full(refused):
                raise StorageFull(f"writing {refused.filename} failed: no space left on device")
            raise StorageUnwritable(unwritable(refused) or str(refused))

    def _check(self, trial: Any) -> None:
        failure = last_failure(trial)[:20000]  # the latest failure only
        if is_full(failure):
            raise StorageFull(f"trial {trial.trial_id} failed writing to the storage: no space left on device")
        refused = unwritable(failure, getattr(self, "root", None))  # one pickled by an older dcsweep has none
        if refused:
            raise StorageUnwritable(refused)


def stage_totals(results: Any) -> tuple[int, int, float]:
    """(stages computed, stages reused, trial-seconds saved) over the trials' last reports."""
    computed = reused = 0
    saved = 0.0
    for result in results:
        metrics = result.metrics or {}
        for phase, (_, was_reused) in Report.from_metrics(metrics).stages.items():
            reused, computed = reused + was_reused, computed + (not was_reused)
            saved += float(metrics.get(f"seconds_saved_{phase}") or 0.0)
    return computed, reused, saved
