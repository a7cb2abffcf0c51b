"""The stage store: a stage asked for by many processes at once is computed exactly once, a
holder that dies hands it to the next, and an object store holds stages like a path."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dcsweep.runner.cycle.stages import StageRecord
from dcsweep.runner.sweep import Storage
from dcsweep.runner.sweep.stages import StageStore

#: One process asking for stage "k": computing it takes ``seconds`` (and is counted in a file
#: beside the store); every process prints the model bytes it ended with.
CLAIMANT = """
import sys, time
from pathlib import Path
from dcsweep.runner.cycle.stages import StageRecord
from dcsweep.runner.sweep.stages import StageStore

root, count, seconds, me = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
store = StageStore(root)
print("asking", flush=True)
with store.claim("pruned", "k") as found:
    if found is None:
        with count.open("a") as f:
            f.write(me + "\\n")
        time.sleep(seconds)
        work = Path(root).parent / f"work-{me}"
        work.mkdir()
        (work / "model.dcz").write_bytes(f"weights by {me}".encode())
        store.publish("pruned", "k", work, StageRecord("pruned", "k", 0.5, 0.55, seconds))
        found_bytes = (work / "model.dcz").read_bytes()
    else:
        found_bytes = (found / "model.dcz").read_bytes()
print("got", found_bytes.decode(), flush=True)
"""


def _claimant(root: Path, count: Path, seconds: float, me: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLAIMANT, str(root), str(count), str(seconds), me],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_seven_at_once_compute_it_exactly_once(tmp_path: Path) -> None:
    count = tmp_path / "computed.txt"
    procs = [_claimant(tmp_path / "store", count, 2.0, str(i)) for i in range(7)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    computers = count.read_text().split()
    assert len(computers) == 1  # one computation among seven
    got = {out.split("got ", 1)[1].strip() for out, _ in outs}
    assert got == {f"weights by {computers[0]}"}  # and all seven hold its result
    assert list((tmp_path / "store" / "stages" / "pruned" / "k" / "leases").glob("*.json")) == []


def test_a_holder_killed_mid_stage_hands_it_to_the_next(tmp_path: Path) -> None:
    count = tmp_path / "computed.txt"
    first = _claimant(tmp_path / "store", count, 600.0, "first")
    deadline = time.monotonic() + 60
    while not count.exists() or not count.read_text():
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()[1][-2000:]
        time.sleep(0.1)
    waiter = _claimant(tmp_path / "store", count, 0.5, "second")
    time.sleep(2)
    assert waiter.poll() is None  # waiting for a holder that is alive
    first.send_signal(signal.SIGKILL)
    first.wait()
    out, err = waiter.communicate(timeout=60)  # its pid is gone on this host: taken over at once
    assert waiter.returncode == 0, err[-2000:]
    assert out.split("got ", 1)[1].strip() == "weights by second"
    assert count.read_text().split() == ["first", "second"]


def test_an_unfinished_stage_is_not_taken(tmp_path: Path) -> None:
    """A model without its record (a publisher that died between the two writes) is computed again."""
    store = StageStore(tmp_path)
    folder = tmp_path / "stages" / "shared" / "k2"
    folder.mkdir(parents=True)
    (folder / "model.dcz").write_bytes(b"half")
    with store.claim("shared", "k2") as found:
        assert found is None


def test_an_object_store_holds_stages(s3_env: dict[str, str], tmp_path: Path) -> None:
    store = StageStore(Storage(f"s3://dcsweep-test/stages-{time.time_ns()}"))
    with store.claim("pruned", "abc") as found:
        assert found is None
        (tmp_path / "model.dcz").write_bytes(b"pruned weights")
        store.publish("pruned", "abc", tmp_path, StageRecord("pruned", "abc", 0.75, 0.8, 12.5))
    with store.claim("pruned", "abc") as found:
        assert found is not None and (found / "model.dcz").read_bytes() == b"pruned weights"
        assert json.loads((found / "stage.json").read_text())["seconds"] == 12.5
        copy = found
    assert not copy.exists()  # the local copy of a remote stage is removed after use


@pytest.mark.parametrize("phase", ["dense", "pruned", "shared"])
def test_stages_of_each_phase_are_kept_apart(phase: str, tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    with store.claim(phase, "same-key") as found:
        assert found is None
        (tmp_path / "model.dcz").write_bytes(phase.encode())
        store.publish(phase, "same-key", tmp_path, StageRecord(phase, "same-key", 0.1, 0.2, 1.0))
    for other in {"dense", "pruned", "shared"} - {phase}:
        assert not store.done(other, "same-key")
    with store.claim(phase, "same-key") as found:
        assert found is not None and (found / "model.dcz").read_bytes() == phase.encode()
