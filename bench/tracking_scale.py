"""The driver's MLflow cost per trial as a sweep grows: 2,000 synthetic trials through the real
tracking code (runner/adapters/synthetic.py), in a fresh SQLite store, in one run.

    python bench/tracking_scale.py [--trials 2000]

Prints the mean seconds per trial over the first 200 trials and over the last 200, and the
end of the sweep (the front re-read from every run, pareto.csv/png, the registered front).
Targets (issue 13): the last 200 within 1.2x of the first 200, and under 0.2 s per trial on an
idle machine. The peer is dcsweep before issue 13, as that issue measured it: 0.12 s a trial
for the first trials, 0.37 s by the 200th, 1.9 s once 1,000 runs existed, 6.3 s at 3,000.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from dcsweep.runner.adapters.synthetic import drive, synthetic_results
from dcsweep.runner.adapters.tracking import SweepTracker, read_trials
from dcsweep.runner.cycle import run_cycle

PEER = "before issue 13: 0.12 s (first trials), 0.37 s (200th), 1.9 s (1,000 runs), 6.3 s (3,000 runs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args()
    if args.trials < 400:
        parser.error(f"--trials={args.trials}: at least 400 (two windows of 200)")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="dcsweep-bench-") as tmp:
        folder = Path(tmp)
        dcz = folder / "model.dcz"
        template = run_cycle({"model": "lenet300", "dataset": "digits", "epochs": 2, "prune_steps": 1,
                              "prune_epochs": 1, "share_epochs": 1, "sparsity": 0.9, "k": 8}, output=dcz)
        tracker = SweepTracker(f"sqlite:///{folder / 'mlflow.db'}", "scale", (folder / "artifacts").as_uri())
        tracker.swept = ("sparsity", "k")
        seconds = drive(tracker, synthetic_results(template, args.trials), dcz)
        first, last = statistics.mean(seconds[:200]), statistics.mean(seconds[-200:])
        start = time.perf_counter()
        trials = tracker.update_pareto()
        end = time.perf_counter() - start
        read = len(read_trials(tracker.client, tracker.experiment_id))
        front = sum(t.pareto_optimal for t in trials)
    print(f"{args.trials} synthetic trials through the real tracker (SQLite store)")
    print(f"  per trial, trials 1-200:         {first:.3f} s")
    verdict = (f"target <= 1.2x: {'PASS' if last <= 1.2 * first else 'FAIL'}; "
               f"< 0.2 s: {'PASS' if last < 0.2 else 'FAIL'}")
    print(f"  per trial, trials {args.trials - 199}-{args.trials}:    {last:.3f} s  ({last / first:.2f}x the first "
          f"200; {verdict})")
    print(f"  end of sweep: {end:.1f} s (every run re-read: {read} of {args.trials}; front {front}; "
          f"registered aliases {sorted(tracker.registered)})")
    print(f"  peer, {PEER}")


if __name__ == "__main__":
    main()
