"""Shared stages: one sweep with them, without them, and with a pruning ladder, in one run.

    python bench/sweep_sharing.py [--space lenet300-digits] [--modes shared,unshared,ladder]
                                  [--smoke-test] [--set KEY=VALUE ...]

``--smoke-test`` runs the space's smoke settings (as ``dcsweep run --smoke-test`` does) and
``--set`` overrides a fixed setting, e.g. ``--set data_root=/data`` for the CIFAR-10 spaces.

Each mode runs the space through the real CLI (`dcsweep run`) in a fresh storage, as its own
process timed from start to exit:

- ``shared``: the default. A pruned (or shared) model is computed once and every trial that
  needs it takes it from the sweep storage.
- ``unshared``: ``share_stages: false``, every trial prunes its own model (dcsweep before
  shared stages, and every other sweep tool).
- ``ladder``: ``prune_schedule: ladder``, one pruning trajectory up the swept sparsities, each
  rung pruned one step further from the rung below and retrained (the paper's iterative
  pruning); a different experiment, so its front differs.

For each it prints the wall time, the trial-seconds (the sum of every trial's own time, waits for
a stage another trial computes included), the pruning runs (pruned models computed: five steps
each when independent, one step per ladder rung), the Ray workers that ran trials, and the
hypervolume of
the accuracy-vs-size front: the area of the (size, accuracy) plane that the front dominates,
bounded by the reference point (accuracy 0, the dense model's float32 bytes), as a fraction of
the whole rectangle (1.0 would be accuracy 1 at 0 bytes). Test accuracy, as the sweep reports it.
Targets (issue 11): pruning runs 42 -> 6, trial-seconds >= 3x and wall time >= 2.5x lower with
sharing than without, the same front; the ladder >= 5x fewer trial-seconds than unshared.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from dcsweep.runner.cycle.config import check_settings
from dcsweep.runner.cycle.pareto import hypervolume
from dcsweep.search_spaces import load_space

#: What each mode changes in the space: its top level, and its fixed settings.
MODES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "shared": ({}, {}), "unshared": ({"share_stages": False}, {}), "ladder": ({}, {"prune_schedule": "ladder"})}


def run_mode(space_name: str, mode: str, folder: Path, smoke: bool = False,
             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    space = load_space(space_name, check_settings).to_dict()
    top, fixed = MODES[mode]
    space.update(top, name=f"{space['name']}-{mode}")
    space["fixed"].update(overrides or {}, **fixed)
    (folder / "space.yaml").write_text(yaml.safe_dump(space))
    command = [str(Path(sys.executable).parent / "dcsweep"), "run", str(folder / "space.yaml"),
               "--storage", str(folder / "store"), "--name", mode, "--json"] + ["--smoke-test"] * smoke
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{mode}: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout)
    for error in out.get("errors", []):  # a failed trial is missing from the front: say why
        print(f"{mode}: a trial failed: " + " | ".join(error.strip().splitlines()[-6:]), flush=True)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(out["tracking_uri"])
    runs = [client.get_run(t["run_id"]) for t in out["trials"]]
    pids = set()
    for result in (folder / "store" / "sweeps" / mode / "tune").glob("trial_*/result.json"):
        pids.update(json.loads(line)["pid"] for line in result.read_text().splitlines() if line.strip())
    dense_bytes = max(t["compressed_bytes"] * (t["ratio"] or 0) for t in out["trials"])
    return {"wall": wall, "trial_seconds": sum(r.data.metrics["seconds_total"] for r in runs),
            "pruning_runs": _pruning_runs(folder / "store", runs),
            "workers": len(pids), "trials": out["trials"], "stages": out.get("stages", {}),
            "hypervolume": hypervolume([(t["accuracy"], t["compressed_bytes"]) for t in out["trials"]], dense_bytes)}


def _pruning_runs(store: Path, runs: list[Any]) -> int:
    """Pruned models computed: with shared stages, the pruned stages in the store (each computed
    once; a ladder's rungs included, one pruning step each); else one per trial that did not
    take its pruned model from another."""
    stages = store / "stages" / "pruned"
    if stages.is_dir():
        return sum(1 for _ in stages.iterdir())
    return sum(r.data.tags.get("dcsweep.stage.pruned.reused") != "true" for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="lenet300-digits")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--smoke-test", dest="smoke", action="store_true", help="the space's smoke settings")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a fixed setting (a YAML value); repeatable")
    args = parser.parse_args()
    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.exit(f"--set: expected KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        sys.exit(f"--modes: unknown {unknown}; valid: {list(MODES)}")
    results = {}
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="dcsweep-bench-") as tmp:
            results[mode] = run_mode(args.space, mode, Path(tmp), args.smoke, overrides)
        r = results[mode]
        print(f"{mode:<9} wall {r['wall']:7.1f} s   trial-seconds {r['trial_seconds']:8.1f}   pruning runs "
              f"{r['pruning_runs']:3d}   workers {r['workers']:2d}   hypervolume {r['hypervolume']:.4f}   "
              f"trials {len(r['trials'])}", flush=True)
    if "shared" in results and "unshared" in results:
        s, u = results["shared"], results["unshared"]
        same = {_point(t) for t in s["trials"]} == {_point(t) for t in u["trials"]}
        print(f"shared vs unshared: wall {u['wall'] / s['wall']:.2f}x lower, trial-seconds "
              f"{u['trial_seconds'] / s['trial_seconds']:.2f}x lower, pruning runs {u['pruning_runs']} -> "
              f"{s['pruning_runs']}; same trials, same accuracy and bytes: {same}")
    if "ladder" in results and "unshared" in results:
        lad, u = results["ladder"], results["unshared"]
        print(f"ladder vs unshared: trial-seconds {u['trial_seconds'] / lad['trial_seconds']:.2f}x lower, "
              f"hypervolume {lad['hypervolume']:.4f} vs {u['hypervolume']:.4f}")


def _point(trial: dict[str, Any]) -> tuple[Any, ...]:
    params = {k: v for k, v in trial["params"].items() if k != "dense_path"}  # each mode's own storage
    return (tuple(sorted(params.items())), round(trial["accuracy"], 6), trial["compressed_bytes"])


if __name__ == "__main__":
    main()
