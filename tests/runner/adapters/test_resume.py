"""Resuming sweeps and surviving failures, through the real CLI in subprocesses (each starts its
own local Ray), against a real SQLite MLflow store. Every process a test starts is ended by id."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dcsweep.runner.cli import main

from ..helpers import (
    SPACE,
    can_unshare,
    child_runs,
    children,
    cli,
    finish,
    free_port,
    front,
    kill,
    kill_after_finished,
    mlflow_server_command,
    ours_in_temp,
    own_temp,
    served,
    trial_rows,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A storage with the space file and the same sweep run once without interruption, each
    trial computing its own stages (so the sweeps below compute theirs, shared, and the fronts
    compare sharing with not sharing too)."""
    folder = tmp_path_factory.mktemp("resume")
    (folder / "space.yaml").write_text(SPACE)
    (folder / "unshared.yaml").write_text(SPACE + "share_stages: false\n")
    storage = folder / "store"
    with cli("run", str(folder / "unshared.yaml"), "--name", "whole", "--storage", str(storage), "--json") as proc:
        whole = finish(proc)
    # only the dense model shared: one computed, taken by the five other trials
    assert [p.name for p in (storage / "stages").iterdir()] == ["dense"]
    assert (whole["stages"]["computed"], whole["stages"]["reused"]) == (13, 5)
    return folder, storage, whole


@pytest.mark.slow
def test_sigkilled_sweep_resumes_without_losing_or_repeating_work(store) -> None:
    folder, storage, whole = store
    tune_dir = storage / "sweeps" / "cut" / "tune"
    with cli("run", str(folder / "space.yaml"), "--name", "cut", "--storage", str(storage), "--json") as proc:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # kill once some trials finished and others run
            rows = [trial_rows(d) for d in tune_dir.glob("trial_*")]
            finished = sum(bool(r) and r[-1]["phase"] == "final" for r in rows)
            if finished >= 2 and any(r and r[-1]["phase"] != "final" for r in rows):
                break
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        pids = children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kill(pids)  # the local Ray instance it had started
    uri = whole["tracking_uri"]
    before = {r.data.tags["dcsweep.trial_id"]: r for r in child_runs(uri, "cut")}
    done_before = {k: r.info.end_time for k, r in before.items() if r.info.status == "FINISHED"}
    rows_before = {d.name: trial_rows(d) for d in tune_dir.glob("trial_*")
                   if trial_rows(d) and trial_rows(d)[-1]["phase"] == "final"}
    assert done_before and len(done_before) < 6

    with cli("resume", "cut", "--storage", str(storage), "--json") as proc:
        resumed = finish(proc)

    runs = child_runs(uri, "cut")
    client = MlflowClient(uri)
    assert len(runs) == 6 and {r.data.tags["dcsweep.trial_id"] for r in runs} >= set(before)
    assert all(r.info.status == "FINISHED" for r in runs)  # none left RUNNING
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    for run in [*runs, parent]:  # no run has a metric at one step twice (README: the parent's summaries too)
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (run.info.run_name, key, steps)
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")]
        assert sorted(steps) == [0, 1, 2, 3]  # every phase once (those lost with the driver logged at the end)
        trial_id = run.data.tags["dcsweep.trial_id"]
        if trial_id in done_before:  # finished before the kill: its run untouched
            assert run.info.end_time == done_before[trial_id]
    for name, rows in rows_before.items():  # ... and the trial not rerun
        assert_not_rerun(rows, trial_rows(tune_dir / name))
    # each trial ran to its end in one folder, an interrupted one redoing at most one phase. A
    # trial Tune's saved state did not hold yet is made again on resume, in a folder of a new
    # name; its first folder keeps at most the checkpoint its worker uploaded, and no rows
    folders: dict[str, list[list[dict]]] = {}
    for d in tune_dir.glob("trial_*"):
        folders.setdefault("_".join(d.name.split("_")[1:3]), []).append(trial_rows(d))
    assert len(folders) == 6
    for trial_id, kept in folders.items():
        (rows,) = [r for r in kept if r] or [[]]
        phases = [r["phase"] for r in rows]
        assert phases and phases[-1] == "final" and max(phases.count(p) for p in set(phases)) <= 2, trial_id
    assert front(resumed) == front(whole)  # same seeds, same front, shared stages or not
    assert len(resumed["trials"]) == 6
    # 3 pruned and 6 shared stages, none computed twice (a stage published just before the kill
    # may be taken by its own trial on resume, so fewer can show as computed); the dense model
    # is the uninterrupted sweep's, taken by every trial
    stages = {p: sorted(f.name for f in (storage / "stages" / p).iterdir()) for p in ("pruned", "shared")}
    assert [len(stages["pruned"]), len(stages["shared"])] == [3, 6]
    assert 7 <= resumed["stages"]["computed"] <= 9 and resumed["stages"]["computed"] + resumed["stages"]["reused"] == 18
    keys = {(r.data.tags["dcsweep.stage.pruned"], r.data.tags["dcsweep.stage.shared"]) for r in runs}
    assert {p for p, _ in keys} == set(stages["pruned"]) and {s for _, s in keys} == set(stages["shared"])


