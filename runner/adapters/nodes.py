"""What the driver asks of the cluster before Tune starts: room for a trial on some node, and a
storage every node sees."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from dataclasses import replace
from pathlib import Path

import ray
from ray._private.services import canonicalize_bootstrap_address
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from dcsweep.runner.cycle import ConfigError
from dcsweep.runner.sweep import Sweep, places

log = logging.getLogger("dcsweep")


def check_ray_address(address: str | None) -> None:
    """A Ray cluster answers at ``--address`` (host:port, ray://host:port, or auto: the one
    this machine last started): ray.init would otherwise retry an absent one for minutes."""
    if address is None or address == "local":
        return
    try:
        bootstrap = canonicalize_bootstrap_address(address.removeprefix("ray://"))
    except Exception as exc:  # noqa: BLE001 - a malformed address, or auto with no cluster recorded
        raise ConfigError(f"--address={address!r} names no Ray cluster ({str(exc).splitlines()[0][:200]}); give "
                          f"HOST:PORT of a running cluster's head, or start one with `ray start --head`") from None
    if bootstrap is None:
        return
    host, _, port = bootstrap.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--address={address!r}: no Ray cluster answers at {bootstrap} ({exc}); start one with "
                          f"`ray start --head`, or give the address of a running one") from None


def fit_resources(sweep: Sweep) -> Sweep:
    """Trials that no node of the cluster can hold are refused before any starts (a local
    sweep was checked before Ray started); a smoke test shrinks them to fit."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    total = (sum(n.get("CPU", 0.0) for n in nodes), sum(n.get("GPU", 0.0) for n in nodes))
    return replace(sweep, space=places.fit_resources(sweep.space, sweep.smoke, cpu, gpu, total))


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
