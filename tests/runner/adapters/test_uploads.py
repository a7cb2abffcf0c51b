"""Tune's uploads into a filesystem storage: whole or not at all, and only what changed."""

from __future__ import annotations

import os
from pathlib import Path

from pyarrow import fs

from dcsweep.runner.adapters.uploads import _copy_files


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_folder_is_copied_whole_and_only_changed_files_again(tmp_path: Path) -> None:
    source, target = tmp_path / "staging", tmp_path / "storage" / "tune"
    (source / "trial_1").mkdir(parents=True)
    (source / "experiment_state.json").write_text('{"trials": 1}')
    (source / "trial_1" / "result.json").write_text('{"phase": "dense"}\n')
    local = fs.LocalFileSystem()
    _copy_files(str(source), str(target), source_filesystem=local, destination_filesystem=local)
    assert _tree(target) == _tree(source)
    inodes = {name: os.stat(target / name).st_ino for name in _tree(target)}

    with (source / "trial_1" / "result.json").open("a") as f:  # Tune appends a trial's results
        f.write('{"phase": "pruned"}\n')
    _copy_files(str(source), str(target), source_filesystem=local, destination_filesystem=local)
    assert _tree(target) == _tree(source)
    assert os.stat(target / "experiment_state.json").st_ino == inodes["experiment_state.json"]  # left alone
    assert os.stat(target / "trial_1" / "result.json").st_ino != inodes[str(Path("trial_1", "result.json"))]
    assert not [p for p in target.rglob("*.part")]


def test_a_single_file_is_renamed_into_place(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("new")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.json").write_text("the old, longer content")
    local = fs.LocalFileSystem()
    _copy_files(str(tmp_path / "a.json"), str(tmp_path / "out" / "a.json"), source_filesystem=local,
                destination_filesystem=local)
    assert (tmp_path / "out" / "a.json").read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.json"]
