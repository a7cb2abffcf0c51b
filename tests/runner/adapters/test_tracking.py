"""The MLflow side of a sweep against a real SQLite store: every run is read, however many."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from dcsweep.runner.adapters import tracking
from dcsweep.runner.adapters.tracking import SweepTracker, read_trials, sweep_trials
from dcsweep.runner.cycle import ConfigError, CycleCallbacks, CycleResult, run_cycle
from dcsweep.runner.cycle import run as cycle_run
from dcsweep.runner.cycle.datasets import load_dataset
from dcsweep.runner.cycle.pareto import hypervolume
from dcsweep.runner.cycle.results import Report
from dcsweep.runner.sweep.stages import StageStore


def _sweep(folder: Path, trials: int) -> SweepTracker:
    tracker = SweepTracker(f"sqlite:///{folder / 'mlflow.db'}", "paged", (folder / "artifacts").as_uri())
    for i in range(trials):
        run = tracker.trial_run(f"t_{i}", {"sparsity": 0.5 + i / 100, "k": 4}, f"t_{i}")
        tracker.client.log_batch(run, metrics=[Metric("accuracy", 0.5 + i / 100, 0, 3),
                                               Metric("val_accuracy", 0.5 + i / 100, 0, 3),
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


def _poisoned(*args, **kwargs):
    """The data set with every test label changed (each class becomes the next one)."""
    data = load_dataset(*args, **kwargs)
    data.test.labels = (data.test.labels + 1) % data.num_classes
    return data


def _front(folder: Path, name: str) -> tuple[dict[str, bool], dict[str, float], dict[str, float]]:
    """Nine trials through the real tracker: their Pareto flags (as tagged), test and
    validation accuracy, by swept settings."""
    tracker = SweepTracker(f"sqlite:///{folder / 'mlflow.db'}", name, (folder / "artifacts").as_uri())
    store = StageStore(folder / name)
    for i, (sparsity, k) in enumerate(itertools.product((0.3, 0.6, 0.95), (2, 4, 32))):
        settings = {"sparsity": sparsity, "k": k, "epochs": 4, "prune_epochs": 1, "prune_steps": 1,
                    "share_epochs": 1}
        result = run_cycle(settings, stages=store)
        tracker.trial_run(f"t{i}", {"sparsity": sparsity, "k": k}, f"t{i}")
        tracker.log_phase(f"t{i}", "final", Report.from_metrics(result.metrics("final")).numbers)
        tracker.finish_trial(f"t{i}", result, {})
    tags = {r.data.params["sparsity"] + "/" + r.data.params["k"]: r.data.tags[tracking.PARETO_TAG] == "true"
            for r in tracking.search_all(tracker.client, tracker.experiment_id, f"tags.`{tracking.ROLE}` = 'child'")}
    trials = read_trials(tracker.client, tracker.experiment_id)
    assert tags == {f"{t.params['sparsity']}/{t.params['k']}": t.pareto_optimal for t in trials}
    return (tags, {f"{t.params['sparsity']}/{t.params['k']}": t.accuracy for t in trials},
            {f"{t.params['sparsity']}/{t.params['k']}": t.val_accuracy for t in trials})


def test_the_front_never_reads_test_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Selection reads validation data only: with every test label poisoned the trials train
    and validate the same, their test accuracy collapses, and the front is the same."""
    front, test, val = _front(tmp_path, "clean")
    monkeypatch.setattr(cycle_run, "load_dataset", _poisoned)
    poisoned_front, poisoned_test, poisoned_val = _front(tmp_path, "poisoned")
    assert poisoned_val == val and poisoned_front == front and any(front.values()) and not all(front.values())
    assert max(poisoned_test.values()) < 0.25 < 0.8 < max(test.values())


def test_the_parent_charts_hypervolume_and_front_size_per_finished_trial(tmp_path: Path) -> None:
    front, _, val = _front(tmp_path, "summary")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("summary")
    parent = next(tracking.search_all(client, exp.experiment_id, f"tags.`{tracking.ROLE}` = 'parent'"))
    sizes = client.get_metric_history(parent.info.run_id, "front_size")
    volumes = client.get_metric_history(parent.info.run_id, "hypervolume")
    assert [m.step for m in sizes] == [m.step for m in volumes] == list(range(1, 10))
    assert sizes[-1].value == sum(front.values())
    runs = {f"{r.data.params['sparsity']}/{r.data.params['k']}": r for r in
            tracking.search_all(client, exp.experiment_id, f"tags.`{tracking.ROLE}` = 'child'")}
    dense = runs["0.3/2"].data.metrics["dense_bytes"]
    points = [(val[t], runs[t].data.metrics["compressed_bytes"]) for t in front if front[t]]
    assert volumes[-1].value == pytest.approx(hypervolume(points, dense))
    assert all(a.value <= b.value + 1e-12 for a, b in zip(volumes, volumes[1:], strict=False))  # a front only grows


