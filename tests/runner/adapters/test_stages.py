"""Shared stages in real sweeps: a pruned model two running trials need is computed once, a
later sweep takes every stage of an earlier one, and ``share_stages: false`` turns it off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from dcsweep.compression import load_compressed
from dcsweep.compression.layers import compressible_layers, structural_mask
from dcsweep.runner.adapters.driver import run_sweep
from dcsweep.runner.sweep import Storage, new_sweep, space_as_run

#: Two trials that need the same pruned model, started together.
SPACE = """
name: pair
fixed: {model: lenet300, dataset: digits, epochs: 3, prune_steps: 2, prune_epochs: 4, share_epochs: 1}
swept:
  sparsity: {grid: [0.9]}
  k: {grid: [2, 16]}
search: {algorithm: grid, max_concurrent: 2}
resources: {cpu: 1}
"""


def sweep(folder: Path, name: str, extra: str = "", space: str = SPACE) -> tuple[dict, list]:
    (folder / f"{name}.yaml").write_text(space + extra)
    result = run_sweep(new_sweep(space_as_run(folder / f"{name}.yaml"), name, Storage(folder / "store"), None,
                                 False, None))
    client = MlflowClient(result["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    return result, runs


def children(runs: list) -> list:
    return [r for r in runs if r.data.tags.get("dcsweep.role") == "child"]


def parent_metrics(runs: list) -> dict[str, float]:
    return next(r for r in runs if r.data.tags.get("dcsweep.role") == "parent").data.metrics


@pytest.fixture(scope="module")
def shared(ray_local, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    folder = tmp_path_factory.mktemp("stages")
    return folder, *sweep(folder, "first")


def test_two_running_trials_compute_their_pruned_stage_once(shared) -> None:
    folder, result, runs = shared
    kids = children(runs)
    assert len(kids) == 2 and not result["errors"]
    pruned = {r.data.tags["dcsweep.stage.pruned"] for r in kids}
    assert len(pruned) == 1  # one pruned model for both
    assert sorted(r.data.tags["dcsweep.stage.pruned.reused"] for r in kids) == ["false", "true"]
    assert [r.data.tags["dcsweep.stage.shared.reused"] for r in kids] == ["false", "false"]  # k differs
    assert [p.name for p in (folder / "store" / "stages" / "pruned").iterdir()] == list(pruned)
    # one dense, one pruned and two shared stages computed; the dense and the pruned taken once each
    assert result["stages"]["computed"] == 4 and result["stages"]["reused"] == 2
    metrics = parent_metrics(runs)
    assert (metrics["stages_computed"], metrics["stages_reused"]) == (4, 2)
    saved = [r.data.metrics["seconds_saved_pruned"] for r in kids]
    assert min(saved) == 0 and max(saved) > 0
    total = sum(r.data.metrics[f"seconds_saved_{p}"] for r in kids for p in ("dense", "pruned", "shared"))
    assert metrics["trial_seconds_saved"] == pytest.approx(total)


def test_both_trials_hold_the_same_pruned_weights(shared) -> None:
    folder, _, _ = shared
    finals = sorted((folder / "store" / "sweeps" / "first" / "tune").glob("trial_*/checkpoint_*/model.dcz"))
    masks = []
    for trial in {f.parents[1] for f in finals}:
        last = max(trial.glob("checkpoint_*/model.dcz"))
        model = load_compressed(last)
        masks.append({name: structural_mask(m) for name, m in compressible_layers(model)})
    assert len(masks) == 2 and masks[0].keys() == masks[1].keys()
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


def test_a_later_sweep_takes_every_stage_and_a_changed_setting_recomputes(shared) -> None:
    folder, first, _ = shared
    again, runs = sweep(folder, "again")
    assert again["stages"] == {"computed": 0, "reused": 6, "trial_seconds_saved": pytest.approx(
        again["stages"]["trial_seconds_saved"])} and again["stages"]["trial_seconds_saved"] > 0
    assert {(t["params"]["k"], t["accuracy"], t["compressed_bytes"]) for t in again["trials"]} == {
        (t["params"]["k"], t["accuracy"], t["compressed_bytes"]) for t in first["trials"]}
    changed, _ = sweep(folder, "changed", "", SPACE.replace("prune_epochs: 4", "prune_epochs: 3"))
    # the same dense model; pruned again, once, and so shared again
    assert changed["stages"]["computed"] == 3 and changed["stages"]["reused"] == 3


def test_share_stages_false_computes_every_stage_in_every_trial(ray_local, tmp_path: Path) -> None:
    """... but the dense model, which a sweep has always trained once."""
    result, runs = sweep(tmp_path, "apart", "share_stages: false\n")
    assert result["stages"]["computed"] == 5 and result["stages"]["reused"] == 1
    assert [p.name for p in (tmp_path / "store" / "stages").iterdir()] == ["dense"]
    assert all(r.data.tags["dcsweep.stage.pruned.reused"] == "false" for r in children(runs))
    assert sorted(r.data.tags["dcsweep.stage.dense.reused"] for r in children(runs)) == ["false", "true"]
