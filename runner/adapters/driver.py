"""The driver of a sweep: Ray Tune runs the trials, MLflow gets their results.

A sweep resumed after its driver died restores Tune's experiment from the sweep storage
(pickled state: only from a storage the user names) and brings MLflow level with it; finished
trials are never rerun and their runs never touched. The workers' side is ``trainable.py``;
MLflow is reached only through ``tracking.py`` (and ``callbacks.py`` on top of it), imported
late: importing MLflow and opening its store take seconds that overlap Ray's start.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from dcsweep.runner.cycle import DIVERGED, FINAL, CycleConfig, Trial
from dcsweep.runner.cycle.pareto import mark_front
from dcsweep.runner.cycle.results import RATIO_METRIC
from dcsweep.runner.cycle.stages import stage_keys
from dcsweep.runner.sweep import Sweep
from dcsweep.runner.sweep.lease import LeaseLost
from dcsweep.runner.sweep.places import TRIAL_PROCESS_CPU, trials_at_once
from dcsweep.runner.sweep.spec import write_sweep_files
from dcsweep.runner.sweep.storage import (
    StorageFault,
    is_fault,
    is_full,
    storage_full,
    storage_unwritable,
    unwritable,
)
from dcsweep.search_spaces import SearchSpace

from . import uploads
from .env import keep_secrets_out_of_runtime_env, loopback_only, set_driver_defaults
from .nodes import check_shared_storage, fit_resources
from .trainable import trial
from .uploads import make_uploads_atomic

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from .tracking import SweepTracker

log = logging.getLogger("dcsweep")


def ordered_grid(space: SearchSpace) -> list[dict[str, Any]] | None:
    """The grid's points in the order that shares stages soonest: first one trial per distinct
    pruned stage (each computes its own, in parallel), then the trials that take them. Tune's
    own grid order varies one setting fastest, which would have the first trials all wait for
    one pruned model. None when the space is not a grid whose trials share stages."""
    grid = [d for d in space.swept if d.kind == "grid"]
    if space.algorithm != "grid" or not space.share_stages or not grid:
        return None
    groups: dict[str, list[dict[str, Any]]] = {}
    fixed = {**space.fixed, **ladder_of(space)}
    for values in itertools.product(*(d.values for d in grid)):
        point = {d.name: v for d, v in zip(grid, values, strict=True)}
        key = stage_keys(CycleConfig.from_dict({**fixed, **point}))["pruned"]
        groups.setdefault(key, []).append(point)
    ordered = [p for rank in itertools.zip_longest(*groups.values()) for p in rank if p is not None]
    return ordered * space.num_samples


def ladder_of(space: SearchSpace) -> dict[str, Any]:
    """``{"ladder": the swept sparsities}`` for a space that prunes on a ladder and does not
    give its rungs itself; else nothing."""
    if space.fixed.get("prune_schedule") != "ladder" or "ladder" in space.fixed:
        return {}
    values = [v for d in space.swept if d.name == "sparsity" and d.kind in ("grid", "choice") for v in d.values]
    return {"ladder": sorted(values)} if values else {}


def param_space(space: SearchSpace) -> dict[str, Any]:
    params: dict[str, Any] = {**space.fixed, **ladder_of(space)}
    presets = ordered_grid(space) is not None  # the grid's values come as the searcher's points
    for d in space.swept:
        if d.kind == "grid" and space.algorithm == "grid":
            # the searcher's points set these (Tune wants each one declared, and checks them)
            params[d.name] = tune.choice(list(d.values)) if presets else tune.grid_search(list(d.values))
        elif d.kind in ("grid", "choice"):
            params[d.name] = tune.choice(list(d.values))
        else:  # a range; snapped to its step, values repeat and trials share stages
            low, high = d.values
            if d.kind == "uniform":
                params[d.name] = tune.quniform(low, high, d.step) if d.step else tune.uniform(low, high)
            elif d.kind == "loguniform":
                params[d.name] = tune.qloguniform(low, high, d.step) if d.step else tune.loguniform(low, high)
            else:
                params[d.name] = tune.qrandint(low, high, int(d.step)) if d.step else tune.randint(low, high)
    return params


def run_sweep(sweep: Sweep) -> dict[str, Any]:
    """Run (or, with ``sweep.resume``, continue) the sweep; the JSON of ``dcsweep run``."""
    set_driver_defaults()
    keep_secrets_out_of_runtime_env()
    make_uploads_atomic()
    uploads.REFUSED_WRITES.clear()
    started_here = not ray.is_initialized()
    with ThreadPoolExecutor(2, thread_name_prefix="dcsweep") as pool:
        # Importing MLflow and creating a new store's tables take seconds: for a local sweep
        # (every check already done) Ray starts meanwhile; a cluster's checks come first.
        client = None if sweep.address else pool.submit(_mlflow_client, sweep.tracking_uri)
        if started_here:  # "local": never join a cluster some earlier `ray start` left behind
            with contextlib.nullcontext() if sweep.address else loopback_only():
                ray.init(address=sweep.address or "local", include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False, num_cpus=None if sweep.address else os.cpu_count())
        try:
            if client is None:  # a cluster: a trial no node can hold, a storage some node cannot see
                sweep = fit_resources(sweep)
                check_shared_storage(sweep)
                client = pool.submit(_mlflow_client, sweep.tracking_uri)
            tracker, outcome, results = _run(sweep, client)
            # the parent's pareto.csv/png are drawn while Ray's processes stop
            trials = pool.submit(_final_trials, tracker, sweep, results, outcome)
        finally:
            if started_here:
                ray.shutdown()
        outcome["trials"] = [t.to_json() for t in trials.result()]
    return outcome


def _mlflow_client(uri: str) -> MlflowClient:
    from .pyfunc import warm_up
    from .tracking import open_client

    client = open_client(uri)
    # MLflow's model code takes seconds to import: here, while Ray starts, not in Tune's event
    # loop when the first trial finishes (where it would hold back Tune's saves of its state)
    warm_up()
    return client


def _run(sweep: Sweep, client: Future[MlflowClient]) -> tuple[SweepTracker, dict[str, Any], tune.ResultGrid]:
    from .callbacks import (
        MlflowCallback,
        ProgressCallback,
        StorageGuard,
        register_tracker,
        stage_totals,
        sync_results,
    )
    from .tracking import SweepTracker

    # the tracking store first: one MLflow cannot use fails the sweep before anything is written
    local = sweep.tracking_uri.startswith(("sqlite:", "file:"))  # keeps artifacts beside it; a server its own
    artifacts = (sweep.storage.local / "mlartifacts").as_uri() if sweep.storage.local else sweep.storage.uri(
        "mlartifacts")
    tracker = SweepTracker(client.result(), sweep.name, artifacts if local else None,
                           params={"space": sweep.space.name, "algorithm": sweep.space.algorithm,
                                   "smoke_test": sweep.smoke}, new=not sweep.resume)
    tracker.swept = tuple(d.name for d in sweep.space.swept)
    try:  # from here a failure ends the parent run as FAILED, not left RUNNING
        tracker.describe(sweep.space.description)
        if not sweep.resume:
            write_sweep_files(sweep)
        register_tracker(tracker)
        callbacks = [StorageGuard(sweep.storage.root if sweep.storage.local else None),
                     MlflowCallback(sweep.name, sweep.space), ProgressCallback(sweep.space), JsonLoggerCallback()]
        # the dense model is a stage every trial shares (trained once, by the first trial to
        # need it); the other phases only when the space shares stages
        space = sweep.space
        trainable = tune.with_parameters(trial, swept=tuple(d.name for d in space.swept),
                                         stages=sweep.storage.root,
                                         shared=None if space.share_stages else ("dense",), sweep=sweep.name,
                                         workers=(space.workers, space.cpu, space.gpu))
        # a multi-worker trial's own process only waits on its Ray Train workers, which hold
        # the CPUs and GPUs (placed by Train, anywhere in the cluster)
        trainable = tune.with_resources(trainable, {"cpu": space.cpu, "gpu": space.gpu} if space.workers == 1
                                        else {"cpu": TRIAL_PROCESS_CPU})
        path = sweep.storage.uri(*sweep.folder, "tune")
        if sweep.resume and tune.Tuner.can_restore(path):
            log.info("resuming sweep %s from %s", sweep.name, path)
            # the callbacks come back from Tune's pickled state and find this driver's tracker.
            # A sweep a full or unwritable storage stopped retries its failed trials too: a trial
            # whose own checkpoint upload the storage refused ended in error, not for a fault of its own
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True,
                                       resume_errored=is_fault(tracker.stopped_by))
        else:
            cluster = ray.cluster_resources()
            at_once = trials_at_once(space, cluster.get("CPU", 0.0), cluster.get("GPU", 0.0))
            tuner = tune.Tuner(trainable, param_space=param_space(space),
                               tune_config=_tune_config(replace(space, max_concurrent=at_once)),
                               run_config=tune.RunConfig(
                                   name="tune", storage_path=sweep.storage.uri(*sweep.folder), verbose=0,
                                   failure_config=tune.FailureConfig(max_failures=sweep.space.max_failures),
                                   checkpoint_config=tune.CheckpointConfig(num_to_keep=2), callbacks=callbacks))
        with _without_tunes_restore_hint():
            results = tuner.fit()
        errors = [str(r.error) for r in _each(results) if r.error is not None]
        # Tune ends fit() early, state saved, on a Ctrl-C (SIGINT): trials are left unended
        ended = sum(r.error is not None or (r.metrics or {}).get("phase") in (FINAL, DIVERGED) for r in _each(results))
        interrupted = ended < sweep.space.total_trials
        errors += [f"trial {r.metrics.get('trial_id')} stopped: {r.metrics.get('error')}" for r in _each(results)
                   if r.error is None and r.metrics and r.metrics.get("phase") == DIVERGED]
        try:
            sync_results(tracker, sweep.space, results)
            tracker.log_stage_totals(*stage_totals(results))
            tracker.finish("KILLED" if interrupted else "FAILED" if errors and len(errors) == len(results)
                           else "FINISHED")
        except Exception as exc:  # noqa: BLE001 - MLflow unreachable: the storage keeps everything
            log.warning("MLflow is unreachable at the end of the sweep (%s); `dcsweep resume %s` logs the "
                        "results kept in the sweep storage", str(exc).splitlines()[0][:200], sweep.name)
    except BaseException as exc:
        if isinstance(exc, LeaseLost):  # the driver that took the sweep over runs its MLflow runs now
            raise
        root = sweep.storage.root if sweep.storage.local else None
        if not (is_fault(exc, root) or uploads.REFUSED_WRITES):
            with contextlib.suppress(Exception):  # a second Ctrl-C: stopped by its user, not failed
                tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        raise _stopped_by_storage(tracker, sweep, exc) from exc
    if uploads.REFUSED_WRITES:  # Tune's last save of its state was refused: resume needs it
        raise _stopped_by_storage(tracker, sweep, uploads.REFUSED_WRITES[-1])
    computed, reused, saved = stage_totals(results)
    return tracker, {"name": sweep.name, "storage": str(sweep.storage), "tracking_uri": sweep.tracking_uri,
                     "experiment_id": tracker.experiment_id, "parent_run_id": tracker.parent_id,
                     "errors": errors, "stages": {"computed": computed, "reused": reused,
                                                  "trial_seconds_saved": saved},
                     "interrupted": interrupted, "trials_ended": ended,
                     "trials_total": sweep.space.total_trials}, results


class _DropRestoreHint(logging.Filter):
    """Tune's advice after a Ctrl-C names its own Python API (``Tuner.restore(...)``); the CLI
    prints the command that resumes a dcsweep sweep instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


