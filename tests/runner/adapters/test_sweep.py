"""Sweeps end to end on a real local Ray instance and a real MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dcsweep.compression import load_compressed
from dcsweep.runner.adapters.driver import run_sweep
from dcsweep.runner.cli import main
from dcsweep.runner.cycle.pareto import pareto_mask
from dcsweep.runner.sweep import Storage, new_sweep, space_as_run
from dcsweep.search_spaces import list_spaces

from ..helpers import free_port, ours_in_temp, served, trial_rows

SPACE = """
name: tiny
description: a tiny sweep for the tests
fixed: {model: lenet300, dataset: digits, epochs: 3, prune_steps: 1, prune_epochs: 2, share_epochs: 1}
swept:
  sparsity: {grid: [0.5, 0.9, 0.97]}
  k: {grid: [2, 16]}
search: {algorithm: grid, max_concurrent: 2}
resources: {cpu: 1}
"""


@pytest.fixture(scope="module")
def swept(ray_local, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, set[str]]:
    """The tiny sweep, run once; and what it left in the workers' temporary folder."""
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "tiny.yaml").write_text(SPACE)
    sweep = new_sweep(space_as_run(folder / "tiny.yaml"), "tiny-1", Storage(folder / "store"), None, False, None)
    before = ours_in_temp()
    return run_sweep(sweep), folder, ours_in_temp() - before


def test_trials_leave_nothing_in_the_temp_folder(swept) -> None:
    _, _, left = swept
    assert left == set()


def test_every_trial_lands_in_mlflow(swept) -> None:
    result, folder, _ = swept
    client = MlflowClient(result["tracking_uri"])
    exp = client.get_experiment_by_name("tiny-1")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("dcsweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("dcsweep.role") == "child"]
    assert len(parents) == 1 and len(children) == 6 and not result["errors"]
    assert all(r.info.status == "FINISHED" for r in runs)  # nothing left RUNNING
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    grid = {(r.data.params["sparsity"], r.data.params["k"]) for r in children}
    assert grid == {(s, k) for s in ("0.5", "0.9", "0.97") for k in ("2", "16")}
    for run in children:
        assert {"model", "dataset", "epochs", "lr", "seed", "init", "coder"} <= set(run.data.params)
        assert {"accuracy_dense", "accuracy_pruned", "accuracy_shared", "sparsity", "compressed_bytes",
                "dense_bytes", "compression_ratio", "seconds_dense", "seconds_total"} <= set(run.data.metrics)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")]
        assert steps == [0, 1, 2, 3]  # one per phase, none twice
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} == {"pareto.csv", "pareto.png"}


def test_pareto_tags_match_an_independent_front_on_validation_accuracy(swept) -> None:
    result, _, _ = swept
    client = MlflowClient(result["tracking_uri"])
    exp = client.get_experiment_by_name("tiny-1")
    children = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("dcsweep.role") == "child"]
    points = [(r.data.metrics["val_accuracy"], r.data.metrics["compressed_bytes"]) for r in children]
    for run, (acc, size) in zip(children, points, strict=True):
        dominated = any(a >= acc and s <= size and (a > acc or s < size) for a, s in points)
        assert run.data.tags["pareto_optimal"] == ("false" if dominated else "true")
    assert pareto_mask([0.9, 0.8, 0.9], [10, 5, 12]) == [True, True, False]


def test_what_the_mlflow_ui_shows_first(swept, tmp_path: Path) -> None:
    """Run names lead with the settings, the flag is a 0/1 metric too (charts colour by it), the
    experiment carries the space's description, the parent a summary, and pareto.csv leads
    with the swept settings and the flag."""
    result, _, _ = swept
    client = MlflowClient(result["tracking_uri"])
    exp = client.get_experiment_by_name("tiny-1")
    assert exp.tags["mlflow.note.content"] == "a tiny sweep for the tests"
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("dcsweep.role") == "parent")
    children = [r for r in runs if r.data.tags.get("dcsweep.role") == "child"]
    for run in children:
        p = run.data.params
        assert run.info.run_name.startswith(f"s={p['sparsity']} k={p['k']} ")
        assert run.data.metrics["pareto_optimal"] == (1.0 if run.data.tags["pareto_optimal"] == "true" else 0.0)
    m = parent.data.metrics
    vals = [r.data.metrics["val_accuracy"] for r in children]
    assert m["trials"] == 6 and m["front_size"] == sum(r.data.tags["pareto_optimal"] == "true" for r in children)
    assert m["best_val_accuracy"] == max(vals)
    within = [r.data.metrics["compression_ratio"] for r in children
              if r.data.metrics["val_accuracy"] >= r.data.metrics["val_accuracy_dense"] - 0.01]
    assert m.get("best_ratio_within_1pt") == (max(within) if within else None)
    csv = Path(client.download_artifacts(parent.info.run_id, "pareto.csv", str(tmp_path)))
    header = csv.read_text().splitlines()[0]
    assert header.startswith("sparsity,k,pareto_optimal,val_accuracy,accuracy,compressed_bytes,ratio,run_id,")


