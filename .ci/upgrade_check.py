"""`make upgrade-check`: would the newest releases that pyproject's ranges allow break dcsweep?

Builds a scratch venv (build/upgrade-venv) from the ranges alone, with no constraints file,
prints which packages moved against the lock, then runs the fast suite (``-m "not slow"``) and
one real sweep per search algorithm in it, and ends with one line per part. Exit 0 when all
passed, 1 otherwise. When they pass, ``make lock VENV=build/upgrade-venv`` adopts that venv's
versions, and the next `make test` runs on them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "build" / "upgrade-venv"

#: One short sweep per search algorithm, on digits: what a user's first sweep of each runs.
SWEEPS = {
    "grid": "swept: {sparsity: {grid: [0.5, 0.9]}, k: {grid: [4]}}\nsearch: {algorithm: grid, max_concurrent: 2}\n",
    "random": "swept: {sparsity: {uniform: [0.5, 0.95]}, k: {choice: [4, 16]}}\n"
              "search: {algorithm: random, num_samples: 2, max_concurrent: 2, seed: 0}\n",
    "optuna": "swept: {sparsity: {uniform: [0.5, 0.95]}, k: {choice: [4, 16]}}\n"
              "search: {algorithm: optuna, num_samples: 3, max_concurrent: 2, seed: 0}\n",
}
FIXED = "fixed: {model: lenet300, dataset: digits, epochs: 2, prune_steps: 1, prune_epochs: 1, share_epochs: 1}\n"


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("+", shlex.join(argv), flush=True)
    return subprocess.run(argv, text=True, **kwargs)  # type: ignore[call-overload]


def _pins(text: str) -> dict[str, str]:
    found = (re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip()) for line in text.splitlines())
    return {m[1].lower().replace("_", "-"): m[2] for m in found if m}


def build(torch: str) -> Path:
    """The scratch venv with the newest allowed releases (torch as the Makefile installs it)."""
    shutil.rmtree(VENV, ignore_errors=True)
    python = VENV / "bin" / "python"
    steps = [[sys.executable, "-m", "venv", str(VENV)],
             [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
             [str(python), "-m", "pip", "install", "-q", *shlex.split(torch)],
             [str(python), "-m", "pip", "install", "-q", "--upgrade", "--upgrade-strategy", "eager",
              "-e", f"{ROOT}[test,bench]"]]
    for argv in steps:
        if _run(argv).returncode != 0:
            raise SystemExit(f"upgrade-check: building {VENV} failed at: {shlex.join(argv)}")
    return python


def moved(python: Path, constraints: Path) -> list[str]:
    """One line per package whose version differs from the lock, appeared or went."""
    before = _pins(constraints.read_text()) if constraints.is_file() else {}
    after = _pins(_run([str(python), "-m", "pip", "freeze", "--all", "--exclude-editable"],
                       capture_output=True, check=True).stdout)
    lines = [f"  {name}: {before[name]} -> {after[name]}" for name in sorted(before.keys() & after.keys())
             if before[name] != after[name]]
    lines += [f"  {name}: new, {after[name]}" for name in sorted(after.keys() - before.keys())]
    lines += [f"  {name}: gone (was {before[name]})" for name in sorted(before.keys() - after.keys())]
    return lines


def fast_suite(python: Path) -> tuple[bool, list[str]]:
    """The fast suite, less the lock check (the moves above are what it would report)."""
    done = _run([str(python), "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider",
                 "--deselect", "tests/test_lock.py::test_every_named_package_is_locked_at_the_installed_version"],
                cwd=ROOT, capture_output=True)
    sys.stdout.write(done.stdout[-4000:])
    failed = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return done.returncode in (0, 5), failed


def sweep(python: Path, algorithm: str, folder: Path) -> tuple[bool, str]:
    space = folder / f"{algorithm}.yaml"
    space.write_text(f"name: upgrade-{algorithm}\n{FIXED}{SWEEPS[algorithm]}resources: {{cpu: 1}}\n")
    dcsweep = VENV / "bin" / "dcsweep"
    started = time.monotonic()
    done = _run([str(dcsweep), "run", str(space), "--storage", str(folder / "store"), "--json"],
                capture_output=True, env={**os.environ, "PYTHONPATH": ""})
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
        return False, f"exit {done.returncode}: {last[0]}"
    trials = json.loads(done.stdout)["trials"]
    return True, f"{len(trials)} trials in {time.monotonic() - started:.0f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--constraints", type=Path, default=ROOT / "constraints.txt")
    parser.add_argument("--torch", default="torch==2.14.1 torchvision==0.29.1")
    args = parser.parse_args()
    python = build(args.torch)
    lines = moved(python, args.constraints)
    print(f"upgrade-check: {len(lines)} package(s) differ from {args.constraints.name}", *lines, sep="\n")
    ok, failed = fast_suite(python)
    report = [f"fast suite: {'passed' if ok else 'FAILED'}", *(f"  {line}" for line in failed)]
    with tempfile.TemporaryDirectory(prefix="dcsweep-upgrade-") as folder:
        for algorithm in SWEEPS:
            passed, what = sweep(python, algorithm, Path(folder))
            ok = ok and passed
            report.append(f"sweep {algorithm}: {'passed' if passed else 'FAILED'} ({what})")
    print("upgrade-check:", *report, sep="\n")
    print("upgrade-check:", "all passed; `make lock VENV=build/upgrade-venv` adopts these versions" if ok
          else "a newer release breaks dcsweep (above); keep constraints.txt until it is fixed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
