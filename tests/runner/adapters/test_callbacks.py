"""The driver's Tune callbacks, on real Tune trials. Their folders are tmp_path, not a Ray
session's: these tests start no Ray (one running here slowed the cluster tests' own start)."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest
from ray.tune.experiment import Trial

from dcsweep.runner.adapters.callbacks import ProgressCallback, last_failure
from dcsweep.runner.cycle.results import FINAL
from dcsweep.search_spaces import load_space


class _LocalTrial(Trial):
    """Tune's Trial, its driver-side folder (where it writes error.txt) under tmp_path."""

    folder = ""

    @property
    def local_path(self) -> str:
        return self.folder


def _trial(tmp_path: Path, number: int, sparsity: float) -> Trial:
    trial = _LocalTrial("trial", config={"sparsity": sparsity, "k": 4}, stub=True)
    trial.folder = str(tmp_path / f"t{number}")
    return trial


def test_a_trials_error_is_its_latest_failures_text(tmp_path: Path) -> None:
    """MLflow's `error` tag got the error file's path (Tune 2.60's Trial has no error_msg)."""
    trial = _trial(tmp_path, 0, 0.5)
    assert last_failure(trial) == ""
    Path(trial.local_path).mkdir(parents=True)  # the driver's staging folder, which Tune makes as a trial starts
    trial.handle_error(RuntimeError("the first failure"))
    trial.handle_error(RuntimeError("worker died\nafter the retry"))
    assert last_failure(trial) == "worker died\nafter the retry"


def test_progress_keeps_the_front_as_trials_finish_and_restarts_its_clock_on_resume(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    space = load_space("lenet300-digits")
    progress = ProgressCallback(space)
    trials = [_trial(tmp_path, i, s) for i, s in enumerate((0.8, 0.9, 0.95))]
    for trial, (accuracy, size) in zip(trials, [(0.95, 3000), (0.90, 4000), (0.93, 2000)], strict=True):
        progress.on_trial_result(0, trials, trial, {"phase": FINAL, "accuracy": accuracy, "val_accuracy": accuracy,
                                                    "compressed_bytes": size})
    err = capsys.readouterr().err
    assert "front so far: 1 of 2 (val); best s=0.8 k=4 0.9500" in err  # 0.9 @ 4000 B: beaten on both
    assert err.rstrip().endswith("front so far: 2 of 3 (val); best s=0.8 k=4 0.9500; smallest s=0.95 k=4 2.0 KB")
    progress.ended_before = 3
    progress.start -= 3600  # an hour of this driver's time
    resumed = pickle.loads(pickle.dumps(progress))  # as Tune restores its callbacks with the experiment
    assert resumed.front.points == progress.front.points and resumed.finished == 3
    assert resumed.ended_before is None and time.monotonic() - resumed.start < 60
    restored = ProgressCallback(space)  # and the state it saves with each snapshot, given back on a resume
    restored.set_state(progress.get_state())
    assert restored.front.points == progress.front.points and restored.finished == 3
    assert restored.front_line() == progress.front_line()  # a resume counted only its own trials
