"""The trial side of a sweep, in Ray's workers: the Tune trainable.

Everything here runs on the cluster's nodes, so it reads nothing from the driver's disk: the
stages (the dense model first) come from the sweep storage, checkpoints through Tune's storage.
A trial's files (the cycle's checkpoints, the .dcz and plots) live in one
temporary folder that is removed when the trial ends, fails or is retried; the folder of a
worker that was killed is removed by the next trial that starts on its node.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray import tune

from dcsweep.runner.cycle import FINAL, CycleCallbacks, CycleResult, DivergedError, Report, run_cycle
from dcsweep.runner.cycle.results import MODEL_FILE, PLOTS_DIR, RESULT_FILE
from dcsweep.runner.sweep.stages import StageStore

from .env import TEST_HOOKS
from .uploads import make_uploads_atomic

TRIAL_PREFIX = "dcsweep-trial-"
WORLD_SIZE = "world_size"  # in a multi-worker trial's reports: how many workers ran it


class _TuneReporter(CycleCallbacks):
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_phase_end(self, phase: str, checkpoint_dir: Path | None, result: CycleResult) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        _report(result.metrics(phase), checkpoint)
        self.after(phase)

    def after(self, phase: str) -> None:
        """The test hooks' turn once a phase was reported (see testing.py)."""
        if os.environ.get(TEST_HOOKS):
            from . import testing

            testing.after_report(phase, self.config, tune.get_context().get_trial_id())


def _report(metrics: dict[str, Any], checkpoint: Any = None) -> None:
    if os.environ.get(TEST_HOOKS):
        from . import testing

        metrics = {**metrics, **testing.extra_metrics()}
    tune.report(metrics, checkpoint=checkpoint)


def trial(config: dict[str, Any], swept: tuple[str, ...] = (), stages: str | None = None,
          shared: tuple[str, ...] | None = None, sweep: str | None = None,
          workers: tuple[int, float, float] = (1, 0.0, 0.0)) -> None:
    """Ray Tune trainable: one full cycle, continuing from the trial's last checkpoint.
    ``swept`` names the settings every config of the sweep's space has; ``stages`` is the
    storage whose stage store the trial shares (None: it computes every phase itself), and
    ``shared`` the phases it shares there (None: all); ``sweep`` the sweep's name, noted in
    each stage the trial makes or reuses. ``workers``: (N, CPUs, GPUs of each); with N > 1
    the cycle runs data-parallel on N Ray Train workers (see workers.py), else here."""
    missing = [name for name in swept if name not in config]
    if missing:  # e.g. a Tune state that failed to restore and made up a trial: never run it
        raise ValueError(f"trial config lacks the space's swept settings {missing}: it is not from this sweep's "
                         f"space, so it is not run")
    make_uploads_atomic()  # this worker's checkpoints reach the storage whole or not at all
    checkpoint = tune.get_checkpoint()
    with contextlib.ExitStack() as stack:
        resume = Path(stack.enter_context(checkpoint.as_directory())) if checkpoint else None
        if resume is not None and (resume / RESULT_FILE).is_file():  # finished before the restart
            _report(CycleResult.from_json(json.loads((resume / RESULT_FILE).read_text())).metrics(FINAL))
            return
        work = stack.enter_context(_trial_folder())
        out = work / "out"
        if workers[0] > 1:
            _on_workers(config, workers, stages, shared, sweep, resume, work)
            return
        try:
            result = run_cycle(config, output=out / MODEL_FILE, callbacks=_TuneReporter(config), resume_from=resume,
                               plots=out / PLOTS_DIR, workdir=work, device=trial_device(config, ray.get_gpu_ids()),
                               stages=StageStore(stages, shared, work, sweep) if stages is not None else None)
        except DivergedError as exc:
            # deterministic: a retry would diverge again. The trial ends here with the reason.
            _report(Report.diverged(str(exc)))
            return
        (out / RESULT_FILE).write_text(json.dumps(result.to_json()))
        # Tune copies the checkpoint into the sweep storage before report returns
        _report(result.metrics(FINAL), tune.Checkpoint.from_directory(str(out)))


def _on_workers(config: dict[str, Any], workers: tuple[int, float, float], stages: str | None,
                shared: tuple[str, ...] | None, sweep: str | None, resume: Path | None, work: Path) -> None:
    from .workers import run_on_workers

    reporter, world = _TuneReporter(config), {WORLD_SIZE: workers[0]}

    def on_phase(metrics: dict[str, Any], folder: Path) -> None:
        _report({**metrics, **world}, tune.Checkpoint.from_directory(str(folder)))
        reporter.after(metrics.get("phase", ""))

    result, diverged = run_on_workers(config, workers=workers[0], cpu=workers[1], gpu=workers[2], stages=stages,
                                      shared=shared, sweep=sweep, resume=resume, work=work, on_phase=on_phase)
    if result is None:
        _report({**Report.diverged(diverged or "training diverged"), **world})
        return
    out = work / "out"
    (out / RESULT_FILE).write_text(json.dumps(result.to_json()))
    _report({**result.metrics(FINAL), **world}, tune.Checkpoint.from_directory(str(out)))


def trial_device(config: dict[str, Any], gpu_ids: list[Any]) -> str | None:
    """Where a trial computes: ``auto`` takes a GPU only when Ray gave the trial one. Ray leaves
    every GPU visible to a worker that asked for none, so without this a CPU trial would take
    a GPU that another trial (or another job) holds."""
    return "cpu" if config.get("device", "auto") == "auto" and not gpu_ids else None


@contextlib.contextmanager
def _trial_folder() -> Iterator[Path]:
    """This attempt's folder, removed when it ends however it ends; first the folders of
    killed workers on this node (their process is gone) are removed."""
    root = Path(tempfile.gettempdir())
    for stale in root.glob(f"{TRIAL_PREFIX}*"):
        pid = stale.name.removeprefix(TRIAL_PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{TRIAL_PREFIX}{os.getpid()}-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, and not ours to judge
        return True
    return True
