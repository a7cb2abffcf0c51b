"""cluster/: the Dockerfile, the Ray cluster-launcher YAML and the KubeRay RayJob parse, and
name images, commands, spaces and resources that exist in the project."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from dcsweep.runner.cli import build_parser
from dcsweep.search_spaces import list_spaces, load_space

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
IMAGE = "ghcr.io/dcsweep/dcsweep:0.1.0"


def _yaml(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _dcsweep_args(command: str) -> object:
    """A `dcsweep ...` command line, parsed by the real CLI parser (unknown flags fail)."""
    argv = shlex.split(command)
    assert argv[0] == "dcsweep"
    return build_parser().parse_args(argv[1:])


def test_dockerfile_installs_the_project_and_the_pinned_torch() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / source).exists(), source
    makefile = (ROOT / "Makefile").read_text()
    torch_pins = re.search(r"torch==\S+ torchvision==\S+", makefile).group(0)
    assert f"pip install {torch_pins}" in text and "pip install ." in text
    assert re.search(r"^USER (?!root)", text, re.M)  # not root at run time
    assert "RAY_AUTH_MODE=token" in text and not re.search(r"TOKEN=\S*[0-9a-f]{16}", text)
    tag = re.search(r"-t (\S+) \.", text).group(1)
    assert IMAGE.endswith(tag)


def test_cluster_launcher_yaml() -> None:
    config = _yaml("cluster.yaml")
    assert {"cluster_name", "provider", "available_node_types", "head_node_type", "head_start_ray_commands",
            "worker_start_ray_commands"} <= set(config)
    assert config["docker"]["image"] == IMAGE
    assert config["head_node_type"] in config["available_node_types"]
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--head" in head  # the Jobs API via SSH only
    assert any("RAY_AUTH_MODE=token" in o for o in config["docker"]["run_options"])
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    for space in list_spaces():  # every built-in GPU space fits one worker
        s = load_space(space)
        if s.gpu:
            assert any(w["resources"].get("GPU", 0) >= s.gpu and w["resources"]["CPU"] >= s.cpu for w in workers)
    usage = "\n".join(line.lstrip("# ") for line in (CLUSTER / "cluster.yaml").read_text().splitlines()
                      if line.startswith("#"))
    submit = re.search(r"(dcsweep submit .*?)(?:\n\S|\Z)", usage.replace("\\\n", " "), re.S).group(1)
    args = _dcsweep_args(" ".join(submit.split()))
    assert args.command == "submit" and args.space in list_spaces() and args.address.startswith("http://127.0.0.1")


def test_kuberay_rayjob() -> None:
    job = _yaml("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    args = _dcsweep_args(job["spec"]["entrypoint"])
    assert args.command == "run" and args.space in list_spaces() and args.address == "auto"
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"  # no LoadBalancer, no NodePort
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    pods.append(job["spec"]["submitterPodTemplate"])
    for pod in pods:
        for container in pod["spec"]["containers"]:
            assert container["image"] == IMAGE
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            for name, entry in env.items():  # credentials only from secrets
                if "TOKEN" in name or "PASSWORD" in name:
                    assert "valueFrom" in entry and "value" not in entry
    gpus = [g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
            for g in cluster["workerGroupSpecs"]]
    assert all(int(g) >= 1 for g in gpus)
    space = load_space(args.space)
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert float(worker["cpu"]) >= space.cpu and (args.gpus or space.gpu) <= int(worker["nvidia.com/gpu"])


@pytest.mark.parametrize("name", ["README.md"])
def test_cluster_readme_commands_parse(name: str) -> None:
    text = (CLUSTER / name).read_text().replace("\n   ", " ")
    commands = re.findall(r"`(dcsweep (?:submit|resume|run|ui) [^`]+)`", text)  # with arguments
    assert len(commands) >= 3
    for command in commands:
        _dcsweep_args(command.replace("…", "x"))