def assert_not_rerun(before: list[dict], after: list[dict]) -> None:
    """A trial that had finished: its rows are as they were, but for at most one more final row
    that repeats its stored result. (Tune's saved state of its trials can trail their rows by
    one upload; a trial it restores as unfinished finds its result in its last checkpoint and
    reports it again, computing nothing.)"""
    assert after[: len(before)] == before and len(after) <= len(before) + 1
    for extra in after[len(before):]:
        same = ("phase", "accuracy", "val_accuracy", "compressed_bytes", "seconds_total")
        assert {k: extra.get(k) for k in same} == {k: before[-1].get(k) for k in same}


@pytest.mark.slow
def _status(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_ctrl_c_stops_the_sweep_killed_with_the_command_that_resumes_it(store, capsys) -> None:
    """A terminal's Ctrl-C (SIGINT to the driver and everything it started): the table, exit
    130, the parent KILLED and no run left RUNNING, the resume command as the last line; the
    resumed sweep finishes the same front, its parent FINISHED again."""
    folder, storage, whole = store
    tune_dir = storage / "sweeps" / "ctrlc" / "tune"
    proc = subprocess.Popen([sys.executable, "-m", "dcsweep.runner.cli", "run", str(folder / "space.yaml"), "--name",
                             "ctrlc", "--storage", str(storage), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # once a trial finished and others run
            rows = [trial_rows(d) for d in tune_dir.glob("trial_*")]
            if sum(bool(r) and r[-1]["phase"] == "final" for r in rows) >= 1 and any(
                    r and r[-1]["phase"] != "final" for r in rows):
                break
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        running = _status(capsys, "status", "ctrlc", "--storage", str(storage))  # read while it runs
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        kill([proc.pid, *children(proc.pid)])
    assert proc.returncode == 130, err[-3000:]
    result = json.loads(out)
    assert result["interrupted"] and 1 <= result["trials_ended"] < result["trials_total"] == 6
    last = err.strip().splitlines()[-1]
    assert last.startswith("dcsweep: interrupted: ") and last.endswith(f" resume ctrlc --storage {storage}")
    resume = shlex.split(last.split("continue with: ")[1])
    assert resume == result["resume"].split() and resume[:3] == [sys.executable, "-m", "dcsweep.runner.cli"]
    assert "Tuner.restore" not in err  # Ray's advice names its Python API, not ours
    uri = whole["tracking_uri"]
    client = MlflowClient(uri)
    runs = child_runs(uri, "ctrlc")
    parent_id = runs[0].data.tags["mlflow.parentRunId"]
    assert client.get_run(parent_id).info.status == "KILLED"
    assert "RUNNING" not in {r.info.status for r in runs}
    assert running["state"] == "running" and f"pid {proc.pid}," in running["driver"]
    assert running["trials_total"] == 6 and running["trials_finished"] >= 1 and running["trials_running"] >= 1
    stopped = _status(capsys, "status", "ctrlc", "--storage", str(storage))
    assert stopped["state"] == "stopped" and stopped["driver"] is None and stopped["resume"] == result["resume"]
    assert stopped["trials_ended"] == result["trials_ended"]

    with cli(*resume[3:], "--json") as again:  # the command as printed
        resumed = finish(again)
    assert not resumed["interrupted"] and len(resumed["trials"]) == 6 and front(resumed) == front(whole)
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert {r.info.status for r in child_runs(uri, "ctrlc")} == {"FINISHED"}
    listed = {s["name"]: s for s in _status(capsys, "list", "--storage", str(storage))["sweeps"]}
    assert listed["ctrlc"]["state"] == "finished" and listed["ctrlc"]["trials_ended"] == 6
    assert listed["ctrlc"]["front_size"] == sum(t["pareto_optimal"] for t in resumed["trials"])
    # the front registered after each run of the driver, each trial once
    registered = [v.run_id for v in client.search_model_versions("name = 'ctrlc'")]
    assert len(registered) == len(set(registered))
    assert {t["run_id"] for t in resumed["trials"] if t["pareto_optimal"]} <= set(registered)


def _faulted(store: tuple, name: str, fault: str) -> tuple[dict, Path]:
    """The store's space run as sweep ``name`` with the test fault hook set to ``fault``; its
    failed, killed and retried trials leave nothing in the temporary folder."""
    folder, storage, _ = store
    temp, env = own_temp()
    with cli("run", str(folder / "space.yaml"), "--name", name, "--storage", str(storage), "--json",
             env={"DCSWEEP_TEST_FAULT": fault, **env}) as proc:
        result = finish(proc)
    assert ours_in_temp(temp) == set()
    return result, storage


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["raise", "kill"])
def test_a_failed_trial_retries_from_its_last_checkpoint(store, tmp_path: Path, kind: str) -> None:
    name = f"fault-{kind}"
    result, storage = _faulted(store, name, f"{kind}:pruned:{tmp_path}:k=2")
    whole = store[2]
    assert len(list(tmp_path.iterdir())) == 3  # the three k=2 trials each failed once
    assert not result["errors"] and len(result["trials"]) == 6
    assert front(result) == front(whole)
    for d in (storage / "sweeps" / name / "tune").glob("trial_*"):
        # continued after "pruned", nothing redone (a worker killed right after reporting may
        # take that report's row in Tune's log with it, never the checkpoint)
        phases = [r["phase"] for r in trial_rows(d)]
        assert phases[-1] == "final" and phases.count("dense") == 1 and phases.count("pruned") <= 1
        assert phases.count("shared") == 1
    runs = child_runs(result["tracking_uri"], name)
    client = MlflowClient(result["tracking_uri"])
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_trial_that_keeps_failing_ends_failed_and_the_sweep_goes_on(store, tmp_path: Path) -> None:
    result, _ = _faulted(store, "doomed", f"always:dense:{tmp_path}:sparsity=0.97")
    assert len(result["errors"]) == 2 and len(result["trials"]) == 4
    runs = child_runs(result["tracking_uri"], "doomed")
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(runs) == 6 and {r.data.params["sparsity"] for r in failed} == {"0.97"} and len(failed) == 2
    assert all("injected fault" in r.data.tags["error"] for r in failed)


@pytest.mark.slow
def test_a_sweep_whose_every_trial_fails_exits_1_with_the_cause(store, tmp_path: Path) -> None:
    folder, storage, _ = store
    with cli("run", str(folder / "space.yaml"), "--name", "all-doomed", "--storage", str(storage), "--json",
             env={"DCSWEEP_TEST_FAULT": f"always:dense:{tmp_path}"}) as proc:
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]
    result = json.loads(out)  # the sweep's JSON still comes, for scripts
    assert len(result["errors"]) == 6 and result["trials"] == []
    last = err.strip().splitlines()[-1]
    assert last.startswith("dcsweep: failed: all 6 failed trials, none finished; the first: ")
    assert "injected fault" in last


@pytest.mark.slow
def test_divergence_stops_only_that_trial(store, tmp_path: Path) -> None:
    result, storage = _faulted(store, "div", f"diverge:pruned:{tmp_path}:sparsity=0.9")
    runs = child_runs(result["tracking_uri"], "div")
    diverged = [r for r in runs if r.info.status == "FAILED"]
    assert len(runs) == 6 and {r.data.params["sparsity"] for r in diverged} == {"0.9"} and len(diverged) == 2
    assert all("loss became nan" in r.data.tags["error"] for r in diverged)
    assert len(result["errors"]) == 2 and all("loss became nan" in e for e in result["errors"])
    stopped = list((storage / "sweeps" / "div" / "tune").glob("trial_*sparsity=0.9000*"))
    assert len(stopped) == 2
    for d in stopped:
        assert [r["phase"] for r in trial_rows(d)] == ["dense", "pruned", "diverged"]  # stopped, never retried
    assert sorted({t["params"]["sparsity"] for t in result["trials"]}) == ["0.5", "0.97"]


# -- bad input: exit 2, one line, nothing touched -------------------------------------------

def _exit2(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("dcsweep: error:")
    return err


def test_a_malformed_test_fault_hook_is_refused(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCSWEEP_TEST_FAULT", "explode:pruned:relative/dir")
    err = _exit2(capsys, "run", "--storage", str(tmp_path))
    assert "DCSWEEP_TEST_FAULT='explode:pruned:relative/dir' is not allowed" in err and "KIND one of" in err


def test_resuming_an_unknown_sweep_is_refused(capsys, tmp_path: Path) -> None:
    assert "no sweep named 'nope'" in _exit2(capsys, "resume", "nope", "--storage", str(tmp_path))
    assert "needs the sweep's --name" in _exit2(capsys, "run", "--resume", "--storage", str(tmp_path))


def test_resuming_with_a_changed_space_is_refused(store, capsys) -> None:
    folder, storage, _ = store
    saved = storage / "sweeps" / "whole" / "space.yaml"
    text = saved.read_text()
    other = folder / "other.yaml"
    other.write_text(SPACE.replace("k: {grid: [2, 16]}", "k: {grid: [2, 32]}") + "share_stages: false\n")
    before = sorted((p, p.stat().st_mtime_ns) for p in storage.rglob("*") if p.is_file())
    assert "another space (differ: ['swept'])" in _exit2(
        capsys, "run", str(other), "--name", "whole", "--resume", "--storage", str(storage))
    try:
        saved.write_text(text.replace("0.97", "0.98"))
        assert "no longer matches" in _exit2(capsys, "resume", "whole", "--storage", str(storage))
    finally:
        saved.write_text(text)
    after = sorted((p, p.stat().st_mtime_ns) for p in storage.rglob("*") if p.is_file() and p != saved)
    assert after == [b for b in before if b[0] != saved]


def test_unreachable_tracking_server_and_unwritable_storage_are_refused(capsys, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = _exit2(capsys, "run", "--storage", str(tmp_path), "--tracking-uri", f"http://127.0.0.1:{port}")
    assert "does not answer" in err and not (tmp_path / "sweeps").exists()
    (tmp_path / "file").write_text("")
    assert "is not writable" in _exit2(capsys, "run", "--storage", str(tmp_path / "file" / "store"))
    err = _exit2(capsys, "run", "--storage", str(tmp_path), "--tracking-uri", "http://me:pw@127.0.0.1:1")
    assert "must not carry credentials" in err and "pw" not in err
    assert "scheme 'ftp' is not supported" in _exit2(capsys, "run", "--storage", "ftp://host/runs")
    assert "cannot hold the default SQLite" in _exit2(capsys, "run", "--storage", "s3://bucket/runs")
    assert not Path("s3:").exists() and not Path("ftp:").exists()


BOMB = """name: bomb
description: &a [x, x, x, x, x, x, x, x, x, x]
fixed: {b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b],
        d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c], e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d],
        f: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]}
"""


@pytest.mark.parametrize(("argv", "space", "message"), [
    (["--tracking-uri", "garbage"], None, r"tracking URI 'garbage' is not allowed; it must start with one of"),
    (["--tracking-uri", "http://[::1"], None, r"tracking URI 'http://\[::1' is not a valid URI"),
    (["--tracking-uri", "http://127.0.0.1:1/?token=s3cr3t"], None,
     r"must not carry credentials \(query parameter 'token'\)"),
    (["--name", "n" * 300], None, r"--name='n{40}'... is not allowed; use at most 100 ASCII letters"),
    (["--cpus-per-trial", "64"], None, r"trials ask for 64 CPU and 0 GPU, but the largest node has"),
    ([], "name: f\nswept:\n  k: {uniform: [2, 32]}\n", r"swept.k: k=2.0 is not allowed; k must be an integer"),
    ([], b"name: caf\xe9\n", r"not UTF-8 text"),
    ([], BOMB, r"expands to more than 100000 values"),
])
def test_bad_sweeps_are_refused_before_anything_is_written(capsys, tmp_path: Path, argv: list[str],
                                                            space: str | bytes | None, message: str) -> None:
    import re

    store = tmp_path / "store"
    store.mkdir()
    if space is not None:
        (tmp_path / "s.yaml").write_bytes(space.encode() if isinstance(space, str) else space)
    started = time.monotonic()
    err = _exit2(capsys, "run", *([str(tmp_path / "s.yaml")] if space is not None else []), "--storage", str(store),
                 *argv)
    assert re.search(message, err), err
    assert "s3cr3t" not in err and time.monotonic() - started < 10
    assert list(store.iterdir()) == []  # no mlflow.db, no sweeps/


@pytest.mark.skipif(not can_unshare(), reason="needs a mount namespace (unshare -m) to make a folder read-only for "
                    "root, who writes through permissions")
def test_a_sqlite_store_in_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    command = (f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && exec {sys.executable} -m "
               f"dcsweep.runner.cli run --storage {tmp_path / 's'} --tracking-uri sqlite:///{folder}/mlflow.db")
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{folder} is not writable (Read-only file system); MLflow must write its SQLite store there" in done.stderr
    assert not (tmp_path / "s").exists()


def test_a_sweep_json_without_its_tracking_uri_is_refused(capsys, tmp_path: Path) -> None:
    from dcsweep.runner.sweep import Storage, Sweep, space_as_run
    from dcsweep.runner.sweep.spec import write_sweep_files

    storage = Storage(tmp_path)
    write_sweep_files(Sweep("old", space_as_run("lenet300-digits"), storage, "sqlite:///x.db"))
    meta = json.loads((tmp_path / "sweeps" / "old" / "sweep.json").read_text())
    del meta["tracking_uri"]
    (tmp_path / "sweeps" / "old" / "sweep.json").write_text(json.dumps(meta))
    assert "names no tracking_uri; pass --tracking-uri" in _exit2(capsys, "resume", "old", "--storage", str(tmp_path))


def test_a_damaged_tune_state_is_refused_and_nothing_runs(store, capsys, tmp_path: Path) -> None:
    """A full disk truncated Tune's searcher state: resume refuses, touching nothing, instead of
    starting an experiment with settings that are not from the space."""
    import shutil

    _, storage, _ = store
    copy = tmp_path / "store"
    shutil.copytree(storage / "sweeps" / "whole", copy / "sweeps" / "damaged")
    state = next((copy / "sweeps" / "damaged" / "tune").glob("basic-variant-state-*.json"))
    state.write_bytes(b"")
    before = sorted((p, p.stat().st_mtime_ns) for p in copy.rglob("*") if p.is_file())
    err = _exit2(capsys, "resume", "damaged", "--storage", str(copy))
    assert f"Ray Tune's saved state in {copy}/sweeps/damaged/tune is damaged ({state.name} (empty))" in err
    assert "finished trials, their checkpoints and MLflow runs are intact" in err
    assert sorted((p, p.stat().st_mtime_ns) for p in copy.rglob("*") if p.is_file()) == before


def test_a_failure_after_ray_starts_prints_its_cause_and_ends(tmp_path: Path) -> None:
    """A tracking store MLflow cannot open (databricks with no configuration) fails after Ray
    started: the real error is printed, Ray shut down, the process ends (it used to hang a
    minute starting a second Ray from the baseline's thread, then die of 'Failed to connect')."""
    started = time.monotonic()
    with cli("run", "--storage", str(tmp_path), "--tracking-uri", "databricks://nowhere", "--json",
             env={"DATABRICKS_HOST": "", "DATABRICKS_TOKEN": ""}) as proc:
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and not out
    assert err.strip().splitlines()[-1].startswith("dcsweep: failed: MlflowException: ") and "GCS" not in err
    assert time.monotonic() - started < 120 and not (tmp_path / "sweeps").exists()  # nothing was written


@pytest.mark.slow
def test_a_tracking_server_that_goes_away_mid_sweep(store, tmp_path: Path) -> None:
    folder, storage, whole = store
    port = free_port()
    server = mlflow_server_command(tmp_path, port)
    tune_dir = storage / "sweeps" / "outage" / "tune"
    with contextlib.ExitStack() as stack:
        with served(server, port, stop=signal.SIGKILL) as url:  # an outage, not a graceful stop
            proc = stack.enter_context(cli("run", str(folder / "space.yaml"), "--name", "outage", "--storage",
                                            str(storage), "--tracking-uri", url, "--json"))
            deadline = time.monotonic() + 300
            while not any(r and r[-1]["phase"] == "final" for r in map(trial_rows, tune_dir.glob("trial_*"))):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.2)
        result = finish(proc)  # the server went away: the sweep still finished
    assert result["mlflow_pending"] and len(result["trials"]) == 6 and front(result) == front(whole)
    with served(server, port) as url, cli("resume", "outage", "--storage", str(storage), "--json") as proc:
        resumed = finish(proc)  # the sweep's own tracking URI, from its sweep.json
        runs = child_runs(url, "outage")
        client = MlflowClient(url)
        assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
        for run in runs:
            assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [0, 1, 2, 3]
            assert {"model.dcz", "layers.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not resumed.get("mlflow_pending") and front(resumed) == front(whole)


@pytest.mark.slow
def test_both_ways_of_resuming_log_to_the_sweeps_own_tracking_server(store, mlflow_server) -> None:
    """Started against a tracking server, killed, continued with `run --resume`, killed again,
    continued with `resume`: every run lands in the server, none in the local store."""
    folder, storage, whole = store
    url, _ = mlflow_server
    tune_dir = storage / "sweeps" / "served" / "tune"
    args = ("--name", "served", "--storage", str(storage), "--json")
    with cli("run", str(folder / "space.yaml"), *args, "--tracking-uri", url) as proc:
        kill_after_finished(proc, tune_dir, 2)
    assert 2 <= len(child_runs(url, "served")) < 6
    with cli("run", str(folder / "space.yaml"), *args, "--resume") as proc:
        kill_after_finished(proc, tune_dir, 4)
    with cli("resume", "served", "--storage", str(storage), "--json") as proc:
        resumed = finish(proc)
    assert resumed["tracking_uri"] == url and front(resumed) == front(whole)
    runs = child_runs(url, "served")
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    local = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    assert local.get_experiment_by_name("served") is None  # nothing went to the storage's own store


@pytest.mark.slow
def test_one_driver_at_a_time(store, capsys) -> None:
    """A second `run --name` or a `resume` of a sweep that is running is refused, naming the
    driver; the sweep ends with one run per trial, and its lease is gone."""
    folder, storage, whole = store
    leases = storage / "sweeps" / "solo" / "leases"
    with cli("run", str(folder / "space.yaml"), "--name", "solo", "--storage", str(storage), "--json") as first:
        deadline = time.monotonic() + 120
        while not list(leases.glob("*.json")):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.1)
        err = _exit2(capsys, "run", str(folder / "space.yaml"), "--name", "solo", "--storage", str(storage))
        assert "being run by another driver" in err and f"pid {first.pid}," in err
        err = _exit2(capsys, "resume", "solo", "--storage", str(storage))
        assert "being run by another driver" in err and f"pid {first.pid}," in err
        result = finish(first)
    assert len(child_runs(result["tracking_uri"], "solo")) == 6 and front(result) == front(whole)
    assert list(leases.glob("*.json")) == []
