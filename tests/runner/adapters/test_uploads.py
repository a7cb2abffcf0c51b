"""Tune's uploads into a filesystem storage: whole or not at all, and only what changed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pyarrow import fs

from dcsweep.runner.adapters.uploads import _copy_files


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_folder_is_copied_whole_and_again_after_a_change(tmp_path: Path) -> None:
    source, target = tmp_path / "staging", tmp_path / "storage" / "tune"
    (source / "trial_1").mkdir(parents=True)
    (source / "experiment_state.json").write_text('{"trials": 1}')
    (source / "trial_1" / "result.json").write_text('{"phase": "dense"}\n')
    local = fs.LocalFileSystem()
    _copy_files(str(source), str(target), source_filesystem=local, destination_filesystem=local)
    assert _tree(target) == _tree(source)
    before = os.stat(target / "trial_1" / "result.json").st_ino

    with (source / "trial_1" / "result.json").open("a") as f:  # Tune appends a trial's results
        f.write('{"phase": "pruned"}\n')
    (source / "experiment_state.json").write_text('{"trials": 2}')  # same size, same jiffy
    _copy_files(str(source), str(target), source_filesystem=local, destination_filesystem=local)
    assert _tree(target) == _tree(source)
    assert os.stat(target / "trial_1" / "result.json").st_ino != before  # renamed into place, not rewritten
    assert not [p for p in target.rglob("*.part")]


def test_a_settled_file_is_not_copied_again(tmp_path: Path) -> None:
    """Tune uploads its whole experiment folder at every snapshot: a finished trial's files,
    unchanged since their last copy and older than the settling window, are not copied again;
    a file changed since, or changed within the window of its copy, is."""
    from dcsweep.runner.adapters import uploads
    from dcsweep.runner.adapters.uploads import SETTLED_S

    source, target = tmp_path / "staging", tmp_path / "storage"
    (source / "done").mkdir(parents=True)
    (source / "done" / "result.json").write_text('{"phase": "final"}\n')
    (source / "experiment_state.json").write_text('{"trials": 1}')
    old = os.stat(source / "done" / "result.json").st_mtime - 10 * SETTLED_S
    os.utime(source / "done" / "result.json", (old, old))
    local = fs.LocalFileSystem()
    _copy_files(str(source), str(target), source_filesystem=local, destination_filesystem=local)
    uploads._COPIED[str(target / "done" / "result.json")] = (  # as if copied SETTLED_S after its last change
        uploads._COPIED[str(target / "done" / "result.json")][0], time.time() + 2 * SETTLED_S)
    settled, recent = (os.stat(target / name).st_ino for name in ("done/result.json", "experiment_state.json"))

    _copy_files(str(source), str(target), source_filesystem=local, destination_filesystem=local)
    assert os.stat(target / "done" / "result.json").st_ino == settled  # not copied again
    assert os.stat(target / "experiment_state.json").st_ino != recent  # within the window: copied again

    (source / "done" / "result.json").write_text('{"phase": "FINAL"}\n')  # same size, new content,
    os.utime(source / "done" / "result.json", (old, old))  # even with its mtime set back (not its ctime)
    (target / "experiment_state.json").unlink()  # gone from the storage: copied again
    _copy_files(str(source), str(target), source_filesystem=local, destination_filesystem=local)
    assert _tree(target) == _tree(source)


def test_a_single_file_is_renamed_into_place(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("new")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.json").write_text("the old, longer content")
    local = fs.LocalFileSystem()
    _copy_files(str(tmp_path / "a.json"), str(tmp_path / "out" / "a.json"), source_filesystem=local,
                destination_filesystem=local)
    assert (tmp_path / "out" / "a.json").read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.json"]


def test_a_checkpoint_already_gone_is_not_an_error(tmp_path: Path) -> None:
    """Tune keeps two checkpoints per trial; after a resume from an older snapshot of its state
    the one it deletes may be gone already, which must not fail the trial."""
    from ray.train import Checkpoint, CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult

    from dcsweep.runner.adapters.uploads import make_uploads_atomic

    make_uploads_atomic()
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=1))
    folders = [tmp_path / f"checkpoint_00000{i}" for i in range(3)]
    for folder in folders:
        folder.mkdir()
    manager.register_checkpoint(_TrainingResult(Checkpoint.from_directory(str(folders[0])), {"i": 0}))
    folders[0].rmdir()  # deleted by the run before the restart, which the restored state missed
    manager.register_checkpoint(_TrainingResult(Checkpoint.from_directory(str(folders[1])), {"i": 1}))
    manager.register_checkpoint(_TrainingResult(Checkpoint.from_directory(str(folders[2])), {"i": 2}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000002"]  # the old ones still go


def test_a_folder_that_does_not_fit_leaves_the_last_whole_copy(tmp_path: Path, monkeypatch) -> None:
    """The searcher's state and the trial list are separate files: when one copy of the set hits
    a full device, none of the set lands (a newer searcher state beside an older trial list lost
    a trial on resume)."""
    import errno
    import shutil

    from dcsweep.runner.adapters import uploads

    source, target = tmp_path / "staging", tmp_path / "storage" / "tune"
    source.mkdir(parents=True)
    (source / "basic-variant-state.json").write_text('{"generated": 1}')
    (source / "experiment_state.json").write_text('{"trials": 1}')
    local = fs.LocalFileSystem()
    _copy_files(str(source), str(target), source_filesystem=local, destination_filesystem=local)
    whole = _tree(target)
    (source / "basic-variant-state.json").write_text('{"generated": 2}')
    (source / "experiment_state.json").write_text('{"trials": 2}')
    real, calls = shutil.copyfile, []

    def full_on_second(src: str, dst: str) -> str:
        calls.append(src)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", dst)
        return real(src, dst)

    monkeypatch.setattr(uploads.shutil, "copyfile", full_on_second)
    monkeypatch.setattr(uploads, "REFUSED_WRITES", [])
    with pytest.raises(OSError, match="No space left"):
        _copy_files(str(source), str(target), source_filesystem=local, destination_filesystem=local)
    assert _tree(target) == whole and not [p for p in target.rglob("*.part")]
    assert len(uploads.REFUSED_WRITES) == 1 and uploads.REFUSED_WRITES[0].filename.endswith(".json")