LOAD_AND_SCORE = """
import json, sys
import mlflow.pyfunc
import numpy as np
from dcsweep.runner.cycle import load_dataset

mlflow.set_tracking_uri(sys.argv[1])
test = load_dataset("digits").test
x, y = zip(*test.batches(len(test), "cpu"))
scores = {}
for uri in sys.argv[2:]:
    model = mlflow.pyfunc.load_model(uri)
    scores[uri] = float((model.predict(x[0].numpy()).argmax(1) == y[0].numpy()).mean())
print(json.dumps({"scores": scores, "runner": "dcsweep.runner.cycle.run" in sys.modules}))
"""


def _load_and_score(tracking_uri: str, *uris: str) -> dict[str, float]:
    """Each model URI loaded through MLflow in a fresh interpreter, scored on digits' test part."""
    done = subprocess.run([sys.executable, "-c", LOAD_AND_SCORE, tracking_uri, *uris], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["scores"]


def test_every_trial_is_an_mlflow_model_and_the_front_is_registered_with_aliases(swept) -> None:
    result, _, _ = swept
    uri = result["tracking_uri"]
    client = MlflowClient(uri)
    trials = {t["run_id"]: t for t in result["trials"]}
    front = {r for r, t in trials.items() if t["pareto_optimal"]}
    registered = result["registered_model"]
    assert registered["name"] == "tiny-1" and set(registered["aliases"]) >= {"best"}
    versions = client.search_model_versions("name = 'tiny-1'")
    assert sorted(v.run_id for v in versions) == sorted(front)  # the front, each trial once
    for v in versions:
        t = trials[v.run_id]
        assert (float(v.tags["val_accuracy"]), int(v.tags["compressed_bytes"])) == (t["val_accuracy"],
                                                                                    t["compressed_bytes"])
    best = max(front, key=lambda r: (trials[r]["val_accuracy"], -trials[r]["compressed_bytes"]))
    assert client.get_model_version_by_alias("tiny-1", "best").run_id == best
    for run_id in trials:  # each run's output: a logged model it produced, named `model`
        model = client.get_logged_model(client.get_run(run_id).data.tags["dcsweep.model"])
        assert (model.source_run_id, model.name, str(model.status)) == (run_id, "model", "READY")
    for v in versions:  # a version is its trial's logged model
        model_id = client.get_run(v.run_id).data.tags["dcsweep.model"]
        assert v.source == client.get_logged_model(model_id).artifact_location
    some = sorted(trials)[0]
    aliases = [f"models:/tiny-1@{a}" for a in registered["aliases"]]
    scores = _load_and_score(uri, f"runs:/{some}/model", *aliases)
    assert scores[f"runs:/{some}/model"] == trials[some]["accuracy"]  # the decoded network, as logged
    for alias in registered["aliases"]:
        run_id = client.get_model_version_by_alias("tiny-1", alias).run_id
        assert scores[f"models:/tiny-1@{alias}"] == trials[run_id]["accuracy"]


ALLOCATED = """
name: tiny-allocated
fixed: {model: lenet300, dataset: digits, epochs: 3, prune_steps: 1, prune_epochs: 2, share_epochs: 1}
swept:
  target_ratio: {grid: [10, 20]}
search: {algorithm: grid, max_concurrent: 2}
resources: {cpu: 1}
"""


def test_an_allocated_sweep_logs_each_trials_choice_and_its_table_once(ray_local, tmp_path: Path) -> None:
    (tmp_path / "allocated.yaml").write_text(ALLOCATED)
    store = tmp_path / "store"
    sweep = new_sweep(space_as_run(tmp_path / "allocated.yaml"), "alloc-1", Storage(store), None, False, None)
    result = run_sweep(sweep)
    assert not result["errors"] and len(result["trials"]) == 2
    client = MlflowClient(result["tracking_uri"])
    exp = client.get_experiment_by_name("alloc-1")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("dcsweep.role") == "parent")
    children = [r for r in runs if r.data.tags.get("dcsweep.role") == "child"]
    tables = list((store / "stages" / "sensitivity").iterdir())
    assert len(tables) == 1  # computed once, by one trial, for both targets
    for run in children:
        chosen = {k: v for k, v in run.data.params.items() if k.startswith("allocation.")}
        assert set(chosen) == {"allocation.fc1", "allocation.fc2", "allocation.fc3"}
        assert all(v.startswith("sparsity=") and " k=" in v for v in chosen.values())
        assert run.data.metrics["compression_ratio"] >= float(run.data.params["target_ratio"]) * 0.97
        layers = json.loads(Path(client.download_artifacts(run.info.run_id, "layers.json", str(tmp_path))).read_text())
        assert {row["name"].removesuffix(".weight"): row["allocated"]["k"] for row in layers if "allocated" in row} == {
            name.removeprefix("allocation."): int(v.split("k=")[1]) for name, v in chosen.items()}
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, f"sensitivity/{tables[0].name}")}
    assert {f"sensitivity/{tables[0].name}/{f}" for f in ("sensitivity.json", "sensitivity.csv", "sensitivity.png")
            } == logged


