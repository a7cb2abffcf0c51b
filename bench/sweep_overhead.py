"""The sweep runner's overhead: `dcsweep run` against the same trials in a plain Python loop.

    python bench/sweep_overhead.py [--space lenet300-digits]

One run does both, each as its own process timed from start to exit: the sweep through the real
CLI (Ray start, scheduling, per-phase checkpoints, MLflow logging), then the same trials back to
back with ``run_cycle`` and a stage store of their own, so the loop shares exactly the stages the
sweep shares (each trial writing the same .dcz and plots a sweep's trial writes).

Overhead = sweep wall time minus the ideal wall time of its own work: the dense stage (which
every trial needs, so nothing else can run while it trains) plus the rest of the trials' own
seconds spread over the concurrent slots. It holds process and Ray start, worker start,
scheduling, checkpoints, MLflow and Ray's shutdown. It also prints how many Ray workers ran
trials (read from Ray's own logs: a worker started and then dropped counts too), and Ray's own
floor: a process that only starts Ray, starts two workers that import what a trial imports,
and stops Ray (what any runner on Ray pays before and after its work). Targets (issue
11): overhead at most 15% of the sweep's wall time, and the sweep faster than the loop.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dcsweep.runner.cycle import run_cycle
from dcsweep.runner.cycle.config import check_settings
from dcsweep.runner.sweep.stages import StageStore
from dcsweep.search_spaces import load_space


def loop(space_name: str, folder: Path) -> None:
    """The same work without Ray or MLflow: one process, one trial after another, sharing what
    the sweep shares."""
    space = load_space(space_name, check_settings)
    store = StageStore(folder / "loop-store", None if space.share_stages else ("dense",))
    names = [d.name for d in space.swept]
    for i, values in enumerate(itertools.product(*(d.values for d in space.swept))):
        run_cycle({**space.fixed, **dict(zip(names, values, strict=True))}, stages=store,
                  output=folder / f"loop-{i}" / "model.dcz", plots=folder / f"loop-{i}" / "plots")


FLOOR = """
import logging, ray
from dcsweep.runner.adapters.env import loopback_only, set_driver_defaults
set_driver_defaults()
with loopback_only():
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)

@ray.remote(num_cpus=1)
class Worker:  # what a trial's worker imports before its first phase
    def ready(self) -> bool:
        import dcsweep.runner.adapters.trainable  # noqa: F401
        return True

ray.get([w.ready.remote() for w in (Worker.remote(), Worker.remote())])
ray.shutdown()
"""


def _timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return wall, done


def trial_workers(ray_tmp: Path) -> int:
    """Ray workers that were started as trial actors, from the session logs under ``ray_tmp``
    (each worker writes ``:actor_name:<class>`` to its own log when it becomes an actor)."""
    return sum(":actor_name:ImplicitFunc" in log.read_text(errors="replace")
               for log in ray_tmp.glob("ray/session_2*/logs/worker-*.out"))  # not session_latest, a link


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="lenet300-digits")
    parser.add_argument("--loop", type=Path, help=argparse.SUPPRESS)  # the loop's own process
    args = parser.parse_args()
    if args.loop:
        loop(args.space, args.loop)
        return
    space = load_space(args.space, check_settings)
    if space.algorithm != "grid":
        sys.exit(f"--space={args.space!r}: the loop replays a grid; this space searches with {space.algorithm}")
    # a short folder of Ray's own: its socket paths must stay under the OS limit
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(prefix="rt", dir="/tmp") as ray_tmp:
        command = [str(Path(sys.executable).parent / "dcsweep"), "run", args.space, "--storage", tmp, "--name",
                   "bench", "--json"]
        sweep_wall, done = _timed(command, {**os.environ, "RAY_TMPDIR": ray_tmp})
        out = json.loads(done.stdout)
        workers = trial_workers(Path(ray_tmp))
        from mlflow.tracking import MlflowClient

        client = MlflowClient(out["tracking_uri"])
        metrics = [client.get_run(t["run_id"]).data.metrics for t in out["trials"]]
        concurrent = min(space.max_concurrent, int((os.cpu_count() or 1) // max(space.cpu, 1e-9)), len(metrics))
        dense = json.loads(next(Path(tmp, "stages", "dense").glob("*/stage.json")).read_text())["seconds"]
        # the dense stage alone, then everything else (waits for the dense stage left out) over the slots
        rest = sum(m["seconds_total"] - m["seconds_dense"] for m in metrics)
        ideal = dense + rest / max(concurrent, 1)
        overhead = sweep_wall - ideal
        loop_wall, _ = _timed([sys.executable, __file__, "--space", args.space, "--loop", tmp])
    floor, _ = _timed([sys.executable, "-c", FLOOR])

    print(f"space {args.space}: {len(metrics)} trials, {concurrent} at a time, {os.cpu_count()} CPUs, "
          f"stages {'shared' if space.share_stages else 'not shared (the dense model only)'}")
    print(f"  dcsweep run (Ray Tune + MLflow)   {sweep_wall:7.1f} s wall, {workers} Ray workers started for trials")
    print(f"  plain loop of run_cycle            {loop_wall:7.1f} s wall  (sweep is {loop_wall / sweep_wall:.2f}x "
          f"{'faster' if sweep_wall < loop_wall else 'slower'})")
    print(f"  sweep's own work: dense stage {dense:.1f} s + the rest of the trials {rest:.1f} s "
          f"/ {concurrent} = {ideal:.1f} s ideal")
    print(f"  Ray's own floor: a process that starts Ray, two workers that import a trial's modules, "
          f"and stops Ray: {floor:.1f} s ({100 * floor / sweep_wall:.0f}% of the sweep's wall time)")
    print(f"  runner overhead {overhead:.1f} s = {100 * overhead / sweep_wall:.0f}% of the sweep's wall time "
          f"(target <= 15%: {'PASS' if overhead <= 0.15 * sweep_wall else 'FAIL'}); sweep faster than the loop: "
          f"{'PASS' if sweep_wall < loop_wall else 'FAIL'}")


if __name__ == "__main__":
    main()
