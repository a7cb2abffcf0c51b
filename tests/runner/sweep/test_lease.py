"""One driver per sweep: the lease in the storage, against real processes and a real folder."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dcsweep.runner.cycle import ConfigError
from dcsweep.runner.sweep import Storage
from dcsweep.runner.sweep.lease import FOLDER, STALE_S, Holder, Lease, hold, refuse_if_held


def _leases(root: Path) -> list[Path]:
    return sorted((root / "sweeps" / "s" / FOLDER).glob("*.json"))


def test_a_held_sweep_is_refused_naming_its_holder(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    with hold(storage, "s"):
        with pytest.raises(ConfigError, match=rf"sweep 's' is being run by another driver \(host "
                                              rf"{socket.gethostname()}, pid \d+, since 20\d\d-"):
            Lease(storage, "s").acquire()
        with pytest.raises(ConfigError, match="being run by another driver"):
            refuse_if_held(storage, "s")
        assert len(_leases(tmp_path)) == 1  # the refused one withdrew its own
    assert _leases(tmp_path) == []  # released on exit
    refuse_if_held(storage, "s")


def test_the_lease_of_a_killed_driver_is_taken_over(tmp_path: Path) -> None:
    code = ("import sys, time; from dcsweep.runner.sweep import Storage; from dcsweep.runner.sweep.lease import hold\n"
            f"with hold(Storage({str(tmp_path)!r}), 's'):\n    print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"pid {proc.pid}"):
            refuse_if_held(Storage(tmp_path), "s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(_leases(tmp_path)) == 1  # SIGKILL: no chance to release it
    with hold(Storage(tmp_path), "s"):  # its pid runs no more on this host: provably gone
        assert len(_leases(tmp_path)) == 1


@pytest.mark.parametrize(("age", "refused"), [(5.0, True), (STALE_S + 60, False)])
def test_a_driver_on_another_host_holds_until_it_stops_renewing(tmp_path: Path, age: float, refused: bool) -> None:
    folder = tmp_path / "sweeps" / "s" / FOLDER
    folder.mkdir(parents=True)
    now = time.time()
    other = Holder("elsewhere", "another-boot", 4242, "123", now - 3600, now - age)
    (folder / "00000000000000000001-abcd.json").write_text(json.dumps(other.__dict__))
    if refused:
        with pytest.raises(ConfigError, match="host elsewhere, pid 4242"):
            Lease(Storage(tmp_path), "s").acquire()
    else:
        with hold(Storage(tmp_path), "s"):
            assert len(_leases(tmp_path)) == 1  # the stale one was removed


def test_of_drivers_that_start_together_at_most_one_goes_on(tmp_path: Path) -> None:
    storage, held, start = Storage(tmp_path), [], threading.Barrier(6)

    def driver() -> None:
        lease = Lease(storage, "s")
        start.wait()
        try:
            lease.acquire()
        except ConfigError:
            return
        held.append(lease)

    threads = [threading.Thread(target=driver) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(held) <= 1 and len(_leases(tmp_path)) == len(held)
    for lease in held:
        lease.release()


def test_a_lease_taken_over_while_its_holder_was_away_is_not_written_again(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver paused (or cut off from the storage) for STALE_S is taken over; when it comes
    back, its renewal found its lease gone and wrote it again: two drivers on one sweep."""
    from dcsweep.runner.sweep import lease

    monkeypatch.setattr(lease, "RENEW_S", 0.05)
    monkeypatch.setattr(lease, "LOST", [])
    storage = Storage(tmp_path)
    mine = Lease(storage, "s")
    mine.acquire()
    try:
        time.sleep(0.3)
        assert len(_leases(tmp_path)) == 1 and lease.LOST == []  # renewed, and still ours
        _leases(tmp_path)[0].unlink()  # the other driver removed it as stale...
        with hold(storage, "s"):  # ...and holds the sweep now
            time.sleep(0.3)
            assert lease.LOST == ["s"]
            assert [json.loads(p.read_text())["pid"] for p in _leases(tmp_path)] == [mine.holder.pid]
            assert len(_leases(tmp_path)) == 1  # the other's lease only: ours was not written back
    finally:
        mine.release()


def test_a_driver_that_lost_its_sweep_stops_and_uploads_nothing_more(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from pyarrow import fs

    from dcsweep.runner.adapters.callbacks import StorageGuard
    from dcsweep.runner.adapters.uploads import _copy_files
    from dcsweep.runner.sweep import lease

    monkeypatch.setattr(lease, "LOST", ["s"])
    (tmp_path / "experiment_state.json").write_text("{}")
    _copy_files(str(tmp_path / "experiment_state.json"), str(tmp_path / "copy.json"),
                source_filesystem=fs.LocalFileSystem(), destination_filesystem=fs.LocalFileSystem())
    assert not (tmp_path / "copy.json").exists()  # the driver that took over writes the state now
    with pytest.raises(lease.LeaseLost, match="sweep 's' was taken over by another driver while this one ran"):
        StorageGuard().on_step_end(0, [])
