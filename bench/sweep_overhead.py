"""The sweep runner's overhead: `dcsweep run` against the same trials in a plain Python loop.

    python bench/sweep_overhead.py [--space lenet300-digits]

One run does both: the sweep through the real CLI (Ray start, scheduling, per-phase checkpoints,
MLflow logging), then the same dense baseline and the same trials back to back with
``train_baseline`` and ``run_cycle``. Overhead = sweep wall time minus the ideal wall time of its
own work (baseline time + the trials' own seconds / concurrent trials). Targets: overhead at most
15% of the sweep's wall time, and the sweep faster than the loop where trials run concurrently.
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
from dcsweep.runner.sweep import check_settings
from dcsweep.search_spaces import load_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="lenet300-digits")
    args = parser.parse_args()
    space = load_space(args.space, check_settings)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run([str(Path(sys.executable).parent / "dcsweep"), "run", args.space, "--storage", tmp,
                               "--name", "bench", "--json"], capture_output=True, text=True)
        sweep_wall = time.perf_counter() - start
        if done.returncode:
            sys.exit(f"dcsweep run failed:\n{done.stderr[-3000:]}")
        out = json.loads(done.stdout)
        meta = json.loads(next(Path(tmp, "baselines").glob("*/meta.json")).read_text())
        from mlflow.tracking import MlflowClient

        client = MlflowClient(out["tracking_uri"])
        trial_seconds = [client.get_run(t["run_id"]).data.metrics["seconds_total"] for t in out["trials"]]
        concurrent = min(space.max_concurrent, int((os.cpu_count() or 1) // max(space.cpu, 1e-9)), len(trial_seconds))
        ideal = meta["seconds"] + sum(trial_seconds) / max(concurrent, 1)
        overhead = sweep_wall - ideal

        start = time.perf_counter()
        dense = Path(tmp, "loop-dense.dcz")
        train_baseline(space.fixed, dense)
        grid = [d for d in space.swept]
        for values in itertools.product(*(d.values for d in grid)):
            run_cycle({**space.fixed, **dict(zip((d.name for d in grid), values, strict=True)),
                       "dense_path": str(dense)}, output=Path(tmp, "loop.dcz"))
        loop_wall = time.perf_counter() - start

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
