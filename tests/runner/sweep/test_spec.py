"""A sweep's files in the storage: what it was started with."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcsweep.runner.cycle import ConfigError
from dcsweep.runner.sweep import Storage
from dcsweep.runner.sweep.spec import SPACE_FILE, SWEEP_FILE, Sweep, saved_space, write_sweep_files
from dcsweep.search_spaces import load_space


def test_a_sweep_started_meanwhile_by_another_driver_is_not_overwritten(tmp_path: Path) -> None:
    """The name is checked before the lease is taken; between the two, another driver may have
    started a sweep of that name. Its files are checked again under the lease, not replaced."""
    storage = Storage(tmp_path)
    theirs = Sweep("s", load_space("lenet300-digits"), storage, "sqlite:////tmp/theirs.db")
    write_sweep_files(theirs)
    before = {f: (tmp_path / "sweeps" / "s" / f).read_bytes() for f in (SPACE_FILE, SWEEP_FILE)}
    mine = Sweep("s", load_space("lenet5-mnist5k"), storage, "sqlite:////tmp/mine.db")
    with pytest.raises(ConfigError, match="sweep 's' was started by another driver meanwhile; give another --name"):
        write_sweep_files(mine)
    assert {f: (tmp_path / "sweeps" / "s" / f).read_bytes() for f in before} == before
    assert saved_space(storage, "s").name == "lenet300-digits"