@pytest.mark.slow
def test_a_sweep_of_2000_trials_reads_marks_registers_and_plots_all_of_them(tmp_path: Path, capsys) -> None:
    """2,000 synthetic trials through the real tracker (a sweep's calls, with a real .dcz each):
    every run read (two pages and more), every tag right, the front registered, pareto.csv/png
    logged, and `dcsweep pareto` lists all 2,000."""
    import json

    from dcsweep.runner.adapters.synthetic import drive, synthetic_results
    from dcsweep.runner.cli import main
    from dcsweep.runner.cycle.pareto import pareto_mask

    dcz = tmp_path / "model.dcz"
    template = run_cycle({"model": "lenet300", "dataset": "digits", "epochs": 2, "prune_steps": 1, "prune_epochs": 1,
                          "share_epochs": 1, "sparsity": 0.9, "k": 8}, output=dcz)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "big", (tmp_path / "artifacts").as_uri())
    tracker.swept = ("sparsity", "k")
    drive(tracker, synthetic_results(template, 2000), dcz)
    trials = tracker.update_pareto()
    assert len(trials) == 2000 > tracking.PAGE_SIZE
    runs = {r.info.run_id: r for r in tracking.search_all(tracker.client, tracker.experiment_id,
                                                            "tags.`dcsweep.role` = 'child'")}
    ids = list(runs)
    vals = [runs[i].data.metrics["val_accuracy"] for i in ids]
    sizes = [runs[i].data.metrics["compressed_bytes"] for i in ids]
    truth = dict(zip(ids, pareto_mask(vals, sizes), strict=True))  # independent of the tracker's bookkeeping
    assert {i: runs[i].data.tags["pareto_optimal"] == "true" for i in ids} == truth
    assert {i: runs[i].data.metrics["pareto_optimal"] == 1.0 for i in ids} == truth
    front = {i for i, on in truth.items() if on}
    assert {v.run_id for v in tracker.client.search_model_versions("name = 'big'")} == front
    assert set(tracker.registered) == {"best", "smallest-within-1pt", "smallest-within-0_5pt"}
    parent = tracker.parent_id
    assert {a.path for a in tracker.client.list_artifacts(parent)} == {"pareto.csv", "pareto.png"}
    assert tracker.client.get_run(parent).data.metrics["trials"] == 2000
    assert main(["pareto", "big", "--tracking-uri", uri, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["trials"]
    assert len(listed) == 2000 and {t["run_id"] for t in listed if t["pareto_optimal"]} == front


def test_held_phases_go_with_the_runs_next_call_and_nothing_is_lost(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A reused phase and the final phase wait for the trial's next call: the trial's metrics,
    stage tags, model-free end and Pareto flag reach MLflow in one log_batch and one
    set_terminated, every step whole; a held batch older than max_hold goes on flush."""
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "held", (tmp_path / "artifacts").as_uri())
    result = run_cycle({"epochs": 2, "prune_epochs": 1, "prune_steps": 1, "share_epochs": 1, "sparsity": 0.8,
                        "k": 4}, stages=StageStore(tmp_path / "stages"))
    calls: list[str] = []
    for name in ("log_batch", "set_terminated", "set_tag"):
        real = getattr(tracker.client, name)
        monkeypatch.setattr(tracker.client, name, lambda *a, _n=name, _r=real, **k: (calls.append(_n), _r(*a, **k))[1])
    tracker.update_pareto(artifacts=False)  # the once-per-driver read of finished runs, done
    run = tracker.trial_run("t0", {"sparsity": 0.8, "k": 4}, "t0")
    calls.clear()
    stages = {"dense": ("d-key", True)}
    tracker.log_phase("t0", "dense", {"accuracy": 0.9}, stages, hold=True)
    tracker.log_phase("t0", "dense", {"accuracy": 0.1}, stages, hold=True)  # a retry's repeat: not held twice
    assert calls == [] and "accuracy" not in tracker.client.get_run(run).data.metrics
    tracker.flush(max_hold=60.0)  # too young
    assert calls == []
    tracker.flush(max_hold=0.0)
    assert calls == ["log_batch"]
    assert tracker.client.get_run(run).data.tags["dcsweep.stage.dense.reused"] == "true"
    calls.clear()
    for phase in ("pruned", "shared"):
        tracker.log_phase("t0", phase, Report.from_metrics(result.metrics(phase)).numbers, hold=phase == "pruned")
    tracker.log_phase("t0", "final", Report.from_metrics(result.metrics("final")).numbers, hold=True)
    tracker.finish_trial("t0", result, {})
    # pruned with shared in one call; final with the flag in one more, then the end and the
    # parent's summary of the front
    assert calls == ["log_batch", "log_batch", "set_terminated", "log_batch"]
    done = tracker.client.get_run(run)
    assert done.info.status == "FINISHED" and done.data.tags[tracking.PARETO_TAG] == "true"
    history = {m.step: m.value for m in tracker.client.get_metric_history(run, "accuracy")}
    assert history == {0: 0.9, **{step: result.metrics(phase)["accuracy"] for step, phase in
                                  ((1, "pruned"), (2, "shared"), (3, "final"))}}


def test_a_new_sqlite_store_is_a_copy_of_the_cached_empty_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The first new store runs MLflow's migrations and leaves its empty copy in the cache; the
    next new store is that copy (no migration runs) and works; a damaged copy is refused by
    MLflow, removed, and the store made anew."""
    import mlflow.store.db.utils as db_utils

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = tracking.open_client(f"sqlite:///{tmp_path / 'a.db'}")
    template = tmp_path / "cache" / "dcsweep" / f"mlflow-{mlflow.__version__}-empty.db"
    assert template.is_file() and first.search_experiments()
    real = db_utils._initialize_tables
    monkeypatch.setattr(db_utils, "_initialize_tables", lambda engine: pytest.fail("migrated a copied store"))
    second = tracking.open_client(f"sqlite:///{tmp_path / 'b.db'}")
    run = second.create_run(second.create_experiment("copied")).info.run_id
    second.log_batch(run, metrics=[Metric("accuracy", 0.5, 0, 0)])
    assert second.get_run(run).data.metrics == {"accuracy": 0.5}
    assert [e.name for e in first.search_experiments()] == ["Default"]  # the stores are apart
    template.write_bytes(b"SQLite format 3\0" + b"\0" * 100)  # damaged
    monkeypatch.setattr(db_utils, "_initialize_tables", real)
    third = tracking.open_client(f"sqlite:///{tmp_path / 'c.db'}")
    assert [e.name for e in third.search_experiments()] == ["Default"]
    # whole, but of another schema version: MLflow refuses it, and the store is made anew
    with contextlib.closing(sqlite3.connect(template)) as db, db:
        db.execute("UPDATE alembic_version SET version_num = 'f00d'")
    fourth = tracking.open_client(f"sqlite:///{tmp_path / 'd.db'}")
    assert [e.name for e in fourth.search_experiments()] == ["Default"] and "was refused" in caplog.text
    assert list(tmp_path.glob(".*.part")) == []


def test_a_new_sweep_finds_no_run_to_search_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep whose parent run this driver made searches for a trial's run only after trying
    to make it (a run made just before MLflow failed is found, not made twice); a resumed sweep
    finds the runs of its trials."""
    uri, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri()
    tracker = SweepTracker(uri, "fresh", artifacts)
    searches: list[str] = []
    real_search, real_batch = tracker.client.search_runs, tracker.client.log_batch
    monkeypatch.setattr(tracker.client, "search_runs", lambda *a, **k: (searches.append(k["filter_string"]),
                                                                         real_search(*a, **k))[1])
    first = tracker.trial_run("t0", {"k": 4}, "t0")
    assert searches == []

    def fail_once(*a, **k):
        monkeypatch.setattr(tracker.client, "log_batch", real_batch)
        raise mlflow.exceptions.MlflowException("the store went away")

    monkeypatch.setattr(tracker.client, "log_batch", fail_once)
    with pytest.raises(mlflow.exceptions.MlflowException):
        tracker.trial_run("t1", {"k": 8}, "t1")  # created, its params lost
    second = tracker.trial_run("t1", {"k": 8}, "t1")
    assert len(searches) == 1 and tracker.client.get_run(second).data.params == {"k": "8"}
    resumed = SweepTracker(uri, "fresh", artifacts)
    assert [resumed.trial_run(t, {"k": 4}, t) for t in ("t0", "t1")] == [first, second]
    children = real_search([tracker.experiment_id], f"tags.`{tracking.ROLE}` = 'child'")
    assert len(children) == 2


def test_a_new_sweep_does_not_take_over_an_experiment_of_its_name(tmp_path: Path) -> None:
    """Another storage's sweep of the same name on one tracking server: its runs were reopened,
    its front re-marked and its registered aliases moved. A new sweep is refused; a resume goes on."""
    uri, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri()
    first = SweepTracker(uri, "taken", artifacts, new=True)
    first.finish()
    with pytest.raises(ConfigError, match=r"the tracking store already has an experiment named 'taken' \(id \d+, "
                       r"active\); a new sweep needs its own: give another --name"):
        SweepTracker(uri, "taken", artifacts, new=True)
    assert MlflowClient(uri).get_run(first.parent_id).info.status == "FINISHED"  # untouched
    assert SweepTracker(uri, "taken", artifacts).parent_id == first.parent_id  # a resume reopens it


def test_a_new_sweep_does_not_take_over_a_registered_model_of_its_name(tmp_path: Path) -> None:
    """A registered model made by hand (or another tool) under the sweep's name got the
    sweep's versions and its `best` alias moved. A new sweep is refused before anything is made."""
    uri, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri()
    client = MlflowClient(uri)
    client.create_registered_model("owned", description="someone else's")
    with pytest.raises(ConfigError, match=r"already has a registered model named 'owned', not made by this sweep"):
        SweepTracker(uri, "owned", artifacts, new=True)
    assert client.get_experiment_by_name("owned") is None  # nothing made
    assert client.search_model_versions("name = 'owned'") == []
    assert client.get_registered_model("owned").description == "someone else's"


def test_a_trial_finished_by_a_new_driver_gets_every_step_its_reports_had(tmp_path: Path) -> None:
    """Steps held back when a driver died (or reports it never saw) are rebuilt at the trial's
    end from its result: the same numbers at the same steps as the live reports logged."""
    reports: dict[str, dict] = {}

    class Reports(CycleCallbacks):
        def on_phase_end(self, phase: str, checkpoint_dir: Path | None, result: CycleResult) -> None:
            reports[phase] = result.metrics(phase)

    result = run_cycle({"epochs": 2, "prune_epochs": 1, "prune_steps": 1, "share_epochs": 1, "sparsity": 0.8,
                        "k": 4}, stages=StageStore(tmp_path / "stages"), callbacks=Reports())
    reports["final"] = result.metrics("final")
    uri, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri()
    live = SweepTracker(uri, "rebuilt", artifacts)
    runs = [live.trial_run(t, {"sparsity": 0.8, "k": 4}, t) for t in ("live", "lost")]
    for phase, metrics in reports.items():
        report = Report.from_metrics(metrics)
        live.log_phase("live", phase, report.numbers, report.stages, hold=phase == "final")
    live.log_phase("lost", "dense", Report.from_metrics(reports["dense"]).numbers, hold=True)  # then it dies
    live.finish_trial("live", result, {})
    restarted = SweepTracker(uri, "rebuilt", artifacts)
    restarted.trial_run("lost", {"sparsity": 0.8, "k": 4}, "lost")
    # the restored trial goes on from its last checkpoint: steps 0 and 1 never come again
    restarted.log_phase("lost", "shared", Report.from_metrics(reports["shared"]).numbers)
    restarted.finish_trial("lost", result, {})
    client = MlflowClient(uri)
    kept = [client.get_run(r).data for r in runs]
    assert kept[0].metrics.keys() == kept[1].metrics.keys() and len(kept[0].metrics) > 10
    for key in set(kept[0].metrics) - {tracking.PARETO_TAG}:  # that one's step is the sweep's finished trials
        history = [{(m.step, m.value) for m in client.get_metric_history(r, key)} for r in runs]
        assert history[0] == history[1], key
    assert [[m.step for m in client.get_metric_history(r, tracking.PARETO_TAG)] for r in runs] == [[1], [2]]
    stage_tags = [{k: v for k, v in k_.tags.items() if k.startswith(tracking.STAGE_TAG)} for k_ in kept]
    assert stage_tags[0] == stage_tags[1] and stage_tags[0]