@contextlib.contextmanager
def _without_tunes_restore_hint() -> Iterator[None]:
    hint = _DropRestoreHint()
    tune_log = logging.getLogger("ray.tune.tune")
    tune_log.addFilter(hint)
    try:
        yield
    finally:
        tune_log.removeFilter(hint)


def _stopped_by_storage(tracker: SweepTracker, sweep: Sweep, cause: BaseException) -> StorageFault:
    """The error of a sweep its storage stopped (full, read-only, denied; the first of ``cause``
    or the refused uploads that says which), with the runs MLflow still reaches marked FAILED."""
    causes = [cause, *reversed(uploads.REFUSED_WRITES)]
    refused = [text for text in map(unwritable, causes) if text]
    if refused and not any(map(is_full, causes)):
        error: StorageFault = storage_unwritable(sweep.storage, sweep.name, refused[0])
    else:
        error = storage_full(sweep.storage, sweep.name)
    with contextlib.suppress(Exception):  # MLflow's store may be on the same device
        tracker.finish("FAILED", children="FAILED", error=str(error))
    return error


def _final_trials(tracker: SweepTracker, sweep: Sweep, results: tune.ResultGrid,
                  outcome: dict[str, Any]) -> list[Trial]:
    """The trials with the Pareto front, from MLflow (logging pareto.csv/png on the parent), or
    from Tune's results when MLflow is unreachable."""
    try:
        trials = tracker.update_pareto()
        if tracker.registered:
            outcome["registered_model"] = {"name": tracker.name, "aliases": tracker.registered}
        return trials
    except Exception:  # noqa: BLE001 - MLflow unreachable: the front from the sweep storage
        outcome["mlflow_pending"] = True
        done = [(r.config or {}, r.metrics) for r in _each(results)
                if r.error is None and r.metrics and r.metrics.get("phase") == FINAL]
        return mark_front([Trial(None, {d.name: str(config.get(d.name)) for d in sweep.space.swept},
                                 metrics["accuracy"], int(metrics["compressed_bytes"]), metrics.get(RATIO_METRIC),
                                 metrics.get("val_accuracy"))
                           for config, metrics in done])


