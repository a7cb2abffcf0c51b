"""Helpers the runner's tests share: tiny data sets in the real on-disk formats, the `dcsweep`
CLI as a subprocess, the processes it leaves (ended by id), MLflow web servers, and readers of
what a sweep left in MLflow and in Tune's trial folders."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

#: The bucket the moto S3 server of the tests holds.
BUCKET = "dcsweep-test"

#: A sweep of 6 short trials whose runs, checkpoints and front the resume tests compare.
SPACE = """
name: resumable
fixed: {model: lenet300, dataset: digits, epochs: 4, prune_steps: 2, prune_epochs: 6, share_epochs: 3}
swept:
  sparsity: {grid: [0.5, 0.9, 0.97]}
  k: {grid: [2, 16]}
search: {algorithm: grid, max_concurrent: 2}
resources: {cpu: 1}
max_failures: 2
"""


# -- data sets in their real on-disk formats ----------------------------------------------------

def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        Path(f"{path}.gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 60, n_test: int = 20, compress: bool = False) -> Path:
    """The layout torchvision's MNIST download leaves: ROOT/MNIST/raw/*-ubyte."""
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 50, (n, 28, 28))
        images[np.arange(n), labels * 2 + 3, 5:20] = 255  # a learnable stroke per class
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return root


def cifar_arrays(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 60, (n, 3, 32, 32)).astype(np.uint8)
    for i, label in enumerate(labels):  # a learnable bar per class
        images[i, label % 3, :, : 3 + label % 20] = 250
    return images, labels


def write_cifar_bin(root: Path, classes: int = 10, n: int = 10) -> Path:
    """CIFAR's binary version: cifar-10-batches-bin/data_batch_N.bin (cifar-100-binary/*.bin)."""
    if classes == 10:
        folder, files = root / "cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    else:
        folder, files = root / "cifar-100-binary", ["train.bin", "test.bin"]
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(files):
        images, labels = cifar_arrays(n, classes, i)
        label_bytes = labels[:, None] if classes == 10 else np.stack((labels // 5, labels), 1)
        records = np.concatenate((label_bytes.astype(np.uint8), images.reshape(n, -1)), axis=1)
        (folder / name).write_bytes(records.tobytes())
    return root


def write_cifar_py(root: Path, classes: int = 10, n: int = 10) -> Path:
    """CIFAR's Python version: pickled dicts with bytes keys, as the official archive has."""
    if classes == 10:
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        folder, key = root / "cifar-10-batches-py", b"labels"
    else:
        folder, files, key = root / "cifar-100-python", ["train", "test"], b"fine_labels"
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(files):
        images, labels = cifar_arrays(n, classes, i)
        batch = {b"data": images.reshape(n, -1), key: labels.tolist(), b"batch_label": b"batch"}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def write_imagefolder(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{i}.png")
    return root



# -- processes ----------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc; psutil is not a dependency)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_after_finished(proc: subprocess.Popen, tune_dir: Path, finished: int) -> None:
    """SIGKILL a ``dcsweep`` subprocess and the Ray it started once ``finished`` trials of the
    Tune experiment in ``tune_dir`` have finished."""
    deadline = time.monotonic() + 300
    while sum(bool(r) and r[-1]["phase"] == "final" for r in map(trial_rows, tune_dir.glob("trial_*"))) < finished:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    pids = children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kill(pids)


@contextlib.contextmanager
def cli(*argv: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """``dcsweep ARGV`` as a subprocess; on exit it and everything it started are killed."""
    proc = subprocess.Popen([sys.executable, "-m", "dcsweep.runner.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    started: set[int] = set()
    try:
        yield proc
    finally:
        started.update(children(proc.pid))
        kill([proc.pid, *started])
        with contextlib.suppress(ValueError):  # pipes already read by finish
            proc.communicate(timeout=30)


def finish(proc: subprocess.Popen, within: float = 600) -> dict:
    out, err = proc.communicate(timeout=within)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out)


def can_unshare() -> bool:
    """Whether this machine lets a test start a process in its own mount namespace (root in a
    container, say), to show it a folder other processes see differently."""
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "true"], capture_output=True).returncode == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(command: list[str], port: int, within: float = 120, stop: int = signal.SIGTERM) -> Iterator[str]:
    """Start an MLflow web server process, wait for its /health on 127.0.0.1, and end its whole
    process group afterwards (MLflow starts worker processes) with signal ``stop``: SIGTERM by
    default, SIGKILL for an outage (a graceful stop keeps serving for a while)."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    health = f"http://127.0.0.1:{port}/health"
    try:
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=2) as answer:
                if answer.status == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{command[0]} did not become healthy on port {port} in {within:g} s")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, stop)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def mlflow_server_command(folder: Path, port: int) -> list[str]:
    """A real `mlflow server` on 127.0.0.1 with its store and artifacts under ``folder``."""
    return [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination",
            str(folder / "server-artifacts")]


# -- what a sweep left --------------------------------------------------------------------------

def child_runs(tracking_uri: str, name: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("dcsweep.role") == "child"]


def front(result: dict) -> set[tuple]:
    return {(t["params"]["sparsity"], t["params"]["k"], t["accuracy"], t["compressed_bytes"])
            for t in result["trials"] if t["pareto_optimal"]}


def ours_in_temp(root: Path | None = None) -> set[str]:
    """What dcsweep has in the temporary folder ``root`` (default: this session's own, see
    conftest.py; the workers of a local Ray share it)."""
    return {p.name for p in (root or Path(tempfile.gettempdir())).glob("dcsweep-*")}


def own_temp() -> tuple[Path, dict[str, str]]:
    """A temporary folder of one test's own, and the environment that gives it to a process
    the test starts (and to that process's Ray workers)."""
    folder = Path(tempfile.mkdtemp(prefix="test-"))
    return folder, {"TMPDIR": str(folder)}


def trial_rows(trial_dir: Path) -> list[dict]:
    """The results a trial reported, from its folder in Tune's experiment."""
    file = trial_dir / "result.json"
    return [json.loads(line) for line in file.read_text().splitlines()] if file.is_file() else []
