"""What the driver asks of the cluster before Tune starts: room for a trial on some node, a
storage every node sees, and the dense baseline trained once in a reserved slot."""

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

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from dcsweep.runner.cycle import ConfigError, CycleConfig
from dcsweep.runner.cycle.results import MODEL_FILE
from dcsweep.runner.sweep import Sweep, places
from dcsweep.runner.sweep.spec import BASELINE_FIELDS, baseline_key

from .trainable import baseline_task

log = logging.getLogger("dcsweep")


def fit_resources(sweep: Sweep) -> Sweep:
    """Trials that no node of the cluster can hold are refused before any starts (a local
    sweep was checked before Ray started); a smoke test shrinks them to fit."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    return replace(sweep, space=places.fit_resources(sweep.space, sweep.smoke, cpu, gpu))


def check_shared_storage(sweep: Sweep) -> None:
    """On a cluster of several nodes every node must see the storage (trials checkpoint into
    it): a file written here is looked for by a task on each node. A path only this machine
    has is refused before anything starts."""

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
    ref: ray.ObjectRef
    stored: Future[None]

    def abandon(self) -> None:
        """Stop the training task and wait for its thread, before Ray shuts down: a thread still
        in ``ray.get`` would otherwise start a second local Ray and hide the sweep's real error."""
        if not self.stored.done():
            with contextlib.suppress(Exception):
                ray.cancel(self.ref, force=True)
        with contextlib.suppress(Exception):
            self.stored.result(timeout=60)


def start_baseline(sweep: Sweep, pool: ThreadPoolExecutor) -> Baseline | None:
    """Reuse the stored dense baseline or start training it as its own Ray task; None when a
    swept setting changes the baseline (each trial trains its own) or the space gives one.

    The task runs in a placement group reserved before Tune starts, so trials can never take
    all resources and wait forever for it; Tune starts its workers (seconds of imports) while
    it trains, and the reservation ends when it does."""

    if any(d.name in BASELINE_FIELDS for d in sweep.space.swept) or "dense_path" in sweep.space.fixed:
        return None
    key = baseline_key(sweep.space.fixed)
    storage, folder = sweep.storage, ("baselines", key)
    path = storage.uri(*folder, MODEL_FILE)
    if storage.exists(*folder, MODEL_FILE):
        log.info("dense baseline %s: reusing %s", key, path)
        done: Future[None] = Future()
        done.set_result(None)
        return Baseline(key, path, ray.put(storage.read_bytes(*folder, MODEL_FILE)), done)
    group = placement_group([{"CPU": sweep.space.cpu, "GPU": sweep.space.gpu}])
    ray.get(group.ready())
    task = ray.remote(num_cpus=sweep.space.cpu, num_gpus=sweep.space.gpu, num_returns=2)(baseline_task)
    refs: Any = task.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group)).remote(sweep.space.fixed)
    blob, meta = refs  # num_returns=2: the .dcz bytes, then (accuracy, seconds)

    def store() -> None:
        try:
            data, (accuracy, seconds) = ray.get([blob, meta])
        finally:
            remove_placement_group(group)
        storage.write_bytes(data, *folder, MODEL_FILE)
        settings = CycleConfig.from_dict(sweep.space.fixed).to_dict()
        storage.write_text(json.dumps({"key": key, "accuracy": accuracy, "seconds": seconds,
                                       **{k: settings[k] for k in BASELINE_FIELDS}}, indent=1), *folder, "meta.json")
        log.info("dense baseline %s: accuracy %.4f in %.1f s, stored at %s", key, accuracy, seconds, path)

    return Baseline(key, path, blob, pool.submit(store))


