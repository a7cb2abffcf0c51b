"""The driver of a sweep: Ray Tune runs the trials, MLflow gets their results.

Ray and MLflow calls live here, in ``trial.py`` (the workers' side), ``tune_callbacks.py`` and
``tracking.py``. A sweep resumed after its driver died restores Tune's experiment from the
sweep storage (pickled state: only from a storage the user names) and brings MLflow level with
it; finished trials are never rerun and their runs never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


from dcsweep.search_spaces import SearchSpace

from .config import ConfigError, CycleConfig
from .sweep import BASELINE_FIELDS, Sweep, baseline_key, write_sweep_files
from .trial import baseline_task, trial

log = logging.getLogger("dcsweep")
# Tune snapshots its experiment this often (seconds): a killed driver redoes at most the phase
# each running trial was in (Tune's "auto" can be 10 s or more, whole trials here).
EXPERIMENT_SNAPSHOT_S = "0.5"


def param_space(space: SearchSpace) -> dict[str, Any]:
    from ray import tune

    params: dict[str, Any] = dict(space.fixed)
    for d in space.swept:
        if d.kind == "grid" and space.algorithm == "grid":
            params[d.name] = tune.grid_search(list(d.values))
        elif d.kind in ("grid", "choice"):
            params[d.name] = tune.choice(list(d.values))
        elif d.kind == "uniform":
            params[d.name] = tune.uniform(*d.values)
        elif d.kind == "loguniform":
            params[d.name] = tune.loguniform(*d.values)
        else:
            params[d.name] = tune.randint(*d.values)
    return params


def fit_resources(sweep: Sweep) -> Sweep:
    """Refuse trials that no node can hold, before any starts; a smoke test shrinks them to fit."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    space = sweep.space
    if space.cpu <= cpu and space.gpu <= gpu:
        return sweep
    if sweep.smoke:
        fitted = replace(space, cpu=min(space.cpu, max(cpu, 1.0)), gpu=min(space.gpu, gpu))
        log.warning("smoke test: trials ask for %g CPU and %g GPU; the largest node has %g and %g, so each "
                    "trial gets %g CPU and %g GPU", space.cpu, space.gpu, cpu, gpu, fitted.cpu, fitted.gpu)
        return replace(sweep, space=fitted)
    raise ConfigError(f"trials ask for {space.cpu:g} CPU and {space.gpu:g} GPU, but the largest node has "
                      f"{cpu:g} CPU and {gpu:g} GPU; pass --cpus-per-trial/--gpus-per-trial or use a bigger cluster")


