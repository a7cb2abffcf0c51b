"""Sweeps on Ray Tune: each trial runs ``run_cycle`` with its own settings.

Storage layout (``--storage``, default ``$DCSWEEP_STORAGE`` or ``~/dcsweep-runs``)::

    mlflow.db                  the default MLflow store (one experiment per sweep)
    mlartifacts/<sweep>/       its artifacts
    baselines/<key>/model.dcz  dense baselines, keyed by model, data and training settings
    sweeps/<sweep>/space.yaml  the space as run (smoke overrides and CLI resources applied)
    sweeps/<sweep>/tune/       Ray Tune's experiment: trials, checkpoints after each phase

The dense baseline is trained once per key as its own Ray task and reused by every trial and
by later sweeps with the same key. Ray and MLflow calls live here and in ``tracking.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from dcsweep.search_spaces import SearchSpace, load_space

from .config import ConfigError, CycleConfig
from .cycle import CycleCallbacks, run_cycle, train_baseline
from .datasets import DataError, load_dataset, synthetic_stand_in

log = logging.getLogger("dcsweep")
BASELINE_FIELDS = ("model", "dataset", "data_root", "image_size", "epochs", "optimizer", "lr", "momentum",
                   "weight_decay", "batch_size", "seed", "device")
SMOKE_TRIALS = 3


def default_storage() -> Path:
    return Path(os.environ.get("DCSWEEP_STORAGE", "~/dcsweep-runs")).expanduser()


def check_settings(settings: dict[str, Any]) -> None:
    CycleConfig.from_dict(settings)


@dataclass(frozen=True)
class Sweep:
    """Everything a sweep needs, validated before Ray starts."""

    name: str
    space: SearchSpace
    storage: Path
    tracking_uri: str
    smoke: bool = False
    address: str | None = None

    @property
    def folder(self) -> Path:
        return self.storage / "sweeps" / self.name


def prepare(space_name: str, name: str | None, storage: Path, tracking_uri: str | None, smoke: bool,
            cpus: float | None, gpus: float | None, address: str | None) -> Sweep:
    """Validate the space and the place; raise ConfigError (exit 2) before anything starts."""
    from .tracking import default_tracking_uri

    space = load_space(space_name, check_settings)
    if cpus is not None or gpus is not None:
        space = replace(space, cpu=space.cpu if cpus is None else cpus, gpu=space.gpu if gpus is None else gpus)
    if smoke:
        space = _smoke(space)
    name = name or f"{space.name}-{_timestamp()}"
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"--name={name!r} is not allowed; use letters, digits, '-', '_' and '.'")
    sweep = Sweep(name, space, storage.expanduser().resolve(), tracking_uri or os.environ.get(
        "MLFLOW_TRACKING_URI") or default_tracking_uri(storage.expanduser()), smoke, address)
    if sweep.folder.exists():
        raise ConfigError(f"sweep {name!r} already exists in {sweep.storage}; give another --name "
                          f"(resuming it arrives with `dcsweep resume`)")
    try:
        sweep.folder.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=sweep.folder.parent)
        probe.close()
    except OSError as exc:
        raise ConfigError(f"storage {sweep.storage} is not writable: {exc.strerror}") from None
    return sweep


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _smoke(space: SearchSpace) -> SearchSpace:
    """Tiny epochs and a few trials; a data set that is not on disk becomes generated data of
    the same shape (said in the log)."""
    fixed = {**space.fixed, **space.smoke}
    settings = CycleConfig.from_dict(fixed)
    try:
        load_dataset(settings.dataset, settings.data_root, False, settings.image_size)
    except (DataError, OSError):
        stand_in = synthetic_stand_in(settings.dataset, settings.image_size)
        log.warning("smoke test: %s is not on disk; using generated data of the same shape (%s)",
                    settings.dataset, stand_in)
        fixed["dataset"] = stand_in
        fixed.pop("data_root", None)
    # two trials: the first swept setting's first two values, the others' first
    swept = tuple(replace(d, values=d.values[: 2 if i == 0 else 1]) if d.kind in ("grid", "choice") else d
                  for i, d in enumerate(space.swept))
    samples = 1 if space.algorithm == "grid" else min(space.num_samples, SMOKE_TRIALS)
    return replace(space, fixed=fixed, swept=swept, num_samples=samples)


def baseline_key(settings: dict[str, Any]) -> str:
    cfg = CycleConfig.from_dict(settings).to_dict()
    blob = json.dumps({k: cfg[k] for k in BASELINE_FIELDS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- the trial, in a Ray worker -------------------------------------------------------------

class _TuneReporter(CycleCallbacks):
    def on_phase_end(self, phase: str, checkpoint_dir: Path | None, result: dict[str, Any]) -> None:
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(phase_metrics(phase, result), checkpoint=checkpoint)


def phase_metrics(phase: str, result: dict[str, Any]) -> dict[str, Any]:
    acc = result.get("accuracy", {})
    metrics: dict[str, Any] = {"phase": phase, "accuracy": acc.get("decoded", acc.get(phase))}
    metrics.update({f"accuracy_{k}": v for k, v in acc.items()})
    metrics.update({f"seconds_{k}": v for k, v in result.get("seconds", {}).items()})
    for key, name in (("sparsity", "sparsity"), ("compressed_bytes", "compressed_bytes"),
                      ("dense_bytes", "dense_bytes"), ("ratio", "compression_ratio")):
        if key in result:
            metrics[name] = result[key]
    # before the end: the size of the .dcz if the trial stopped after this phase, so every
    # result carries both objectives (Tune checks that a multi-objective searcher gets them)
    metrics.setdefault("compressed_bytes", result.get("bytes_by_phase", {}).get(phase))
    return metrics


def trial(config: dict[str, Any]) -> None:
    """Ray Tune trainable: one full cycle, continuing from the trial's last checkpoint."""
    import contextlib

    from ray import tune

    checkpoint = tune.get_checkpoint()
    with contextlib.ExitStack() as stack:
        resume = Path(stack.enter_context(checkpoint.as_directory())) if checkpoint else None
        if resume is not None and (resume / "result.json").is_file():  # finished before the restart
            result = json.loads((resume / "result.json").read_text())
            tune.report(phase_metrics("final", result))
            return
        out = Path(tempfile.mkdtemp(prefix="dcsweep-trial-"))
        result = run_cycle(config, output=out / "model.dcz", callbacks=_TuneReporter(), resume_from=resume,
                           plots=out / "plots")
        (out / "result.json").write_text(json.dumps(result))
        tune.report(phase_metrics("final", result), checkpoint=tune.Checkpoint.from_directory(str(out)))


