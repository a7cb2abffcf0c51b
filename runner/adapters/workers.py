"""A trial that computes on several Ray Train workers: the Tune trainable (``trainable.trial``)
builds a ``TorchTrainer`` of N workers that run one cycle together, data-parallel (see
runner/cycle/parallel.py), and relays what rank 0 reports to Tune.

Rank 0 sends each phase's checkpoint files, and at the end the trial's .dcz, plots and result,
through a Ray queue to the trial's own process, which reports them to Tune exactly as a
one-worker trial does: Tune keeps the checkpoints, the MLflow callbacks see the same reports,
and a retried or resumed trial starts its workers from its last checkpoint. Ray Train's own
retries are off: a worker that dies fails the trial, and Tune retries it (``max_failures``).
Train's workers hold their resources only while ``fit`` runs: when a trial ends, however it
ends, its placement group goes with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from dcsweep.runner.cycle import CycleCallbacks, CycleResult, DivergedError, run_cycle
from dcsweep.runner.cycle.parallel import current_ranks
from dcsweep.runner.cycle.results import MODEL_FILE, PLOTS_DIR
from dcsweep.runner.sweep.storage import Storage

#: Seconds between looks at the queue while the workers run (and at whether they still do).
POLL_S = 0.5
#: Seconds a collective may wait. Rank 0 waits on another trial's stage lease (a dense model can
#: take hours) while the other ranks wait on its answer: Ray Train's default of 30 minutes would
#: fail such a trial. A day still ends a truly hung group.
COLLECTIVE_TIMEOUT_S = 24 * 3600
#: Files of a checkpoint or result folder sent over the queue: each is read whole, so bounded.
MAX_FILE_BYTES = 4 << 30

Files = dict[str, bytes]  # relative path -> content


def read_files(folder: Path | None) -> Files:
    """Every file under ``folder`` by its relative path (none when there is no folder)."""
    if folder is None:
        return {}
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"{path} is {path.stat().st_size} bytes; a trial's file may be at most {MAX_FILE_BYTES}")
        out[path.relative_to(folder).as_posix()] = path.read_bytes()
    return out


def write_files(files: Files, folder: Path) -> Path:
    """``files`` under ``folder`` (made); only plain relative paths are written."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        target = (folder / name).resolve()
        if not target.is_relative_to(folder.resolve()):  # a name with ../ would write elsewhere
            raise ValueError(f"file name {name!r} leaves its folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return folder


def run_on_workers(config: dict[str, Any], *, workers: int, cpu: float, gpu: float, stages: str | None,
                   shared: tuple[str, ...] | None, sweep: str | None, resume: Path | None, work: Path,
                   on_phase: Callable[[dict[str, Any], Path], None]) -> tuple[CycleResult | None, str | None]:
    """The cycle on ``workers`` Ray Train workers of ``cpu``/``gpu`` each. ``on_phase(metrics,
    folder)`` is called here, in the trial's process, after each phase rank 0 ends. Returns
    (the result with the trial's files written under ``work / "out"``, None), or (None, the
    reason) when training diverged. A worker's failure is raised."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    loop_config = {"config": config, "stages": stages, "shared": shared, "sweep": sweep,
                   "resume": read_files(resume), "queue": queue}
    storage = str(work / "train") if stages is None else f"{stages.rstrip('/')}/train"
    name = f"trial-{uuid.uuid4().hex[:12]}"
    trainer = TorchTrainer(
        _worker, train_loop_config=loop_config, torch_config=TorchConfig(timeout_s=COLLECTIVE_TIMEOUT_S),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu > 0,
                                     resources_per_worker={"CPU": cpu, **({"GPU": gpu} if gpu > 0 else {})}),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=0)))
    failure: list[BaseException] = []
    fitting = threading.Thread(target=_fit, args=(trainer, failure), name="dcsweep-train", daemon=True)
    fitting.start()
    outcome: tuple[CycleResult | None, str | None] = (None, None)
    phases = 0
    try:
        while True:
            try:
                kind, payload, files = queue.get(timeout=POLL_S)
            except Empty:
                if not fitting.is_alive():
                    break
                continue
            if kind == "phase":
                phases += 1
                on_phase(payload, write_files(files, work / f"phase-{phases}"))
            elif kind == "final":
                write_files(files, work / "out")
                result = CycleResult.from_json(payload)
                if result.encoded is not None and result.encoded.path is not None:  # here, not in the worker
                    result = dataclasses.replace(result, encoded=dataclasses.replace(
                        result.encoded, path=str(work / "out" / MODEL_FILE)))
                outcome = (result, None)
            else:  # diverged
                outcome = (None, str(payload))
        fitting.join()
    finally:
        with contextlib.suppress(Exception):
            queue.shutdown(force=True)
        if stages is not None:  # Train's record of this attempt: Tune keeps the trial's own
            with contextlib.suppress(Exception):
                Storage(stages).remove_tree("train", name)
    if failure:
        raise failure[0]
    return outcome


def _fit(trainer: Any, failure: list[BaseException]) -> None:
    try:
        trainer.fit()
    except BaseException as exc:  # noqa: BLE001 - handed to the trial's thread, which raises it
        failure.append(exc)


class _Relay(CycleCallbacks):
    """Rank 0's phase ends, sent to the trial's process; the other ranks send nothing."""

    def __init__(self, queue: Any, rank: int) -> None:
        self.queue, self.rank = queue, rank

    def on_phase_end(self, phase: str, checkpoint_dir: Path | None, result: CycleResult) -> None:
        if self.rank == 0:
            self.queue.put(("phase", result.metrics(phase), read_files(checkpoint_dir)))


def _worker(loop: dict[str, Any]) -> None:
    """One Ray Train worker's part: the whole cycle on its rank."""
    import tempfile

    import torch

    from dcsweep.runner.sweep.stages import StageStore

    from .trainable import trial_device

    ranks = current_ranks()
    config, rank = loop["config"], ranks.rank
    if torch.cuda.is_available() and ray.get_gpu_ids():
        from ray.train.torch import get_device

        torch.cuda.set_device(get_device())  # "cuda" is then this worker's own GPU
    with tempfile.TemporaryDirectory(prefix="dcsweep-worker-") as tmp:
        work = Path(tmp)
        resume = write_files(loop["resume"], work / "resume") if loop["resume"] else None
        store = (StageStore(loop["stages"], loop["shared"], work, loop["sweep"])
                 if rank == 0 and loop["stages"] is not None else None)
        out = work / "out"
        try:
            result = run_cycle(config, output=out / MODEL_FILE if rank == 0 else None,
                               plots=out / PLOTS_DIR if rank == 0 else None, callbacks=_Relay(loop["queue"], rank),
                               resume_from=resume, workdir=work, device=trial_device(config, ray.get_gpu_ids()),
                               stages=store, ranks=ranks)
        except DivergedError as exc:  # every rank stops at the same check
            if rank == 0:
                loop["queue"].put(("diverged", str(exc), {}))
            return
        if rank == 0:
            loop["queue"].put(("final", result.to_json(), read_files(out)))