FROM_WEIGHTS = """
name: tiny-from-weights
fixed: {model: lenet300, dataset: digits, dense_path: DENSE, epochs: 1, prune_steps: 1, prune_epochs: 1,
        share_epochs: 1}
swept:
  sparsity: {grid: [0.5, 0.9]}
search: {algorithm: grid, max_concurrent: 2}
resources: {cpu: 1}
"""


@pytest.mark.slow
def test_a_sweep_from_weights_of_other_classes_names_the_layer_it_reinitialised(ray_local, tmp_path: Path) -> None:
    """A 7-class model's state dict on 10-class digits: its classifier (fc3) is re-initialised,
    the dense phase fine-tunes once for both trials, and each run's params name fc3."""
    import torch

    from dcsweep.runner.cycle.models import create_model

    torch.save(create_model("lenet300", (1, 8, 8), 7).state_dict(), tmp_path / "seven.pt")
    (tmp_path / "space.yaml").write_text(FROM_WEIGHTS.replace("DENSE", str(tmp_path / "seven.pt")))
    store = tmp_path / "store"
    result = run_sweep(new_sweep(space_as_run(tmp_path / "space.yaml"), "weights-1", Storage(store), None, False,
                                 None))
    assert not result["errors"] and len(result["trials"]) == 2
    runs = MlflowClient(result["tracking_uri"]).search_runs(
        [MlflowClient(result["tracking_uri"]).get_experiment_by_name("weights-1").experiment_id],
        "tags.`dcsweep.role` = 'child'")
    assert [r.data.params["pretrained_reinitialised"] for r in runs] == ["fc3", "fc3"]
    assert [r.data.params["epochs"] for r in runs] == ["1", "1"]
    assert len(list((store / "stages" / "dense").iterdir())) == 1  # fine-tuned once, shared


