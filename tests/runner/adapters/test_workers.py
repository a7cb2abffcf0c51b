"""Multi-worker trials on the session's real Ray instance (2 CPUs): each trial's cycle runs on
two Ray Train workers (gloo), its phases reach Tune and MLflow as a one-worker trial's do, its
stages are shared, and trials that do not all fit at once still all finish."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from dcsweep.runner.adapters.driver import run_sweep
from dcsweep.runner.sweep import Storage, new_sweep, space_as_run
from dcsweep.runner.sweep.places import trials_at_once
from dcsweep.search_spaces import SearchSpace

# two workers of half a CPU each: a trial takes one of the instance's two CPUs, and with its
# own process (TRIAL_PROCESS_CPU) two trials do not fit at once
SPACE = """
name: two-workers
fixed: {model: lenet300, dataset: digits, epochs: 2, prune_steps: 1, prune_epochs: 1, share_epochs: 1,
        sparsity: 0.9}
swept:
  k: {grid: [4, 16]}
search: {algorithm: grid, max_concurrent: 2}
resources: {cpu: 0.5, workers: 2}
max_failures: 1
"""


@pytest.fixture(scope="module")
def swept(ray_local, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("workers")
    (folder / "space.yaml").write_text(SPACE)
    sweep = new_sweep(space_as_run(folder / "space.yaml"), "two-workers", Storage(folder / "store"), None, False,
                      None)
    return run_sweep(sweep), folder


def test_every_multi_worker_trial_finishes_with_its_stages_shared(swept) -> None:
    result, _ = swept
    assert result["errors"] == [] and len(result["trials"]) == 2 and not result["interrupted"]
    # the dense and the pruned stage computed once, by the first trial, and taken by the second
    assert result["stages"]["computed"] == 4 and result["stages"]["reused"] == 2
    assert {t["params"]["k"] for t in result["trials"]} == {"4", "16"}
    assert all(0.1 < t["accuracy"] <= 1 for t in result["trials"])
    assert not list((swept[1] / "store" / "train").glob("*"))  # Ray Train's records of each attempt, removed


def test_mlflow_has_the_workers_and_the_world_size(swept) -> None:
    _, folder = swept
    client = MlflowClient(f"sqlite:///{folder / 'store' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("two-workers").experiment_id])
    children = [r for r in runs if r.data.tags.get("dcsweep.role") == "child"]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert {r.data.params["workers"] for r in children} == {"2"}
    assert {r.data.tags.get("dcsweep.world_size") for r in children} == {"2"}


def test_no_placement_group_outlives_its_trial(swept) -> None:
    import ray

    live = [pg for pg in ray.util.placement_group_table().values() if pg["state"] not in ("REMOVED",)]
    assert live == [], live


@pytest.mark.parametrize(("workers", "cpu", "gpu", "cpus", "gpus", "expected"), [
    (1, 1.0, 0.0, 2.0, 0.0, 4),  # one worker: search.max_concurrent alone
    (2, 0.5, 0.0, 2.0, 0.0, 1),  # the trial's own process takes a sliver: one trial of 1 CPU at a time
    (2, 1.0, 1.0, 64.0, 8.0, 4),  # 8 GPUs hold 4 trials of 2
    (4, 1.0, 1.0, 64.0, 8.0, 2),
    (8, 1.0, 1.0, 64.0, 4.0, 1),  # never fewer than one: the fit was checked before the sweep
])
def test_trials_at_once_fit_the_cluster(workers: int, cpu: float, gpu: float, cpus: float, gpus: float,
                                        expected: int) -> None:
    space = SearchSpace("s", "s", cpu=cpu, gpu=gpu, workers=workers, max_concurrent=4)
    assert trials_at_once(space, cpus, gpus) == expected
