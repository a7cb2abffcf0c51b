"""The stage store: a stage asked for by many processes at once is computed exactly once, a
holder that dies hands it to the next, an object store holds stages like a path, and a stored
stage whose files or record were changed is set aside and computed again, once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dcsweep.runner.cycle.stages import StageRecord, key_of
from dcsweep.runner.sweep import Storage
from dcsweep.runner.sweep.stages import StageStore

#: One process asking for stage "k": computing it takes ``seconds`` (and is counted in a file
#: beside the store); every process prints the model bytes it ended with.
CLAIMANT = """
import sys, time
from pathlib import Path
from dcsweep.runner.cycle.stages import StageRecord, key_of
from dcsweep.runner.sweep.stages import StageStore

INPUTS = {"phase": "pruned", "name": "k"}
KEY = key_of(INPUTS)
root, count, seconds, me = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
store = StageStore(root)
print("asking", flush=True)
with store.claim("pruned", KEY) as found:
    if found is None:
        with count.open("a") as f:
            f.write(me + "\\n")
        time.sleep(seconds)
        work = Path(root).parent / f"work-{me}"
        work.mkdir()
        (work / "model.dcz").write_bytes(f"weights by {me}".encode())
        store.publish("pruned", KEY, work, StageRecord("pruned", KEY, 0.5, 0.55, seconds, inputs=INPUTS))
        found_bytes = (work / "model.dcz").read_bytes()
    else:
        found_bytes = (found.folder / "model.dcz").read_bytes()
