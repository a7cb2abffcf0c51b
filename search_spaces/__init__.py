"""Built-in sweep definitions (YAML files shipped as package data) and their loader.

A space file has a fixed part (settings every trial shares: model, data set, training, seed,
resources) and a swept part (what differs between trials), plus how to search it::

    name: lenet300-digits
    fixed: {model: lenet300, dataset: digits, epochs: 20}
    swept:
      sparsity: {grid: [0.8, 0.9, 0.95]}      # every value, crossed with the other grids
      k: {choice: [4, 16, 32]}                 # sampled (random / optuna search)
      lr: {loguniform: [1.0e-4, 1.0e-2]}       # also: uniform [lo, hi], randint [lo, hi]
      k_fc: {randint: [8, 64], step: 8}        # a range's values snapped to a step: they repeat
    search: {algorithm: grid, num_samples: 1, max_concurrent: 2, seed: 0}
    resources: {cpu: 1, gpu: 0}
    max_failures: 2
    smoke: {epochs: 1, prune_epochs: 1}        # --smoke-test overrides (a few trials, tiny epochs)
    share_stages: true                         # trials share pruned/shared models (default)

Loading checks the structure and, through ``check_settings``, every value a trial could get;
errors name the file, the field, the value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import yaml

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
RANGES = ("uniform", "loguniform", "randint")
#: A space file is a few hundred bytes; these bound what an untrusted one can make us hold.
MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000  # values after YAML aliases are expanded (a 590-byte alias bomb expands to billions)
MIN_CPU = 0.01  # per trial: Ray schedules fractions of a CPU down to 1/10,000; a hundredth is plenty
MAX_RESOURCE = 1024.0  # CPUs or GPUs per trial
MAX_WORKERS = 1024  # Ray Train workers per trial: a trial that needs more is not one trial
DEFAULT_BATCH_SIZE = 64  # the cycle's (runner.cycle.config), which this package does not import
MAX_TRIALS = 100_000  # a sweep's trials; the driver lists a grid's points before it starts
MAX_SEED = (1 << 32) - 1  # what Optuna's and numpy's samplers take
MAX_DESCRIPTION = 10_000  # characters; MLflow refuses a run description over 20,000
ALGORITHMS = ("grid", "random", "optuna")
TOP_KEYS = ("name", "description", "fixed", "swept", "search", "resources", "max_failures", "smoke", "share_stages")


class SpaceError(ValueError):
    """A search-space file is malformed or holds a value no trial may get."""


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: str
    values: tuple[Any, ...]  # grid/choice: the values; ranges: (low, high)
    #: ranges only: sampled values snap to multiples of this, so trials repeat values and share
    #: stages (e.g. sparsity {uniform: [0.8, 0.99], step: 0.01} has 20 values)
    step: float | None = None

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {self.kind: list(self.values)}
        if self.step is not None:
            spec["step"] = self.step
        return spec


@dataclass(frozen=True)
class SearchSpace:
    name: str
    source: str
    description: str = ""
    fixed: dict[str, Any] = field(default_factory=dict)
    swept: tuple[Dimension, ...] = ()
    algorithm: str = "grid"
    num_samples: int = 1
    max_concurrent: int = 2
    seed: int = 0
    cpu: float = 1.0
    gpu: float = 0.0
    #: data-parallel workers per trial (Ray Train); ``cpu`` and ``gpu`` are then each worker's
    workers: int = 1
    max_failures: int = 2
    smoke: dict[str, Any] = field(default_factory=dict)
    #: trials take the pruned and shared models other trials computed with the same settings
    share_stages: bool = True

    @property
    def grid_size(self) -> int:
        return math.prod(len(d.values) for d in self.swept if d.kind == "grid")

    @property
    def total_trials(self) -> int:
        """How many trials the sweep runs: each grid point num_samples times, or num_samples."""
        return self.grid_size * self.num_samples if self.algorithm == "grid" else self.num_samples

    def to_dict(self) -> dict[str, Any]:
        """The space as a plain YAML-able mapping (what a sweep stores to detect changes)."""
        return {"name": self.name, "description": self.description, "fixed": dict(self.fixed),
                "swept": {d.name: d.to_dict() for d in self.swept},
                "search": {"algorithm": self.algorithm, "num_samples": self.num_samples,
                           "max_concurrent": self.max_concurrent, "seed": self.seed},
                "resources": {"cpu": self.cpu, "gpu": self.gpu, **({"workers": self.workers} if self.workers > 1
                                                                   else {})},
                "max_failures": self.max_failures,
                "smoke": dict(self.smoke), "share_stages": self.share_stages}


def list_spaces() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".yaml"))


def load_space(name_or_path: str | Path,
               check_settings: Callable[[dict[str, Any]], object] | None = None) -> SearchSpace:
    """A built-in space by name, or a YAML file by path. ``check_settings(settings)`` is called
    with the fixed part merged with each value a swept dimension can take (and the smoke
    overrides) and must raise ValueError for settings no trial may have."""
    text, source = _read(str(name_or_path))
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader that refuses repeated keys
    except yaml.YAMLError as exc:
        raise SpaceError(f"{source}: not valid YAML: {exc}".replace("\n", " ")) from None
    except (ValueError, RecursionError) as exc:  # an integer of 4,300+ digits; brackets nested too deep
        raise SpaceError(f"{source}: not a YAML document this loader can hold: {type(exc).__name__}: "
                         f"{str(exc)[:200]}") from None
    _check_size(raw, source)
    space = _parse(raw, source)
    if check_settings is not None:
        _check_values(space, check_settings)
    return space


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: the
    standard loader keeps the last silently, and a sweep would then run settings nobody read."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue  # the structure checks refuse such keys later, with the field named
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read(name: str) -> tuple[str, str]:
    if name in list_spaces():
        path = resources.files(__name__) / f"{name}.yaml"
        return path.read_text(), f"built-in space {name!r}"
    if name.endswith((".yaml", ".yml")) or "/" in name:
        file = Path(name)
        if not file.is_file():
            raise SpaceError(f"search space file {name} does not exist")
        if file.stat().st_size > MAX_FILE_BYTES:
            raise SpaceError(f"{file}: {file.stat().st_size} bytes is not allowed; a space file must be at most "
                             f"{MAX_FILE_BYTES} bytes")
        try:
            return file.read_bytes().decode("utf-8"), str(file)
        except UnicodeDecodeError as exc:
            raise SpaceError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    raise SpaceError(f"unknown search space {name!r}; built-in spaces: {', '.join(list_spaces())} "
                     f"(or a path to a .yaml file)")


def _check_size(raw: Any, source: str) -> None:
    """Refuse a document whose values, once YAML's aliases are expanded, exceed MAX_NODES:
    it is a few bytes on disk, but every later copy or print of it would be gigabytes."""
    todo, seen, chars = [raw], 0, 0
    while todo:
        node = todo.pop()
        seen += 1
        chars += len(node) if isinstance(node, str) else 0
        if seen > MAX_NODES or chars > MAX_FILE_BYTES:
            raise SpaceError(f"{source}: the document expands to more than {MAX_NODES} values or {MAX_FILE_BYTES} "
                             f"characters (YAML aliases?); a space must be smaller")
        if isinstance(node, dict):
            todo.extend(node.keys())
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)


def _fail(source: str, where: str, value: Any, allowed: str) -> NoReturn:
    raise SpaceError(f"{source}: {where}={value!r} is not allowed; it must be {allowed}")


def _mapping(source: str, raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        _fail(source, where, raw, "a mapping with string keys")
    return dict(raw)


def _parse(raw: Any, source: str) -> SearchSpace:
    top = _mapping(source, raw, "the file")
    unknown = sorted(set(top) - set(TOP_KEYS))
    if unknown:
        raise SpaceError(f"{source}: unknown key(s) {unknown}; valid keys are {list(TOP_KEYS)}")
    name = top.get("name")
    if not isinstance(name, str) or not name:
        _fail(source, "name", name, "a non-empty string")
    fixed = _mapping(source, top.get("fixed"), "fixed")
    swept = tuple(_dimension(source, k, v) for k, v in _mapping(source, top.get("swept"), "swept").items())
    both = sorted(set(fixed) & {d.name for d in swept})
    if both:
        raise SpaceError(f"{source}: {both} are both fixed and swept; keep each setting in one part")
    search = _mapping(source, top.get("search"), "search")
    unknown = sorted(set(search) - {"algorithm", "num_samples", "max_concurrent", "seed"})
    if unknown:
        raise SpaceError(f"{source}: unknown search key(s) {unknown}; valid: algorithm, num_samples, "
                         "max_concurrent, seed")
    algorithm = search.get("algorithm", "grid")
    if algorithm not in ALGORITHMS:
        _fail(source, "search.algorithm", algorithm, f"one of {list(ALGORITHMS)}")
    if algorithm == "optuna" and any(d.kind == "grid" for d in swept):
        raise SpaceError(f"{source}: search.algorithm=optuna samples; use choice instead of grid in swept")
    res = _mapping(source, top.get("resources"), "resources")
    unknown = sorted(set(res) - {"cpu", "gpu", "workers"})
    if unknown:
        raise SpaceError(f"{source}: unknown resources key(s) {unknown}; valid: cpu, gpu, workers")
    space = SearchSpace(
        name=name, source=source, description=_text(source, "description", top.get("description", "")),
        fixed=fixed, swept=swept,
        algorithm=algorithm,
        num_samples=_int(source, "search.num_samples", search.get("num_samples", 1), 1, MAX_TRIALS),
        max_concurrent=_int(source, "search.max_concurrent", search.get("max_concurrent", 2), 1),
        seed=_int(source, "search.seed", search.get("seed", 0), 0, MAX_SEED),
        cpu=_resource(source, "resources.cpu", res.get("cpu", 1), MIN_CPU),
        gpu=_resource(source, "resources.gpu", res.get("gpu", 0), 0.0),
        workers=_int(source, "resources.workers", res.get("workers", 1), 1, MAX_WORKERS),
        max_failures=_int(source, "max_failures", top.get("max_failures", 2), 0),
        smoke=_mapping(source, top.get("smoke"), "smoke"),
        share_stages=_bool(source, "share_stages", top.get("share_stages", True)))
    if len(space.description) > MAX_DESCRIPTION:
        _fail(source, "description", f"<{len(space.description)} characters>", f"at most {MAX_DESCRIPTION} characters")
    check_workers(space)
    if space.total_trials > MAX_TRIALS:
        raise SpaceError(f"{source}: the space has {space.total_trials} trials (grid points x num_samples); "
                         f"a sweep may have at most {MAX_TRIALS}")
    return space


def check_workers(space: SearchSpace) -> None:
    """Each of a trial's workers takes ``batch_size / workers`` of every global batch: refuse
    a batch size (fixed or swept) the workers do not divide."""
    if space.workers == 1:
        return
    sizes = [space.fixed.get("batch_size", DEFAULT_BATCH_SIZE)]
    sizes += [v for d in space.swept if d.name == "batch_size" for v in d.values]
    uneven = [b for b in sizes if isinstance(b, int) and b % space.workers]
    if uneven:
        raise SpaceError(f"{space.source}: batch_size {uneven[0]} is not a multiple of resources.workers="
                         f"{space.workers}; each worker takes batch_size / workers of every batch: use a batch "
                         f"size divisible by {space.workers}")


def _text(source: str, where: str, value: Any) -> str:
    if not isinstance(value, str):
        _fail(source, where, value, "a string")
    return value


def _bool(source: str, where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(source, where, value, "true or false")
    return value


def _int(source: str, where: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        _fail(source, where, value, f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]")
    return value


def _resource(source: str, where: str, value: Any, lo: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= MAX_RESOURCE:
        _fail(source, where, value, f"a number in [{lo:g}, {MAX_RESOURCE:g}] (fractions share a device)")
    return float(value)


def _dimension(source: str, name: str, spec: Any) -> Dimension:
    where = f"swept.{name}"
    kinds = [k for k in spec if k in KINDS] if isinstance(spec, Mapping) else []
    if (not isinstance(spec, Mapping) or len(kinds) != 1 or set(spec) - {*kinds, "step"}
            or ("step" in spec and kinds[0] not in RANGES)):
        _fail(source, where, spec, f"a mapping with one key of {list(KINDS)}, e.g. {{grid: [0.8, 0.9]}} "
              f"(and, for {list(RANGES)}, an optional step)")
    kind = kinds[0]
    values = spec[kind]
    if not isinstance(values, list) or not values:
        _fail(source, f"{where}.{kind}", values, "a non-empty list")
    if kind in ("uniform", "loguniform", "randint"):
        ok = len(values) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        ok = ok and values[0] < values[1] and (kind != "loguniform" or values[0] > 0)
        ok = ok and (kind != "randint" or all(isinstance(v, int) for v in values))
        if not ok:
            _fail(source, f"{where}.{kind}", values, "[low, high] with low < high"
                  + (" and low > 0" if kind == "loguniform" else "") + (" as integers" if kind == "randint" else ""))
    elif len(set(map(repr, values))) != len(values):
        _fail(source, f"{where}.{kind}", values, "a list without repeats")
    step = spec.get("step")
    if step is not None:
        ok = isinstance(step, (int, float)) and not isinstance(step, bool) and 0 < step <= values[1] - values[0]
        if not ok or (kind == "randint" and not isinstance(step, int)):
            _fail(source, f"{where}.step", step, f"a number in (0, {values[1] - values[0]}]"
                  + (" (an integer)" if kind == "randint" else ""))
        if not all(math.isclose(v / step, round(v / step)) for v in values):  # as Ray Tune's q* ranges require
            _fail(source, f"{where}.step", step, f"a number that divides both bounds {values}")
    return Dimension(name, kind, tuple(values), step)


def _check_values(space: SearchSpace, check: Callable[[dict[str, Any]], object]) -> None:
    base = dict(space.fixed)
    cases: list[tuple[str, dict[str, Any]]] = [("fixed", base)]
    lows: list[Any] = []
    highs: list[Any] = []
    for dim in space.swept:
        corners = dim.values
        if dim.kind == "randint":  # integers in [low, high)
            corners = (dim.values[0], dim.values[1] - 1)
        elif dim.kind in ("uniform", "loguniform"):  # floats, whatever the bounds were written as
            corners = (float(dim.values[0]), float(dim.values[1]))
        cases += [(f"swept.{dim.name}", {**base, dim.name: v}) for v in corners]
        lows.append(corners[0])
        highs.append(corners[-1])
    names = [d.name for d in space.swept]
    if len(names) > 1:  # settings that are each fine but not together (sparsity and quality, say)
        cases += [(f"swept {names} together", {**base, **dict(zip(names, corner, strict=True))})
                  for corner in (lows, highs)]
    cases.append(("smoke", {**base, **space.smoke}))
    for where, settings in cases:
        try:
            check(settings)
        except ValueError as exc:
            raise SpaceError(f"{space.source}: {where}: {exc}") from None