def _each(results: tune.ResultGrid) -> list[tune.Result]:
    return [results[i] for i in range(len(results))]


def trial_dirname(swept: tuple[str, ...], trial: Any) -> str:
    """Tune's own folder name for a trial, ``trial_<id>_<n>_<settings>_<date>``, with the swept
    settings even when they came as the searcher's points (which Tune leaves out)."""
    from ray.tune.search.variant_generator import format_vars

    values = format_vars({(name,): trial.config[name] for name in swept if name in trial.config})
    tag = trial.experiment_tag if not values or values in trial.experiment_tag else f"{trial.experiment_tag}_{values}"
    return f"{trial}_{tag}"[:130] + time.strftime("_%Y-%m-%d_%H-%M-%S")


def _tune_config(space: SearchSpace) -> tune.TuneConfig:
    if space.algorithm == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        # metric/mode only here: also setting them on TuneConfig silently makes it single-objective
        # validation accuracy: a searcher steered by the test part would overstate its front
        search = OptunaSearch(metric=["val_accuracy", "compressed_bytes"], mode=["max", "min"],
                              sampler=optuna_sampler(space.seed))
        return tune.TuneConfig(search_alg=ConcurrencyLimiter(search, max_concurrent=space.max_concurrent),
                               num_samples=space.num_samples, reuse_actors=True)
    # reuse_actors: a trial's worker keeps torch imported for the next trial (seconds each)
    from ray.tune.search import BasicVariantGenerator

    points = ordered_grid(space)
    if points is not None:
        return tune.TuneConfig(num_samples=len(points), reuse_actors=True, search_alg=BasicVariantGenerator(
            points_to_evaluate=points, max_concurrent=space.max_concurrent),
            trial_dirname_creator=functools.partial(trial_dirname, tuple(d.name for d in space.swept)))
    # random search: search.seed makes the same trials again (Tune's default draws from np.random)
    return tune.TuneConfig(num_samples=space.num_samples, reuse_actors=True, search_alg=BasicVariantGenerator(
        max_concurrent=space.max_concurrent, random_state=space.seed))


def optuna_sampler(seed: int) -> Any:
    """Multi-objective TPE with every setting spelled out, so a sweep samples alike on each
    supported Optuna (3.6 to 5.x; 5.0 changed TPE's defaults and made it the multi-objective
    default). TPE, not NSGA-II: Optuna advises TPE or GP below about 1,000 trials, and a sweep has
    tens. Constant liar: Tune runs ``max_concurrent`` trials at once, and without it TPE proposes
    the same point to each of them. NSGA-II is also not picklable from Optuna 5.1 on (its
    generation cache holds a ``threading.Lock``), and Tune pickles the searcher with every
    snapshot of the experiment."""
    import warnings

    import optuna

    with warnings.catch_warnings():  # multivariate and constant_liar are "experimental" before 5.0
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10, n_ei_candidates=24, multivariate=True,
                                          constant_liar=True)
