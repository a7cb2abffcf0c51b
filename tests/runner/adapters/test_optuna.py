"""Optuna search on every supported Optuna: the installed (locked) release and the oldest one the
range admits, which `make test` installs beside the venv (``.venv/optuna-oldest``). Each runs in
its own interpreter with that Optuna first on its path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from ..helpers import cli, finish, front, kill_after_finished

ROOT = Path(__file__).resolve().parents[3]
OLDEST = ROOT / ".venv" / "optuna-oldest"
VERSIONS = ("locked", "oldest")


def _env(version: str) -> dict[str, str]:
    if version == "locked":
        return {}
    if not (OLDEST / "optuna").is_dir():
        pytest.fail(f"{OLDEST} is missing: `make test` installs the oldest supported Optuna there")
    return {"PYTHONPATH": os.pathsep.join([str(OLDEST), *filter(None, [os.environ.get("PYTHONPATH")])])}


def _python(version: str, code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **_env(version)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_oldest_optuna_is_the_floor_of_the_range() -> None:
    """What the oldest-release tests run is what pyproject.toml says is supported."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in dependencies if d.startswith("optuna")]
    floor = re.search(r">=\s*([\d.]+)", spec).group(1)
    oldest = _python("oldest", "import optuna; print(optuna.__version__)").strip()
    assert oldest.split(".")[:2] == floor.split(".")[:2], (oldest, spec)
    assert _python("locked", "import optuna; print(optuna.__version__)").strip() != oldest


#: Feeds dcsweep's searcher 12 results (TPE's model takes over after 10), snapshots it with two
#: trials running as Tune does (pickling it whole, and through save/restore), and prints what the
#: original and the restored searcher propose next.
SNAPSHOT = """
import json, pickle, tempfile
from ray import tune
from ray.tune.search.optuna import OptunaSearch
from dcsweep.runner.adapters.driver import optuna_sampler

space = {"sparsity": tune.uniform(0.5, 0.98), "k": tune.choice([2, 4, 16, 32])}
def searcher():
    return OptunaSearch(space=space, metric=["val_accuracy", "compressed_bytes"], mode=["max", "min"],
                        sampler=optuna_sampler(0))
def result(c):
    return {"val_accuracy": 1 - c["sparsity"] ** 4 + c["k"] / 100, "compressed_bytes": (1 - c["sparsity"]) * c["k"]}
a = searcher()
for i in range(12):
    a.on_trial_complete(f"t{i}", result(a.suggest(f"t{i}")))
running = {t: a.suggest(t) for t in ("r1", "r2")}
whole = pickle.loads(pickle.dumps(a))
folder = tempfile.mkdtemp()
a.save_to_dir(folder)
restored = searcher()
restored.restore_from_dir(folder)
out = {}
for name, s in (("original", a), ("pickled", whole), ("restored", restored)):
    for t, c in running.items():
        s.on_trial_complete(t, result(c))
    out[name] = [s.suggest(f"n{i}") for i in range(4)]
print(json.dumps(out))
"""


@pytest.mark.parametrize("version", VERSIONS)
def test_the_searcher_survives_tunes_snapshots(version: str) -> None:
    """Tune pickles the searcher when a sweep starts and with every snapshot; Optuna 5.1's
    NSGA-II held a lock and could not be pickled. A restored searcher proposes what the original
    would have, so a resumed sweep samples the trials the uninterrupted one would."""
    out = json.loads(_python(version, SNAPSHOT))
    assert out["original"] == out["pickled"] == out["restored"]
    assert len({c["sparsity"] for c in out["original"]}) == 4


SWEEP = """
name: mo
fixed: {model: lenet300, dataset: digits, epochs: 3, prune_steps: 1, prune_epochs: 2, share_epochs: 1}
swept:
  sparsity: {choice: [0.5, 0.8, 0.9, 0.97]}
  k: {choice: [2, 4, 16]}
search: {algorithm: optuna, num_samples: 5, max_concurrent: 2, seed: 3}
resources: {cpu: 1}
"""


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_an_optuna_sweep_killed_and_resumed_ends_with_the_same_front(version: str, tmp_path: Path) -> None:
    """SIGKILLed once two trials finished, resumed: the same trials and front as a sweep that
    was never interrupted (the searcher's state comes back with Tune's)."""
    (tmp_path / "mo.yaml").write_text(SWEEP)
    storage, env = tmp_path / "store", _env(version)
    with cli("run", str(tmp_path / "mo.yaml"), "--name", "whole", "--storage", str(storage), "--json",
             env=env) as proc:
        whole = finish(proc)
    with cli("run", str(tmp_path / "mo.yaml"), "--name", "cut", "--storage", str(storage), "--json",
             env=env) as proc:
        kill_after_finished(proc, storage / "sweeps" / "cut" / "tune", 2)
    with cli("resume", "cut", "--storage", str(storage), "--json", env=env) as proc:
        resumed = finish(proc)

    def settings(result: dict) -> list[tuple]:
        return sorted((t["params"]["sparsity"], t["params"]["k"]) for t in result["trials"])

    assert len(resumed["trials"]) == 5 and settings(resumed) == settings(whole)
    assert front(resumed) == front(whole) and front(whole)
