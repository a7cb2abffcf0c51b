"""`dcsweep status` and `list` read a sweep's state from Tune's trial folders in the storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcsweep.runner.cycle import ConfigError
from dcsweep.runner.sweep import Storage
from dcsweep.runner.sweep.spec import Sweep, write_sweep_files
from dcsweep.runner.sweep.status import list_sweeps, sweep_status
from dcsweep.search_spaces import load_space

SPACE = """
name: four
fixed: {model: lenet300, dataset: digits, epochs: 1}
swept: {sparsity: {grid: [0.5, 0.6, 0.7, 0.8]}}
max_failures: 2
"""


def _trial(root: Path, number: int, sparsity: float, phases: list[str], failures: int) -> None:
    """A trial folder as Tune leaves it: a row per report in result.json, and each failure
    appended to error.txt."""
    folder = root / "sweeps" / "s" / "tune" / f"trial_{number}"
    folder.mkdir(parents=True)
    rows = [{"phase": p, "config": {"sparsity": sparsity}, "val_accuracy": 0.9 - sparsity / 10,
             "compressed_bytes": int(10_000 * (1 - sparsity))} for p in phases]
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if failures:
        (folder / "error.txt").write_text("".join(
            f"Failure # {n} (occurred at 2026-11-30_06-00-00)\nRuntimeError: worker died\n"
            for n in range(1, failures + 1)))


def test_a_trial_counts_as_failed_only_once_tune_gives_up_on_it(tmp_path: Path) -> None:
    """Tune keeps error.txt after a retry; a trial that failed once and then finished, or is
    being retried, was counted failed for good, and a killed sweep then read as finished."""
    (tmp_path / "four.yaml").write_text(SPACE)
    storage = Storage(tmp_path / "store")
    write_sweep_files(Sweep("s", load_space(tmp_path / "four.yaml"), storage, "sqlite:////tmp/x.db"))
    root = tmp_path / "store"
    _trial(root, 0, 0.5, ["pruned", "shared", "final"], failures=1)  # retried, then finished
    _trial(root, 1, 0.6, ["pruned"], failures=1)  # being retried (or will be, on resume)
    _trial(root, 2, 0.7, ["pruned"], failures=3)  # 1 + max_failures: Tune gave up
    _trial(root, 3, 0.8, ["pruned", "diverged"], failures=0)
    status = sweep_status(storage, "s")
    out = status.to_json(trials=True)
    assert (out["trials_finished"], out["trials_failed"], out["trials_running"], out["trials_ended"]) == (1, 2, 1, 3)
    assert out["state"] == "stopped"  # one trial is not ended: resume continues it
    assert [t["label"] for t in out["front"]] == ["s=0.5"]
    assert [s.name for s in list_sweeps(storage)] == ["s"]


def test_a_status_of_a_sweep_that_is_not_there_names_the_ones_that_are(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no sweep named 'x' in .*; sweeps there: \[\]"):
        sweep_status(Storage(tmp_path), "x")


@pytest.mark.parametrize("content", ["{not json", "{}", "[]"])
def test_a_damaged_sweep_is_listed_as_damaged_beside_the_healthy_ones(content: str, tmp_path: Path, capsys) -> None:
    from dcsweep.runner.cli import main

    (tmp_path / "four.yaml").write_text(SPACE)
    storage = Storage(tmp_path / "store")
    for name in ("a", "b", "c"):
        write_sweep_files(Sweep(name, load_space(tmp_path / "four.yaml"), storage, "sqlite:////tmp/x.db"))
    (tmp_path / "store" / "sweeps" / "b" / "sweep.json").write_text(content)
    assert main(["list", "--storage", str(tmp_path / "store"), "--json"]) == 0
    sweeps = {s["name"]: s for s in json.loads(capsys.readouterr().out)["sweeps"]}
    assert set(sweeps) == {"a", "b", "c"} and sweeps["a"]["state"] == sweeps["c"]["state"] == "stopped"
    assert sweeps["b"]["state"] == "damaged" and "sweep.json is unreadable" in sweeps["b"]["damage"]
    assert main(["list", "--storage", str(tmp_path / "store")]) == 0
    assert "b: damaged: " in capsys.readouterr().out
    assert main(["status", "b", "--storage", str(tmp_path / "store")]) == 2  # says what is wrong
    assert "sweep.json is unreadable" in capsys.readouterr().err