def check_shared_storage(sweep: Sweep) -> None:
    """On a cluster of several nodes every node must see the storage (trials checkpoint into
    it): a file written here is looked for by a task on each node. A path only this machine
    has is refused before anything starts."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2 or sweep.storage.local is None:  # an object store is the same from every node
        return
    sweep.storage.local.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=sweep.storage.local, prefix=".shared-probe-", suffix=".txt") as probe:
        token = os.urandom(16).hex()
        probe.write(token)
        probe.flush()
        sees = ray.remote(num_cpus=0)(_sees)
        refs = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(
            probe.name, token) for n in nodes]
        blind = []
        for node, ref in zip(nodes, refs, strict=True):
            try:
                if not ray.get(ref, timeout=60):
                    blind.append(node)
            except ray.exceptions.RayError as exc:  # a node that just died, or hangs, runs no trial either
                log.warning("storage check: node %s did not answer (%s)", node[:12], type(exc).__name__)
    if blind:
        raise ConfigError(f"storage {sweep.storage} is a local path that {len(blind)} of the cluster's "
                          f"{len(nodes)} nodes cannot see (node {blind[0][:12]}...); trials checkpoint into it, "
                          f"so give a shared filesystem path that every node mounts at the same place")


def _sees(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


@dataclass
class Baseline:
    """The sweep's dense baseline: its bytes in Ray's object store (``ref``) and, once
    ``stored`` is done, its file in the sweep storage."""

    key: str
    path: str  # in the storage
    ref: Any
    stored: Future


def start_baseline(sweep: Sweep, pool: ThreadPoolExecutor) -> Baseline | None:
    """Reuse the stored dense baseline or start training it as its own Ray task; None when a
    swept setting changes the baseline (each trial trains its own) or the space gives one.

    The task runs in a placement group reserved before Tune starts, so trials can never take
    all resources and wait forever for it; Tune starts its workers (seconds of imports) while
    it trains, and the reservation ends when it does."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if any(d.name in BASELINE_FIELDS for d in sweep.space.swept) or "dense_path" in sweep.space.fixed:
        return None
    key = baseline_key(sweep.space.fixed)
    storage, folder = sweep.storage, ("baselines", key)
    path = storage.uri(*folder, "model.dcz")
    if storage.exists(*folder, "model.dcz"):
        log.info("dense baseline %s: reusing %s", key, path)
        done: Future = Future()
        done.set_result(None)
        return Baseline(key, path, ray.put(storage.read_bytes(*folder, "model.dcz")), done)
    group = placement_group([{"CPU": sweep.space.cpu, "GPU": sweep.space.gpu}])
    ray.get(group.ready())
    task = ray.remote(num_cpus=sweep.space.cpu, num_gpus=sweep.space.gpu, num_returns=2)(baseline_task)
    blob, meta = task.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group)).remote(sweep.space.fixed)

    def store() -> None:
        try:
            data, (accuracy, seconds) = ray.get([blob, meta])
        finally:
            remove_placement_group(group)
        storage.write_bytes(data, *folder, "model.dcz")
        settings = CycleConfig.from_dict(sweep.space.fixed).to_dict()
        storage.write_text(json.dumps({"key": key, "accuracy": accuracy, "seconds": seconds,
                                       **{k: settings[k] for k in BASELINE_FIELDS}}, indent=1), *folder, "meta.json")
        log.info("dense baseline %s: accuracy %.4f in %.1f s, stored at %s", key, accuracy, seconds, path)

    return Baseline(key, path, blob, pool.submit(store))


def run_sweep(sweep: Sweep) -> dict[str, Any]:
    """Run (or, with ``sweep.resume``, continue) the sweep; the JSON of ``dcsweep run``."""
    import ray

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", EXPERIMENT_SNAPSHOT_S)
    # ...and Tune's own warning about snapshotting that often
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # a tracking server that went away must not stall the driver for minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    started_here = not ray.is_initialized()
    with ThreadPoolExecutor(2, thread_name_prefix="dcsweep") as pool:
        # importing MLflow and creating a new store's tables take seconds; Ray starts meanwhile
        client = pool.submit(_mlflow_client, sweep.tracking_uri)
        if started_here:  # "local": never join a cluster some earlier `ray start` left behind
            ray.init(address=sweep.address or "local", include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False, **({} if sweep.address else {"num_cpus": os.cpu_count()}))
        try:
            # a trial no node can hold is refused before anything is written
            sweep = fit_resources(sweep)
            check_shared_storage(sweep)
            tracker, outcome, results = _run(sweep, client, pool)
            # the parent's pareto.csv/png are drawn while Ray's processes stop
            trials = pool.submit(_final_trials, tracker, sweep, results, outcome)
        finally:
            if started_here:
                ray.shutdown()
        outcome["trials"] = trials.result()
    return outcome


