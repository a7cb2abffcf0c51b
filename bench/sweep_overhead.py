"""The sweep runner's overhead: `dcsweep run` against the same trials in a plain Python loop.

    python bench/sweep_overhead.py [--space lenet300-digits]

One run does both, each as its own process timed from start to exit: the sweep through the real
CLI (Ray start, scheduling, per-phase checkpoints, MLflow logging), then the same dense baseline
and the same trials back to back with ``train_baseline`` and ``run_cycle`` (each trial writing
the same .dcz and plots a sweep's trial writes). Overhead = sweep wall time minus the ideal wall
time of its own work (the baseline's training time + the trials' own seconds / concurrent
trials), so it holds process and Ray start, worker start, scheduling, checkpoints, MLflow and
Ray's shutdown. Targets: overhead at most 15% of the sweep's wall time, and the sweep faster than
the loop where trials run concurrently.
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

from dcsweep.runner.cycle import run_cycle, train_baseline
from dcsweep.runner.cycle.config import check_settings
from dcsweep.search_spaces import load_space


def loop(space_name: str, folder: Path) -> None:
    """The same work without Ray or MLflow: one process, one trial after another."""
    space = load_space(space_name, check_settings)
    dense = folder / "loop-dense.dcz"
    train_baseline(space.fixed, dense)
    names = [d.name for d in space.swept]
    for i, values in enumerate(itertools.product(*(d.values for d in space.swept))):
        run_cycle({**space.fixed, **dict(zip(names, values, strict=True)), "dense_path": str(dense)},
                  output=folder / f"loop-{i}" / "model.dcz", plots=folder / f"loop-{i}" / "plots")


def _timed(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return wall, done


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
    with tempfile.TemporaryDirectory() as tmp:
        sweep_wall, done = _timed([str(Path(sys.executable).parent / "dcsweep"), "run", args.space,
                                   "--storage", tmp, "--name", "bench", "--json"])
        out = json.loads(done.stdout)
        meta = json.loads(next(Path(tmp, "baselines").glob("*/meta.json")).read_text())
        from mlflow.tracking import MlflowClient

        client = MlflowClient(out["tracking_uri"])
        trial_seconds = [client.get_run(t["run_id"]).data.metrics["seconds_total"] for t in out["trials"]]
        concurrent = min(space.max_concurrent, int((os.cpu_count() or 1) // max(space.cpu, 1e-9)), len(trial_seconds))
        ideal = meta["seconds"] + sum(trial_seconds) / max(concurrent, 1)
        overhead = sweep_wall - ideal
        loop_wall, _ = _timed([sys.executable, __file__, "--space", args.space, "--loop", tmp])

    print(f"space {args.space}: {len(trial_seconds)} trials, {concurrent} at a time, {os.cpu_count()} CPUs")
    print(f"  dcsweep run (Ray Tune + MLflow)   {sweep_wall:7.1f} s wall")
    print(f"  plain loop of run_cycle            {loop_wall:7.1f} s wall  (sweep is {loop_wall / sweep_wall:.2f}x "
          f"{'faster' if sweep_wall < loop_wall else 'slower'})")
    print(f"  sweep's own work: baseline {meta['seconds']:.1f} s + trials {sum(trial_seconds):.1f} s "
          f"/ {concurrent} = {ideal:.1f} s ideal")
    print(f"  runner overhead {overhead:.1f} s = {100 * overhead / sweep_wall:.0f}% of the sweep's wall time "
          f"(target <= 15%: {'PASS' if overhead <= 0.15 * sweep_wall else 'FAIL'}); sweep faster than the loop: "
          f"{'PASS' if sweep_wall < loop_wall else 'FAIL'}")


if __name__ == "__main__":
    main()
