"""The MLflow side of a sweep against a real SQLite store: every run is read, however many."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.entities import Metric

from dcsweep.runner.adapters import tracking
from dcsweep.runner.adapters.tracking import SweepTracker, read_trials, sweep_trials
from dcsweep.runner.cycle import ConfigError


def _sweep(folder: Path, trials: int) -> SweepTracker:
    tracker = SweepTracker(f"sqlite:///{folder / 'mlflow.db'}", "paged")
    for i in range(trials):
        run = tracker.trial_run(f"t_{i}", {"sparsity": 0.5 + i / 100, "k": 4}, f"t_{i}")
        tracker.client.log_batch(run, metrics=[Metric("accuracy", 0.5 + i / 100, 0, 3),
                                               Metric("compressed_bytes", 1000 + i, 0, 3)])
        tracker.client.set_terminated(run, "FINISHED" if i % 3 else "RUNNING")
    return tracker


def test_every_run_is_read_a_page_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With pages of 3 runs, all 10 children are seen: a sweep bigger than one page (MLflow's
    10,000 then) lost part of its front."""
    monkeypatch.setattr(tracking, "PAGE_SIZE", 3)
    tracker = _sweep(tmp_path, 10)
    trials = read_trials(tracker.client, tracker.experiment_id)
    assert len(trials) == 6  # i % 3 != 0: FINISHED; the others are still RUNNING
    assert [t.pareto_optimal for t in trials] == [True] * 6  # each is bigger and better than the last
    tracker.finish()  # every child left RUNNING is marked KILLED, on every page
    statuses = [r.info.status for r in tracking.search_all(tracker.client, tracker.experiment_id,
                                                           f"tags.`{tracking.ROLE}` = 'child'")]
    assert len(statuses) == 10 and statuses.count("KILLED") == 4 and "RUNNING" not in statuses


def test_an_unknown_sweep_names_the_ones_the_store_holds(tmp_path: Path) -> None:
    _sweep(tmp_path, 1)
    with pytest.raises(ConfigError, match=r"no sweep named 'nope' in sqlite:///.*; sweeps there: \['paged'\]"):
        sweep_trials(f"sqlite:///{tmp_path / 'mlflow.db'}", "nope")
