"""constraints.txt is what the suite runs on: every package pyproject.toml names is locked at the
version installed here, inside pyproject's range, and the closely-tied ones have upper bounds."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
            assert match, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def _named() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in [*project["dependencies"], *extras]]


def test_every_named_package_is_locked_at_the_installed_version() -> None:
    locked = _locked()
    for requirement in _named():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is in pyproject.toml but not in constraints.txt: run `make lock`"
        installed = metadata.version(requirement.name)
        assert installed == locked[name], (f"{name}: installed {installed}, constraints.txt {locked[name]}; "
                                           "the suite runs on what is locked (`make lock` after it passes)")
        assert requirement.specifier.contains(Version(locked[name]), prereleases=True), (
            f"{name}=={locked[name]} is outside pyproject's {requirement}")


def test_what_dcsweep_patches_or_leans_on_stops_below_its_next_major_release() -> None:
    """Ray (internals patched), MLflow (registry, logged models) and Optuna (samplers)."""
    by_name = {canonicalize_name(r.name): r for r in _named()}
    for name in ("ray", "mlflow", "optuna"):
        locked = Version(_locked()[name])
        assert not by_name[name].specifier.contains(Version(f"{locked.major + 1}.0")), by_name[name]
