"""A local sweep is reachable from this machine only: every socket its processes listen on is
on loopback, and none of them serves Prometheus metrics."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ..helpers import SPACE, children, cli

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads sockets from /proc (Linux)")


def _listening() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every TCP socket in LISTEN state on this machine."""
    found: dict[int, tuple[str, int]] = {}
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] != "0A":  # LISTEN
                    continue
                hex_ip, hex_port = fields[1].split(":")
                raw = bytes.fromhex(hex_ip)  # the kernel prints 32-bit words in host (little-endian) order
                packed = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
                found[int(fields[9])] = (str(ipaddress.ip_address(packed)), int(hex_port, 16))
    return found


def _sockets_of(pids: list[int]) -> dict[int, int]:
    """Socket inode -> pid for every socket the processes hold."""
    owned: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        owned[int(target[8:-1])] = pid
    return owned


def _name(pid: int) -> str:
    """The program's name, then its arguments (a long install path must not cut the name off)."""
    with contextlib.suppress(OSError, IndexError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        return " ".join([Path(argv[0]).name, *argv[1:]])[:100]
    return "?"


def _serves_metrics(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            return reply.status == 200 and b"# TYPE" in reply.read(1 << 20)
    except Exception:  # noqa: BLE001 -- gRPC ports, 404s and resets all mean "no metrics here"
        return False


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


@pytest.mark.slow
def test_a_local_sweep_listens_on_loopback_only_and_serves_no_metrics(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(SPACE.replace("k: {grid: [2, 16]}", "k: {grid: [16]}")
                                         .replace("[0.5, 0.9, 0.97]", "[0.5, 0.9]"))
    seen: dict[tuple[str, int], str] = {}
    metrics: set[tuple[int, str]] = set()
    with cli("run", str(tmp_path / "space.yaml"), "--name", "net", "--storage", str(tmp_path / "s"),
             "--json") as proc:
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            owned = _sockets_of([proc.pid, *children(proc.pid)])
            for inode, (address, port) in _listening().items():
                if inode in owned and (address, port) not in seen:
                    seen[(address, port)] = _name(owned[inode])
                    if _serves_metrics(port):
                        metrics.add((port, seen[(address, port)]))
            time.sleep(0.3)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    names = " ".join(seen.values())
    # GCS, raylet, the driver and trial workers were all seen (the test cannot pass on nothing)
    assert "gcs_server" in names and "raylet" in names and len(seen) >= 6, seen
    exposed = {key: name for key, name in seen.items() if not is_loopback(key[0])}
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert not metrics, f"Prometheus endpoints: {metrics}"


def test_loopback_recognises_mapped_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.2")
