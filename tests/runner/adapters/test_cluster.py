"""A real two-node Ray cluster on this machine: `ray start --head` and `ray start --address` as
separate processes (one CPU each), the CLI as a driver or submitted through the Jobs API. Every
process is ended by id, the cluster included."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dcsweep.runner.adapters.env import TEST_HOOKS
from dcsweep.search_spaces import list_spaces

from ..helpers import can_unshare, child_runs, children, cli, finish, kill, trial_rows

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
RAY = str(Path(sys.executable).parent / "ray")
SPACE = """
name: two-nodes
fixed: {model: lenet300, dataset: digits, epochs: 4, prune_steps: 2, prune_epochs: 12, share_epochs: 4}
swept:
  sparsity: {grid: [0.5, 0.7, 0.8, 0.9, 0.95, 0.97]}
  k: {grid: [4]}
search: {algorithm: grid, max_concurrent: 2}
resources: {cpu: 1}
max_failures: 3
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Ray 2.60 clusters use token authentication: every node and client sends ~/.ray/auth_token
AUTH = {"RAY_AUTH_MODE": "token"}


def _start(*argv: str, env: dict[str, str]) -> subprocess.Popen:
    # a job's entrypoint says `python`: on a node that is the Python of the node's environment
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, **AUTH, **env, "PATH": path})