def _mlflow_client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _run(sweep: Sweep, client: Future, pool: ThreadPoolExecutor) -> tuple[Any, dict[str, Any], Any]:
    from ray import tune

    from .tracking import SweepTracker
    from .tune_callbacks import MlflowCallback, ProgressCallback, register_tracker, sync_results

    if not sweep.resume:
        write_sweep_files(sweep)
    baseline = start_baseline(sweep, pool)
    # a local store keeps artifacts beside it; a tracking server decides (and serves) its own
    local = sweep.tracking_uri.startswith(("sqlite:", "file:"))
    artifacts = (sweep.storage.local / "mlartifacts").as_uri() if sweep.storage.local else sweep.storage.uri(
        "mlartifacts")
    tracker = SweepTracker(client.result(), sweep.name, artifacts if local else None,
                           params={"space": sweep.space.name, "algorithm": sweep.space.algorithm,
                                   "smoke_test": sweep.smoke})
    register_tracker(tracker)
    callbacks = [MlflowCallback(sweep.name, sweep.space), ProgressCallback(sweep.space)]
    try:
        trainable: Any = trial
        if baseline is not None:
            # in a list: Ray refuses to put an ObjectRef itself, but keeps one nested
            trainable = tune.with_parameters(trial, baseline=[baseline.key, baseline.ref])
        trainable = tune.with_resources(trainable, {"cpu": sweep.space.cpu, "gpu": sweep.space.gpu})
        path = sweep.storage.uri(*sweep.folder, "tune")
        if sweep.resume and tune.Tuner.can_restore(path):
            log.info("resuming sweep %s from %s", sweep.name, path)
            # the callbacks come back from Tune's pickled state and find this driver's tracker
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
        else:
            params = param_space(sweep.space)
            if baseline is not None:
                params["dense_path"] = str(baseline.path)  # where it is kept; trials read the object store
            tuner = tune.Tuner(trainable, param_space=params, tune_config=_tune_config(sweep.space),
                               run_config=tune.RunConfig(
                                   name="tune", storage_path=sweep.storage.uri(*sweep.folder), verbose=0,
                                   failure_config=tune.FailureConfig(max_failures=sweep.space.max_failures),
                                   checkpoint_config=tune.CheckpointConfig(num_to_keep=2), callbacks=callbacks))
        results = tuner.fit()
        if baseline is not None:
            baseline.stored.result()  # a failed baseline fails the sweep with its own error
        errors = [str(r.error) for r in results if r.error is not None]
        try:
            sync_results(tracker, sweep.space, results)
            tracker.finish("FAILED" if errors and len(errors) == len(results) else "FINISHED")
        except Exception as exc:  # noqa: BLE001 - MLflow unreachable: the storage keeps everything
            log.warning("MLflow is unreachable at the end of the sweep (%s); `dcsweep resume %s` logs the "
                        "results kept in the sweep storage", str(exc).splitlines()[0][:200], sweep.name)
    except BaseException:
        with contextlib.suppress(Exception):
            tracker.finish("FAILED")
        raise
    return tracker, {"name": sweep.name, "storage": str(sweep.storage), "tracking_uri": sweep.tracking_uri,
                     "experiment_id": tracker.experiment_id, "parent_run_id": tracker.parent_id,
                     "errors": errors}, results


def _final_trials(tracker: Any, sweep: Sweep, results: Any, outcome: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials with the Pareto front, from MLflow (logging pareto.csv/png on the parent), or
    from Tune's results when MLflow is unreachable."""
    try:
        return [{k: v for k, v in t.items() if k != "tags"} for t in tracker.update_pareto()]
    except Exception:  # noqa: BLE001
        from .pareto import mark_front

        outcome["mlflow_pending"] = True
        done = [r for r in results if r.error is None and (r.metrics or {}).get("phase") == "final"]
        trials = [{"run_id": None, "params": {d.name: str(r.config.get(d.name)) for d in sweep.space.swept},
                   "accuracy": r.metrics["accuracy"], "compressed_bytes": int(r.metrics["compressed_bytes"]),
                   "ratio": r.metrics.get("compression_ratio")} for r in done]
        return mark_front(trials)


def _tune_config(space: SearchSpace) -> Any:
    from ray import tune

    if space.algorithm == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        # metric/mode only here: also setting them on TuneConfig silently makes it single-objective
        search = OptunaSearch(metric=["accuracy", "compressed_bytes"], mode=["max", "min"],
                              sampler=optuna.samplers.NSGAIISampler(seed=space.seed))
        return tune.TuneConfig(search_alg=ConcurrencyLimiter(search, max_concurrent=space.max_concurrent),
                               num_samples=space.num_samples, reuse_actors=True)
    # reuse_actors: a trial's worker keeps torch imported for the next trial (seconds each)
    return tune.TuneConfig(num_samples=space.num_samples, max_concurrent_trials=space.max_concurrent,
                           reuse_actors=True)