print("got", found_bytes.decode(), flush=True)
"""


def made(phase: str, name: str, accuracy: float = 0.5, val_accuracy: float = 0.55, seconds: float = 1.0
         ) -> StageRecord:
    """A stage's record whose key is made by its inputs, as a cycle's are."""
    inputs = {"phase": phase, "name": name}
    return StageRecord(phase, key_of(inputs), accuracy, val_accuracy, seconds, inputs=inputs)


K = made("pruned", "k").key


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
    assert list((tmp_path / "store" / "stages" / "pruned" / K / "leases").glob("*.json")) == []


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
    record = made("pruned", "abc", 0.75, 0.8, 12.5)
    with store.claim("pruned", record.key) as found:
        assert found is None
        (tmp_path / "model.dcz").write_bytes(b"pruned weights")
        store.publish("pruned", record.key, tmp_path, record)
    with store.claim("pruned", record.key) as found:
        assert found is not None and (found.folder / "model.dcz").read_bytes() == b"pruned weights"
        assert json.loads((found.folder / "stage.json").read_text())["seconds"] == 12.5 == found.record.seconds
        copy = found.folder
    assert not copy.exists()  # the local copy of a remote stage is removed after use


@pytest.mark.parametrize("phase", ["dense", "pruned", "shared"])
def test_stages_of_each_phase_are_kept_apart(phase: str, tmp_path: Path) -> None:
    store = StageStore(tmp_path / "store")
    key = key_of({"phase": phase, "name": "same"})
    with store.claim(phase, key) as found:
        assert found is None
        (tmp_path / "model.dcz").write_bytes(phase.encode())
        store.publish(phase, key, tmp_path, StageRecord(phase, key, 0.1, 0.2, 1.0, inputs={"phase": phase,
                                                                                          "name": "same"}))
    for other in {"dense", "pruned", "shared"} - {phase}:
        assert not store.done(other, key)
    with store.claim(phase, key) as found:
        assert found is not None and (found.folder / "model.dcz").read_bytes() == phase.encode()


def _publish(store: StageStore, record: StageRecord, work: Path, content: bytes) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "model.dcz").write_bytes(content)
    store.publish(record.phase, record.key, work, record)


def _rewrite_record(folder: Path, **changes: object) -> None:
    """Edit stage.json as a forger would who also recomputes its digest."""
    import hashlib

    data = json.loads((folder / "stage.json").read_text())
    data.update(changes)
    body = {k: v for k, v in data.items() if k != "digest"}
    data["digest"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    (folder / "stage.json").write_text(json.dumps(data))


def _age(folder: Path, when: str) -> None:
    """Make a stage look made and last used at ``when``."""
    _rewrite_record(folder, created=when)
    for user in (folder / "used-by").iterdir():
        user.write_text(when)


DAMAGES = {
    "model replaced": (lambda f, o: (f / "model.dcz").write_bytes(b"X" * 14), "is not the file its record names"),
    "model cut short": (lambda f, o: (f / "model.dcz").write_bytes(b"pruned"), "record says 14 bytes"),
    "model missing": (lambda f, o: (f / "model.dcz").unlink(), "model.dcz is missing"),
    "model swapped": (lambda f, o: (f / "model.dcz").write_bytes((o / "model.dcz").read_bytes()),
                      "is not the file its record names"),
    "record edited": (lambda f, o: (f / "stage.json").write_text(
        (f / "stage.json").read_text().replace('"accuracy": 0.5', '"accuracy": 0.99')), "changed after it was written"),
    "record unparseable": (lambda f, o: (f / "stage.json").write_text('{"phase": '), "does not parse"),
    "record is another's": (lambda f, o: (f / "stage.json").write_bytes((o / "stage.json").read_bytes()),
                            "is of key"),
    "NaN accuracy": (lambda f, o: _rewrite_record(f, accuracy=float("nan")), "allowed: a fraction in [0, 1]"),
    "negative seconds": (lambda f, o: _rewrite_record(f, seconds=-1), "allowed: a finite number >= 0"),
    "a path for a name": (lambda f, o: _rewrite_record(f, files={"../model.dcz": {"sha256": "0" * 64, "bytes": 1}}),
                          "plain names"),
    "inputs not the key's": (lambda f, o: _rewrite_record(f, inputs={"phase": "pruned", "name": "other"}),
                             "inputs do not make its key"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_stage_is_set_aside_and_computed_again(damage: str, tmp_path: Path, caplog) -> None:
    """Whatever was done to a stored stage's files, it is not reused: it is moved aside whole
    (never deleted), the reason is logged and kept, and the next claim computes it."""
    store = StageStore(tmp_path / "store")
    record, other = made("pruned", "mine"), made("pruned", "other", 0.9)
    _publish(store, record, tmp_path / "w1", b"pruned weights")
    _publish(store, other, tmp_path / "w2", b"other weights!")
    folder = tmp_path / "store" / "stages" / "pruned" / record.key
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    harm, reason = DAMAGES[damage]
    harm(folder, tmp_path / "store" / "stages" / "pruned" / other.key)
    damaged = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with store.claim("pruned", record.key) as found:
        assert found is None  # this process computes it
        assert reason in (store.recomputed("pruned", record.key) or "")
        (aside,) = (tmp_path / "store" / "stages" / "pruned").glob(f"{record.key}.damaged-*")
        assert {p.name: p.read_bytes() for p in aside.iterdir()} == damaged  # kept as found
        assert not store.done("pruned", record.key)
        _publish(store, record, tmp_path / "w3", b"pruned weights")
    assert reason in caplog.text and "moved aside" in caplog.text
    with store.claim("pruned", record.key) as found:
        assert found is not None and (found.folder / "model.dcz").read_bytes() == before["model.dcz"]
    with store.claim("pruned", other.key) as found:  # the other stage untouched
        assert found is not None and found.record.accuracy == 0.9


def test_an_object_stores_damaged_stage_is_set_aside(s3_env: dict[str, str], tmp_path: Path) -> None:
    storage = Storage(f"s3://dcsweep-test/damaged-{time.time_ns()}")
    store, record = StageStore(storage), made("shared", "s3")
    _publish(store, record, tmp_path, b"shared weights")
    storage.write_bytes(b"shared weightZ", "stages", "shared", record.key, "model.dcz")
    with store.claim("shared", record.key) as found:
        assert found is None and "is not the file its record names" in store.recomputed("shared", record.key)
    (aside,) = [f for f in storage.folders("stages", "shared") if f.startswith(f"{record.key}.damaged-")]
    assert storage.read_bytes("stages", "shared", aside, "model.dcz") == b"shared weightZ"
    assert not store.done("shared", record.key)


def test_a_damaged_stage_four_wait_for_is_computed_once(tmp_path: Path) -> None:
    store = StageStore(tmp_path / "store")
    _publish(store, made("pruned", "k"), tmp_path / "w", b"weights by nobody")
    (tmp_path / "store" / "stages" / "pruned" / K / "model.dcz").write_bytes(b"tampered")
    count = tmp_path / "computed.txt"
    procs = [_claimant(tmp_path / "store", count, 2.0, str(i)) for i in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    (computer,) = count.read_text().split()
    assert {out.split("got ", 1)[1].strip() for out, _ in outs} == {f"weights by {computer}"}
    assert len(list((tmp_path / "store" / "stages" / "pruned").glob(f"{K}.damaged-*"))) == 1


def test_stages_list_and_verify_show_the_store(tmp_path: Path, capsys) -> None:
    """`dcsweep stages list` shows live, damaged and leased stages; `verify` checks each as a
    reuse would and exits 1 naming the one that fails, changing nothing."""
    from dcsweep.runner.cli import STAGE_PHASES, main
    from dcsweep.runner.cycle.stages import PHASES_KEPT
    from dcsweep.runner.sweep.lease import Lease

    assert STAGE_PHASES == PHASES_KEPT
    root = tmp_path / "store"
    store = StageStore(root)
    good, bad, aside = made("pruned", "good"), made("shared", "bad"), made("pruned", "aside")
    for n, record in enumerate((good, bad, aside)):
        _publish(store, record, tmp_path / f"w{n}", b"weights " + str(n).encode())
    (root / "stages" / "pruned" / aside.key / "model.dcz").write_bytes(b"changed!!")
    with store.claim("pruned", aside.key):  # set aside, then not computed: a damaged folder is left
        pass
    computing = made("dense", "now")
    lease = Lease(store.storage, computing.key, ("stages", "dense", computing.key, "leases"), what="dense stage")
    assert lease.try_acquire() is None
    try:
        (root / "stages" / "shared" / bad.key / "model.dcz").write_bytes(b"weights X")
        assert main(["stages", "list", "--storage", str(root), "--json"]) == 0
        rows = {(r["phase"], r["key"], r["damaged"]): r for r in json.loads(capsys.readouterr().out)["stages"]}
        assert rows[("pruned", good.key, False)]["bytes"] == 9 and rows[("pruned", good.key, False)]["accuracy"] == 0.5
        assert rows[("pruned", aside.key, True)]["damaged"]
        assert rows[("dense", computing.key, False)]["computing"] is True
        assert main(["stages", "verify", "--storage", str(root), "--json"]) == 1
        captured = capsys.readouterr()
        out = json.loads(captured.out)
        assert out["checked"] == 2 and [f["key"] for f in out["failed"]] == [bad.key]
        assert f"stage shared/{bad.key} fails its check: model.dcz is not the file" in captured.err
        assert store.done("shared", bad.key)  # verify only reports
        assert main(["stages", "list", "--phase", "pruned", "--storage", str(root)]) == 0
        assert "damaged (set aside)" in capsys.readouterr().out
    finally:
        lease.release()


def test_stages_list_counts_the_sweeps_that_made_or_reused_a_stage(tmp_path: Path, capsys) -> None:
    from dcsweep.runner.cli import main

    root = tmp_path / "store"
    record = made("pruned", "shared by two")
    _publish(StageStore(root, user="sweep-a"), record, tmp_path / "w", b"weights")
    (row,) = json.loads(_stages_list(main, root, capsys))["stages"]
    assert row["sweeps"] == 1 and row["last_used"] >= row["created"]
    for user in ("sweep-b", "sweep-b", None):  # a sweep reusing twice counts once; a lone cycle not at all
        with StageStore(root, user=user).claim("pruned", record.key) as found:
            assert found is not None
    (row,) = json.loads(_stages_list(main, root, capsys))["stages"]
    assert row["sweeps"] == 2 and row["last_used"] >= row["created"]
    assert sorted(p.name for p in (root / "stages" / "pruned" / record.key / "used-by").iterdir()) == [
        "(no sweep)", "sweep-a", "sweep-b"]
    assert main(["stages", "list", "--storage", str(root)]) == 0
    assert "by 2 sweep(s)" in capsys.readouterr().out


def _stages_list(main, root: Path, capsys) -> str:
    assert main(["stages", "list", "--storage", str(root), "--json"]) == 0
    return capsys.readouterr().out


def test_stages_gc_lists_and_removes_only_with_yes(tmp_path: Path, capsys) -> None:
    """Damaged folders and stages unused for N days are listed; nothing is removed without
    --yes; a reused stage is recent again; a leased one is never touched."""
    import datetime

    from dcsweep.runner.cli import main
    from dcsweep.runner.sweep.lease import Lease

    root = tmp_path / "store"
    store = StageStore(root)
    old, recent, aside = made("pruned", "old"), made("pruned", "recent"), made("shared", "aside")
    for n, record in enumerate((old, recent, aside)):
        _publish(store, record, tmp_path / f"w{n}", b"weights")
    (root / "stages" / "shared" / aside.key / "model.dcz").write_bytes(b"changed")
    with store.claim("shared", aside.key):
        pass
    ten_days_ago = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)).isoformat()
    for record in (old, recent):
        _age(root / "stages" / "pruned" / record.key, ten_days_ago)
    with store.claim("pruned", recent.key) as found:  # reused now
        assert found is not None
    leased = made("dense", "leased")
    _publish(store, leased, tmp_path / "w9", b"weights")
    _age(root / "stages" / "dense" / leased.key, ten_days_ago)
    lease = Lease(store.storage, leased.key, ("stages", "dense", leased.key, "leases"), what="dense stage")
    assert lease.try_acquire() is None
    try:
        before = sorted(p.relative_to(root) for p in root.rglob("*"))
        assert main(["stages", "gc", "--unused-days", "7", "--storage", str(root), "--json"]) == 0
        listed = {(r["phase"], r["key"]) for r in json.loads(capsys.readouterr().out)["stages"]}
        assert listed == {("pruned", old.key), ("shared", aside.key)}
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing removed
        assert main(["stages", "gc", "--unused-days", "7", "--yes", "--storage", str(root)]) == 0
        assert "removed 2 stage folder(s)" in capsys.readouterr().out
        assert not (root / "stages" / "pruned" / old.key).exists() and store.done("pruned", recent.key)
        assert [p.name for p in (root / "stages" / "shared").iterdir()] == [aside.key]  # its leases folder only
        assert store.done("dense", leased.key)
    finally:
        lease.release()
    assert main(["stages", "gc", "--storage", str(root)]) == 2
    assert "needs --unused-days N" in capsys.readouterr().err