@pytest.mark.slow
def test_a_pretrained_sweep_without_the_weights_is_refused_before_it_starts(
        ray_local, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "space.yaml").write_text(SPACE.replace("model: lenet300, dataset: digits",
                                                       "model: resnet18, pretrained: true, dataset: digits"))
    code = main(["run", str(tmp_path / "space.yaml"), "--storage", str(tmp_path / "s"), "--name", "pre"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"needs torchvision's ResNet18_Weights.IMAGENET1K_V1 for resnet18 at {tmp_path}/torch/hub/" in err
    assert not (tmp_path / "s" / "sweeps").exists()


def test_artifacts_are_real_files(swept, tmp_path: Path) -> None:
    result, _, _ = swept
    client = MlflowClient(result["tracking_uri"])
    best = max(result["trials"], key=lambda t: t["accuracy"])
    local = Path(client.download_artifacts(best["run_id"], "", str(tmp_path)))
    assert {"model.dcz", "layers.json", "plots"} <= {p.name for p in local.iterdir()}
    model = load_compressed(local / "model.dcz")
    assert model is not None and (local / "model.dcz").stat().st_size == best["compressed_bytes"]
    assert json.loads((local / "layers.json").read_text())[0]["name"] == "fc1.bias"


def test_dense_baseline_trained_once_and_reused(swept, ray_local) -> None:
    """The dense model is a stage: one trial trains it, the others (and a later sweep) take it."""
    result, folder, _ = swept
    dense = list((folder / "store" / "stages" / "dense").iterdir())
    assert len(dense) == 1 and {"model.dcz", "stage.json"} <= {p.name for p in dense[0].iterdir()}
    client = MlflowClient(result["tracking_uri"])
    runs = [client.get_run(t["run_id"]) for t in result["trials"]]
    assert {r.data.tags["dcsweep.stage.dense"] for r in runs} == {dense[0].name}
    assert sorted(r.data.tags["dcsweep.stage.dense.reused"] for r in runs) == ["false"] + ["true"] * 5
    assert len({r.data.metrics["accuracy_dense"] for r in runs}) == 1  # every trial starts from the same model
    assert {r.data.params.get("dense_path", "None") for r in runs} == {"None"}  # trained, not a file
    before = (dense[0] / "model.dcz").stat().st_mtime_ns
    again = run_sweep(new_sweep(space_as_run(folder / "tiny.yaml", smoke=True), "tiny-2", Storage(folder / "store"),
                                None, True, None))
    reused = {client.get_run(t["run_id"]).data.tags["dcsweep.stage.dense.reused"] for t in again["trials"]}
    assert reused == {"true"} and (dense[0] / "model.dcz").stat().st_mtime_ns == before


def test_two_workers_run_every_trial_from_the_start(swept) -> None:
    """Two slots, two workers: both start at once (the second waits for the dense stage the
    first trains, instead of starting after it), and both serve every later trial."""
    _, folder, _ = swept
    trials = sorted((folder / "store" / "sweeps" / "tiny-1" / "tune").glob("trial_*"))
    rows = {t.name: trial_rows(t) for t in trials}
    assert len({r["pid"] for rs in rows.values() for r in rs}) == 2
    first = [rs[0] for name, rs in rows.items() if "_00000_" in name or "_00001_" in name]
    dense_trained = [r for r in first if not r["reused_dense"]]
    waited = [r for r in first if r["reused_dense"]]
    assert len(dense_trained) == 1 and len(waited) == 1
    # the waiting trial's worker was up before the dense model was done: it reported right after
    assert waited[0]["timestamp"] - dense_trained[0]["timestamp"] <= 2


def test_existing_name_is_refused_and_nothing_touched(swept, capsys) -> None:
    result, folder, _ = swept
    store = folder / "store"
    listing = sorted(p.relative_to(store) for p in store.rglob("*"))
    runs_before = len(MlflowClient(result["tracking_uri"]).search_runs(
        [MlflowClient(result["tracking_uri"]).get_experiment_by_name("tiny-1").experiment_id]))
    code = main(["run", str(folder / "tiny.yaml"), "--name", "tiny-1", "--storage", str(store)])
    assert code == 2 and "sweep 'tiny-1' already exists" in capsys.readouterr().err
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == listing
    client = MlflowClient(result["tracking_uri"])
    assert len(client.search_runs([client.get_experiment_by_name("tiny-1").experiment_id])) == runs_before


def test_pareto_command_reads_mlflow(swept, capsys) -> None:
    result, folder, _ = swept
    assert main(["pareto", "tiny-1", "--storage", str(folder / "store"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "tiny-1" and len(out["trials"]) == 6
    assert {"run_id", "params", "accuracy", "compressed_bytes", "ratio", "pareto_optimal"} <= set(out["trials"][0])
    assert sum(t["pareto_optimal"] for t in out["trials"]) == sum(t["pareto_optimal"] for t in result["trials"])
    assert main(["pareto", "nope", "--storage", str(folder / "store")]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("space", list_spaces())
def test_built_in_space_smoke_test(space: str, ray_local, tmp_path: Path, capsys) -> None:
    code = main(["run", space, "--smoke-test", "--storage", str(tmp_path), "--name", "smoke", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    out = json.loads(captured.out)
    assert len(out["trials"]) == 2 and not out["errors"]
    assert any(t["pareto_optimal"] for t in out["trials"])


def test_trials_no_node_can_hold_are_refused(swept, capsys, tmp_path: Path) -> None:
    _, folder, _ = swept
    code = main(["run", str(folder / "tiny.yaml"), "--storage", str(tmp_path / "s"), "--name", "big",
                 "--cpus-per-trial", "64"])
    err = capsys.readouterr().err
    assert code == 2 and "trials ask for 64 CPU and 0 GPU, but the largest node has 2 CPU" in err
    assert not (tmp_path / "s" / "sweeps" / "big").exists()
    code = main(["run", "lenet300-digits", "--storage", str(tmp_path / "s"), "--gpus-per-trial", "-1"])
    assert code == 2 and "--gpus-per-trial=-1.0 is not allowed" in capsys.readouterr().err


def test_ui_needs_a_store(capsys, tmp_path: Path) -> None:
    assert main(["ui", "--storage", str(tmp_path)]) == 2
    assert "no sweep store at sqlite:///" in capsys.readouterr().err


@pytest.mark.slow
def test_ui_serves_the_store_on_loopback(swept) -> None:
    import sys

    _, folder, _ = swept
    port = free_port()
    exe = Path(sys.executable).parent / "dcsweep"
    with served([str(exe), "ui", "--storage", str(folder / "store"), "--port", str(port)], port, 90) as url:
        assert url == f"http://127.0.0.1:{port}"  # healthy on loopback


@pytest.mark.slow
def test_ui_on_a_taken_port_is_refused_and_starts_nothing(swept, capsys) -> None:
    """It printed its URL and exited 0 while MLflow failed to bind: the browser then reached
    whatever held the port."""
    import socket

    _, folder, _ = swept
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["ui", "--storage", str(folder / "store"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port={port} is taken on 127.0.0.1" in err and "http://" not in err


@pytest.mark.slow
def test_sweep_against_a_tracking_server(ray_local, mlflow_server, tmp_path: Path, capsys) -> None:
    url, artifacts = mlflow_server
    (tmp_path / "two.yaml").write_text(SPACE.replace("[0.5, 0.9, 0.97]", "[0.9]"))
    code = main(["run", str(tmp_path / "two.yaml"), "--name", "served", "--storage", str(tmp_path / "store"),
                 "--tracking-uri", url, "--json"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert code == 0 and len(out["trials"]) == 2
    assert not (tmp_path / "store" / "mlflow.db").exists()  # nothing went to the local default
    progress = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert progress and all(" done, " in line and line.startswith(("[0/2", "[1/2", "[2/2")) for line in progress)
    assert progress[-1].startswith("[2/2 done")  # the total known from the first line on
    assert any(" left] " in line for line in progress if line.startswith("[1/2"))  # an estimate once one ended
    fronts = [line.strip() for line in captured.err.splitlines() if "front so far" in line]
    assert len(fronts) == 2 and all(len(line) < 110 for line in fronts)
    client = MlflowClient(url)
    exp = client.get_experiment_by_name("served")
    children = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("dcsweep.role") == "child"]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    names = {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert {"model.dcz", "layers.json", "plots"} <= names
    stored = list(artifacts.rglob("artifacts/model.dcz"))
    assert len(stored) == 2  # the server holds the artifacts, proxied through HTTP
    aliases = out["registered_model"]["aliases"]
    by_run = {t["run_id"]: t["accuracy"] for t in out["trials"]}
    scores = _load_and_score(url, *(f"models:/served@{a}" for a in aliases), *(f"runs:/{r}/model" for r in by_run))
    assert all(scores[f"runs:/{r}/model"] == accuracy for r, accuracy in by_run.items())
    for alias in aliases:
        assert scores[f"models:/served@{alias}"] == by_run[client.get_model_version_by_alias("served", alias).run_id]
    local = client.download_artifacts(children[0].info.run_id, "model.dcz", str(tmp_path))
    assert load_compressed(local) is not None
    assert main(["pareto", "served", "--tracking-uri", url]) == 0


@pytest.mark.slow
def test_multi_objective_optuna_optimises_both(ray_local, tmp_path: Path, capsys) -> None:
    """Multi-objective TPE through Tune's OptunaSearch gets both objectives of every finished trial."""
    import optuna

    (tmp_path / "mo.yaml").write_text("""
name: mo
fixed: {model: lenet300, dataset: digits, epochs: 3, prune_steps: 1, prune_epochs: 2, share_epochs: 1}
swept:
  sparsity: {uniform: [0.5, 0.98]}
  k: {choice: [2, 4, 16, 32]}
search: {algorithm: optuna, num_samples: 6, max_concurrent: 2, seed: 0}
resources: {cpu: 1}
""")
    seen: list[optuna.study.Study] = []
    original = optuna.study.create_study  # what OptunaSearch calls

    def spy(*args, **kwargs):
        study = original(*args, **kwargs)
        seen.append(study)
        return study

    optuna.study.create_study = spy
    try:
        code = main(["run", str(tmp_path / "mo.yaml"), "--name", "mo", "--storage", str(tmp_path), "--json"])
    finally:
        optuna.study.create_study = original
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and len(out["trials"]) == 6
    study = seen[-1]
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 6 and all(len(t.values) == 2 for t in done)
    by_size = {t["compressed_bytes"]: t["accuracy"] for t in out["trials"]}
    assert sorted(v[1] for v in (t.values for t in done)) == sorted(by_size)  # Optuna saw the real sizes
    assert len(study.best_trials) >= 1  # a Pareto set, not a single best


def _random_draws(tmp_path: Path, seed: int) -> list[float]:
    """The sparsities Tune's searcher gives a random-search space's first three trials."""
    from ray.tune.experiment import Experiment

    from dcsweep.runner.adapters.driver import _tune_config, param_space
    from dcsweep.runner.cycle.config import check_settings
    from dcsweep.search_spaces import load_space

    path = tmp_path / f"random-{seed}.yaml"
    path.write_text("name: rnd\nfixed: {model: lenet300, dataset: digits}\n"
                    "swept: {sparsity: {uniform: [0.8, 0.99]}}\n"
                    f"search: {{algorithm: random, num_samples: 3, seed: {seed}}}\n")
    space = load_space(path, check_settings)
    searcher = _tune_config(space).search_alg
    searcher.add_configurations([Experiment("rnd", lambda config: None, config=param_space(space), num_samples=3)])
    draws = []
    for _ in range(3):
        trial = searcher.next_trial()
        draws.append(trial.config["sparsity"])
        searcher.on_trial_complete(trial.trial_id)
    return draws


def test_random_search_draws_the_same_trials_from_the_same_seed(tmp_path: Path) -> None:
    """search.seed was passed to Optuna only; random search drew from numpy's global state."""
    first = _random_draws(tmp_path, 0)
    assert _random_draws(tmp_path, 0) == first and len(set(first)) == 3
    assert _random_draws(tmp_path, 1) != first


@pytest.mark.slow
@pytest.mark.parametrize("taken", ["registered model", "experiment"])
def test_a_new_sweep_refuses_a_name_the_tracking_store_has(taken: str, ray_local, tmp_path: Path, capsys) -> None:
    """`dcsweep run --name N` where MLflow already has a registered model (or an experiment)
    named N that this sweep did not make: exit 2 with the one-line reason, and nothing is
    registered, logged or left in the storage."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    if taken == "registered model":
        client.create_registered_model("owned", description="someone else's")
    else:
        client.create_experiment("owned")
    before = [(e.experiment_id, e.name) for e in client.search_experiments()]
    (tmp_path / "two.yaml").write_text(SPACE.replace("[0.5, 0.9, 0.97]", "[0.9]"))
    code = main(["run", str(tmp_path / "two.yaml"), "--name", "owned", "--storage", str(tmp_path / "store"),
                 "--tracking-uri", uri, "--json"])
    err = capsys.readouterr().err.strip().splitlines()
    article = "an" if taken == "experiment" else "a"
    assert code == 2 and err[-1].startswith(f"dcsweep: error: the tracking store already has {article} {taken} "
                                            f"named 'owned'"), err[-3:]
    assert "give another --name" in err[-1]
    assert [(e.experiment_id, e.name) for e in client.search_experiments()] == before
    assert client.search_model_versions("name = 'owned'") == []
    assert [m.name for m in client.search_registered_models()] == (["owned"] if taken == "registered model" else [])
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file()]  # no sweep, no stage
    assert main(["list", "--storage", str(tmp_path / "store"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sweeps"] == []