def _nodes(address: str) -> list[dict]:
    code = (f"import json, ray; ray.init(address={address!r}, log_to_driver=False, logging_level='ERROR'); "
            "print('nodes:', json.dumps([{'id': n['NodeID'], 'head': 'node:__internal_head__' in n['Resources']} "
            "for n in ray.nodes() if n['Alive']]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **AUTH})
    # Ray prints its own lines too (about a node that died, say): the answer is the marked one
    found = [line for line in done.stdout.splitlines() if line.startswith("nodes: ")]
    return json.loads(found[-1].removeprefix("nodes: ")) if done.returncode == 0 and found else []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    port, dashboard = _port(), _port()
    folder = tmp_path_factory.mktemp("cluster")
    (folder / "space.yaml").write_text(SPACE)
    # The nodes' workers make each sweep's first two trials wait for each other after "dense":
    # both then run at once, one per node. Without that, trials of a second on the head's warm
    # worker may all be done before the other node's first worker has imported torch, and Tune
    # rightly hands them to the warm one.
    env = {TEST_HOOKS: f"meet:dense:{folder / 'met'}"}
    head = _start("--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard", "true",
                  "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), env=env)
    procs = [head]
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while not _nodes(address) and time.monotonic() < deadline:
            time.sleep(1)
        procs.append(_start("--address", address, "--num-cpus", "1", env=env))
        nodes: list[dict] = []
        while len(nodes) < 2 and time.monotonic() < deadline:
            time.sleep(1)
            nodes = _nodes(address)
        assert len(nodes) == 2, "the two-node cluster did not come up"
        yield {"address": address, "jobs": f"http://127.0.0.1:{dashboard}", "worker_proc": procs[1],
               "worker": next(n["id"] for n in nodes if not n["head"]), "folder": folder}
    finally:
        pids = [p for proc in procs for p in children(proc.pid)]
        for proc in procs:
            kill([proc.pid])
        kill(pids)
        for proc in procs:
            proc.wait()


def _trial_nodes(tune_dir: Path) -> dict[str, set]:
    return {d.name: {r.get("node_id") for r in trial_rows(d)} for d in tune_dir.glob("trial_*")}


def test_trials_land_on_both_nodes(cluster) -> None:
    folder = cluster["folder"]
    with cli("run", str(folder / "space.yaml"), "--name", "spread", "--storage", str(folder / "s"),
              "--address", cluster["address"], "--json") as proc:
        result = finish(proc)
    assert not result["errors"] and len(result["trials"]) == 6
    used = set().union(*_trial_nodes(folder / "s" / "sweeps" / "spread" / "tune").values())
    assert len(used) == 2 and cluster["worker"] in used


def test_a_stage_computed_on_one_node_is_taken_on_the_other(cluster) -> None:
    """After "spread" above: two trials that both take its sparsity-0.5 stages meet after the dense
    phase, so they run at once, one per node; one of them is on the node that did not compute."""
    folder = cluster["folder"]
    spread = folder / "s" / "sweeps" / "spread" / "tune"
    if not spread.exists():
        pytest.skip("needs the sweep of test_trials_land_on_both_nodes")
    computed_on = next(nodes for name, nodes in _trial_nodes(spread).items() if "sparsity=0.5000" in name)
    (folder / "pair.yaml").write_text(SPACE.replace("[0.5, 0.7, 0.8, 0.9, 0.95, 0.97]", "[0.5]")
                                      .replace("k: {grid: [4]}", "k: {grid: [4, 8]}"))
    with cli("run", str(folder / "pair.yaml"), "--name", "pair", "--storage", str(folder / "s"),
              "--address", cluster["address"], "--json") as proc:
        result = finish(proc)
    assert not result["errors"] and result["stages"]["computed"] == 1  # only k=8's shared stage
    runs = child_runs(result["tracking_uri"], "pair")
    assert {r.data.tags["dcsweep.stage.pruned.reused"] for r in runs} == {"true"}
    used_on = set().union(*_trial_nodes(folder / "s" / "sweeps" / "pair" / "tune").values())
    assert len(computed_on) == 1 and len(used_on) == 2 and used_on - computed_on


def _job(jobs: str, job_id: str) -> dict:
    """The job's status, log tail and runtime env, asked by a fresh client process (this one's
    Ray settings were fixed by the session's local instance, without token authentication)."""
    code = ("import json, sys; from ray.job_submission import JobSubmissionClient as C; c = C(sys.argv[1]); "
            "i = c.get_job_info(sys.argv[2]); print(json.dumps({'status': str(i.status), "
            "'logs': c.get_job_logs(sys.argv[2]), 'runtime_env': i.runtime_env}))")
    done = subprocess.run([sys.executable, "-c", code, jobs, job_id], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **AUTH})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_job_submitted_through_the_jobs_api_runs_the_sweep(cluster) -> None:
    folder = cluster["folder"]
    uri = f"sqlite:///{folder / 'submitted.db'}"
    with cli("submit", str(folder / "space.yaml"), "--address", cluster["jobs"], "--name", "sent",
              "--storage", str(folder / "s"), "--smoke-test", "--json", env={"MLFLOW_TRACKING_URI": uri}) as proc:
        sent = finish(proc)
    assert sent["job_id"] in sent["follow"] and "--address auto" in sent["entrypoint"]
    deadline = time.monotonic() + 400
    while (job := _job(cluster["jobs"], sent["job_id"]))["status"] not in {"SUCCEEDED", "FAILED", "STOPPED"}:
        assert time.monotonic() < deadline
        time.sleep(3)
    assert job["status"] == "SUCCEEDED", job["logs"][-3000:]
    assert job["runtime_env"]["py_modules"] and job["runtime_env"]["env_vars"] == {"MLFLOW_TRACKING_URI": uri}
    assert "runtime_resources" in job["logs"]  # "dcsweep from ...": the shipped copy, not this checkout
    assert len(child_runs(uri, "sent")) == 2  # the job logged where the submitter's environment said


def test_the_shipped_package_imports_without_the_installed_one(tmp_path: Path) -> None:
    from dcsweep.runner.adapters.submit import stage_package

    stage_package(tmp_path)
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
            f"sys.path.insert(0, {str(tmp_path)!r}); "
            "import dcsweep.runner.cli, dcsweep.search_spaces as s; "
            "print(dcsweep.runner.cli.__file__, len(s.list_spaces()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    path, spaces = done.stdout.split()
    assert path.startswith(str(tmp_path)) and int(spaces) == len(list_spaces())


def test_sweep_completes_when_a_worker_node_dies(cluster) -> None:
    folder = cluster["folder"]
    # a storage of its own: trials that compute their stages, not take the other sweeps' ones
    tune_dir = folder / "s-survivor" / "sweeps" / "survivor" / "tune"
    with cli("run", str(folder / "space.yaml"), "--name", "survivor", "--storage", str(folder / "s-survivor"),
              "--address", cluster["address"], "--json") as proc:
        deadline = time.monotonic() + 300
        while not any(cluster["worker"] in nodes for nodes in _trial_nodes(tune_dir).values()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        worker = cluster["worker_proc"]
        pids = children(worker.pid)
        os.killpg(worker.pid, signal.SIGKILL)  # the node and every process on it
        kill(pids)
        result = finish(proc)
    assert not result["errors"] and len(result["trials"]) == 6
    runs = child_runs(result["tracking_uri"], "survivor")
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    client = MlflowClient(result["tracking_uri"])
    for run in runs:  # a trial moved to the head node logs each phase once
        assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [0, 1, 2, 3]


@pytest.mark.skipif(not can_unshare(), reason="needs mount namespaces (unshare -m) to hide a path from a node")
def test_a_storage_path_some_node_cannot_see_is_refused(cluster) -> None:
    """One more node, started in its own mount namespace where the storage is an empty tmpfs: a
    local path on a multi-node cluster that is not shared."""
    folder = cluster["folder"]
    storage = folder / "unshared"
    storage.mkdir()
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    before = {n["id"] for n in _nodes(cluster["address"])}
    node = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs none {storage} && exec {RAY} start --block "
         f"--disable-usage-stats --address {cluster['address']} --num-cpus 1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, **AUTH, "PATH": path})
    try:
        deadline = time.monotonic() + 120
        while not {n["id"] for n in _nodes(cluster["address"])} - before:  # the hidden node joined
            assert time.monotonic() < deadline and node.poll() is None
            time.sleep(1)
        with cli("run", str(folder / "space.yaml"), "--name", "unshared", "--storage", str(storage),
                  "--address", cluster["address"], "--json") as proc:
            out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2 and not out, err[:3000]
        last = err.strip().splitlines()[-1]
        assert last.startswith("dcsweep: error: storage") and "cannot see" in last
        assert not (storage / "sweeps" / "unshared").exists() and not list(storage.glob(".shared-probe-*"))
    finally:
        pids = children(node.pid)
        kill([node.pid, *pids])
        node.wait()
