"""A sweep whose storage fills up or turns read-only: one line naming the device or the path and
the OS error, exit 1, runs FAILED (not RUNNING), no file cut short, and `dcsweep resume`
finishes the sweep once the storage takes writes again.

The storage is a tmpfs mounted in a private mount namespace (``unshare -m``): 1 MiB grown to
64 MiB before the resume, or remounted read-only while trials run and writable before the
resume. Where the machine cannot do that (not root, no unshare), the tests skip and say why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ..helpers import SPACE, can_unshare

MLFLOW_STATE = """
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name(sys.argv[2] if len(sys.argv) > 2 else "full")
runs = client.search_runs([experiment.experiment_id]) if experiment else []
print(json.dumps([{"role": r.data.tags.get("dcsweep.role"), "status": r.info.status,
                   "error": r.data.tags.get("error", "")} for r in runs]))
"""

# a trial's result.json is JSON lines, appended to; empty until its first result (whole, then):
# cut short, its last line would not parse
WHOLE_LINES = """
import json, pathlib, sys
for path in pathlib.Path(sys.argv[1]).rglob("result.json"):
    for line in path.read_text().splitlines():
        try:
            json.loads(line)
        except ValueError:
            print(path)
            break
"""

SCRIPT = """
set -u
mount -t tmpfs -o size=1M tmpfs "$STORE" || exit 77
dcsweep() {{ "{python}" -m dcsweep.runner.cli "$@"; }}
dcsweep run "$SPACE" --name full --storage "$STORE" --tracking-uri "$URI" --json > "$OUT/run.json" 2> "$OUT/run.err"
echo $? > "$OUT/run.rc"
find "$STORE" -type f \\( -size 0 -o -name '*.part' \\) ! -name .validate_storage_marker ! -name result.json \\
    > "$OUT/cut-short.txt"
"{python}" -c "$WHOLE_LINES" "$STORE" >> "$OUT/cut-short.txt"
"{python}" -c "$MLFLOW_STATE" "$URI" > "$OUT/after-run.json"
mount -o remount,size=64M "$STORE"
dcsweep resume full --storage "$STORE" --json > "$OUT/resume.json" 2> "$OUT/resume.err"
echo $? > "$OUT/resume.rc"
"{python}" -c "$MLFLOW_STATE" "$URI" > "$OUT/after-resume.json"
"""


# the storage turns read-only once the first trial has reported, while others run and write
READ_ONLY_SCRIPT = """
set -u
mount -t tmpfs -o size=64M tmpfs "$STORE" || exit 77
dcsweep() {{ "{python}" -m dcsweep.runner.cli "$@"; }}
dcsweep run "$SPACE" --name ro --storage "$STORE" --tracking-uri "$URI" --json > "$OUT/run.json" 2> "$OUT/run.err" &
sweep=$!
until grep -q "accuracy" "$OUT/run.err" 2>/dev/null || ! kill -0 $sweep 2>/dev/null; do sleep 0.2; done
mount -o remount,ro "$STORE"
wait $sweep
echo $? > "$OUT/run.rc"
"{python}" -c "$MLFLOW_STATE" "$URI" ro > "$OUT/after-run.json"
mount -o remount,rw "$STORE"
dcsweep resume ro --storage "$STORE" --json > "$OUT/resume.json" 2> "$OUT/resume.err"
echo $? > "$OUT/resume.rc"
"{python}" -c "$MLFLOW_STATE" "$URI" ro > "$OUT/after-resume.json"
"""


def _in_namespace(tmp_path: Path, script: str) -> tuple[Path, Path]:
    """``script`` run in a private mount namespace on the tiny space; (the storage, the folder
    of its outputs). Skips where the machine cannot mount a tmpfs there."""
    if not can_unshare() or not _can_mount_tmpfs(tmp_path):
        pytest.skip("needs `unshare -m` and mounting a tmpfs (root in a container, say); cannot here")
    store, out = tmp_path / "store", tmp_path / "out"
    store.mkdir()
    out.mkdir()
    (tmp_path / "space.yaml").write_text(SPACE)
    env = {"STORE": str(store), "OUT": str(out), "SPACE": str(tmp_path / "space.yaml"),
           "URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "MLFLOW_STATE": MLFLOW_STATE, "WHOLE_LINES": WHOLE_LINES}
    done = subprocess.run(["unshare", "-m", "bash", "-c", textwrap.dedent(script).format(python=sys.executable)],
                          env={**os.environ, **env}, timeout=1500, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return store, out


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    target = tmp_path / "probe"
    target.mkdir()
    return subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(target)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_full_storage_stops_the_sweep_cleanly_and_resume_finishes_it(tmp_path: Path) -> None:
    store, out = _in_namespace(tmp_path, SCRIPT)

    # the sweep filled the device mid-way and said so in its last line, naming the device
    err = (out / "run.err").read_text()
    assert (out / "run.rc").read_text().strip() == "1", err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"dcsweep: failed: no space left on the device of the sweep storage {store}: "
                           f"tmpfs (tmpfs) mounted at {store}"), last
    assert "dcsweep resume full" in last
    assert "dense accuracy" in err  # trials ran before the device filled
    # nothing in the storage was cut short: every file there is whole (or absent)
    assert (out / "cut-short.txt").read_text() == ""
    # no run left RUNNING: the parent and the children that were running are FAILED, saying why
    runs = json.loads((out / "after-run.json").read_text())
    assert runs and not [r for r in runs if r["status"] == "RUNNING"], runs
    parent = next(r for r in runs if r["role"] == "parent")
    assert parent["status"] == "FAILED" and "no space left on the device" in parent["error"]
    assert any(r["status"] == "FAILED" and "no space left" in r["error"] for r in runs if r["role"] == "child")

    # with space freed, resume finishes every trial; the runs end FINISHED with no stale error
    resume_err = (out / "resume.err").read_text()
    assert (out / "resume.rc").read_text().strip() == "0", resume_err[-3000:]
    result = json.loads((out / "resume.json").read_text())
    assert result["errors"] == [] and len(result["trials"]) == 6
    runs = json.loads((out / "after-resume.json").read_text())
    assert len(runs) == 7 and all(r["status"] == "FINISHED" and not r["error"] for r in runs), runs


@pytest.mark.slow
def test_a_storage_turned_read_only_fails_the_sweep_naming_the_path_and_resume_finishes_it(tmp_path: Path) -> None:
    store, out = _in_namespace(tmp_path, READ_ONLY_SCRIPT)

    # a failure, not an interruption: exit 1 and a last line naming the path and the OS error
    err = (out / "run.err").read_text()
    assert (out / "run.rc").read_text().strip() == "1", err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"dcsweep: failed: the sweep storage {store} refused a write: "
                           f"[Errno 30] Read-only file system: '{store}/"), last
    assert "dcsweep resume ro" in last and "interrupted" not in err
    runs = json.loads((out / "after-run.json").read_text())
    assert runs and not [r for r in runs if r["status"] == "RUNNING"], runs
    parent = next(r for r in runs if r["role"] == "parent")
    assert parent["status"] == "FAILED" and "Read-only file system" in parent["error"], parent

    # writable again, resume finishes every trial, once each
    resume_err = (out / "resume.err").read_text()
    assert (out / "resume.rc").read_text().strip() == "0", resume_err[-3000:]
    result = json.loads((out / "resume.json").read_text())
    assert result["errors"] == [] and len(result["trials"]) == 6
    runs = json.loads((out / "after-resume.json").read_text())
    assert len(runs) == 7 and all(r["status"] == "FINISHED" and not r["error"] for r in runs), runs
