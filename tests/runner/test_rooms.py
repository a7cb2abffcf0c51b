"""The runner's rooms keep their walls: the cycle and the sweep's definition run without Ray
or MLflow; Ray is imported only by the adapters, MLflow only by their tracking module and the
MLflow model flavour of the .dcz."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import dcsweep.runner

RUNNER = Path(dcsweep.runner.__file__).parent
#: Which modules may import each of these packages (paths relative to runner/).
ALLOWED = {
    "ray": lambda path: path.parts[0] == "adapters",
    "mlflow": lambda path: path.as_posix() in ("adapters/tracking.py", "adapters/pyfunc.py"),
}


def _imports(path: Path) -> set[str]:
    """Top-level packages a module imports when it runs, anywhere in it (lazy imports in
    functions too; annotations under ``if TYPE_CHECKING:`` are not run)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_only_the_adapters_import_ray_and_only_tracking_imports_mlflow(package: str) -> None:
    modules = sorted(RUNNER.rglob("*.py"))
    assert len(modules) > 20
    offenders = [str(p.relative_to(RUNNER)) for p in modules
                 if package in _imports(p) and not ALLOWED[package](p.relative_to(RUNNER))]
    assert offenders == []


@pytest.mark.parametrize("room", ["dcsweep.runner.cycle", "dcsweep.runner.sweep", "dcsweep.runner.cli"])
def test_a_room_imports_neither_ray_nor_mlflow(room: str) -> None:
    """In a fresh interpreter, after using the room (a cycle's settings, a sweep's storage,
    the CLI's parser), neither Ray nor MLflow has been imported."""
    use = {"dcsweep.runner.cycle": "m.CycleConfig.from_dict({'k': 8}); m.list_models()",
           "dcsweep.runner.sweep": "m.Storage('/tmp'); m.space_as_run('lenet300-digits', smoke=False)",
           "dcsweep.runner.cli": "m.build_parser().parse_args(['inspect', 'x.dcz'])"}[room]
    code = (f"import sys, importlib; m = importlib.import_module({room!r}); {use}; "
            "bad = sorted({n.split('.')[0] for n in sys.modules} & {'ray', 'mlflow'}); print(bad); "
            "sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