# -- the driver ---------------------------------------------------------------------------

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


def ensure_baseline(sweep: Sweep) -> str | None:
    """Train (as a Ray task) or reuse the sweep's dense baseline; None when a swept setting
    changes the baseline, so each trial trains its own."""
    import ray

    if any(d.name in BASELINE_FIELDS for d in sweep.space.swept) or "dense_path" in sweep.space.fixed:
        return sweep.space.fixed.get("dense_path")
    key = baseline_key(sweep.space.fixed)
    folder = sweep.storage / "baselines" / key
    path = folder / "model.dcz"
    if path.is_file():
        log.info("dense baseline %s: reusing %s", key, path)
        return str(path)
    folder.mkdir(parents=True, exist_ok=True)
    task = ray.remote(num_cpus=sweep.space.cpu, num_gpus=sweep.space.gpu)(train_baseline)
    tmp = folder / f".model.{os.getpid()}.dcz"
    started = time.perf_counter()
    accuracy = ray.get(task.remote(sweep.space.fixed, str(tmp)))
    seconds = time.perf_counter() - started
    os.replace(tmp, path)
    settings = CycleConfig.from_dict(sweep.space.fixed).to_dict()
    (folder / "meta.json").write_text(json.dumps({"key": key, "accuracy": accuracy, "seconds": seconds,
                                                  **{k: settings[k] for k in BASELINE_FIELDS}}, indent=1))
    log.info("dense baseline %s: accuracy %.4f, stored at %s", key, accuracy, path)
    return str(path)


def run_sweep(sweep: Sweep) -> dict[str, Any]:
    import ray

    # Tune's own warning about frequent experiment snapshots: we snapshot often on purpose, so a
    # killed driver loses at most one phase per running trial.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=sweep.address, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False, **({} if sweep.address else {"num_cpus": os.cpu_count()}))
    try:
        return _run(fit_resources(sweep))  # a trial no node can hold is refused before anything
    finally:
        if started_here:
            ray.shutdown()


def _run(sweep: Sweep) -> dict[str, Any]:
    from ray import tune

    from .tracking import SweepTracker
    from .tune_callbacks import MlflowCallback, ProgressCallback

    sweep.folder.mkdir(parents=True)
    (sweep.folder / "space.yaml").write_text(yaml.safe_dump(sweep.space.to_dict(), sort_keys=False))
    # a local store keeps artifacts beside it; a tracking server decides (and serves) its own
    local = sweep.tracking_uri.startswith(("sqlite:", "file:"))
    tracker = SweepTracker(sweep.tracking_uri, sweep.name, sweep.storage / "mlartifacts" if local else None,
                           params={"space": sweep.space.name, "algorithm": sweep.space.algorithm,
                                   "smoke_test": sweep.smoke})
    try:
        dense = ensure_baseline(sweep)
        params = param_space(sweep.space)
        if dense:
            params["dense_path"] = dense
        tuner = tune.Tuner(
            tune.with_resources(trial, {"cpu": sweep.space.cpu, "gpu": sweep.space.gpu}),
            param_space=params,
            tune_config=_tune_config(sweep.space),
            run_config=tune.RunConfig(
                name="tune", storage_path=str(sweep.folder), verbose=0,
                failure_config=tune.FailureConfig(max_failures=sweep.space.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[MlflowCallback(tracker, sweep.space), ProgressCallback(sweep.space)]),
        )
        results = tuner.fit()
        errors = [str(r.error) for r in results if r.error is not None]
        tracker.finish("FAILED" if errors and len(errors) == len(results) else "FINISHED")
    except BaseException:
        tracker.finish("FAILED")
        raise
    trials = tracker.update_pareto()
    return {"name": sweep.name, "storage": str(sweep.storage), "tracking_uri": sweep.tracking_uri,
            "experiment_id": tracker.experiment_id, "parent_run_id": tracker.parent_id,
            "errors": errors, "trials": [{k: v for k, v in t.items() if k != "tags"} for t in trials]}


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
