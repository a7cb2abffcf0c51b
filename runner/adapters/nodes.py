"""What the driver asks of the cluster before Tune starts: room for a trial on some node, and a
storage every node sees."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from dcsweep.runner.cycle import ConfigError
from dcsweep.runner.sweep import Sweep, places

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
