"""What a cycle produces, under one name per number, from ``run_cycle`` to the Tune report, to
MLflow, to ``dcsweep compress --json`` and ``dcsweep pareto --json``.

- :class:`CycleResult`: the cycle so far (after each phase, in a checkpoint) or whole (the
  compress JSON). ``metrics(phase)`` flattens it into the names a trial reports to Tune and the
  driver logs to MLflow; :class:`Report` reads such a flat result back.
- :class:`Trial`: one finished trial of a sweep as the Pareto table shows it.

The names at the edges are fixed by ARCHITECTURE.md and differ in one place only: the JSON
outputs call the size ratio ``ratio``, MLflow calls it ``compression_ratio`` (``RATIO_METRIC``).
The phases, their MLflow steps and a checkpoint's file names live here too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

#: The trained phases, in order; a cycle checkpoints after each.
PHASES = ("dense", "pruned", "shared")
#: The last report of a trial: the .dcz written, decoded and evaluated.
FINAL = "final"
#: The last report of a trial whose loss became NaN or infinite.
DIVERGED = "diverged"
#: MLflow metric step of each phase's report.
STEPS = {phase: step for step, phase in enumerate((*PHASES, FINAL))}
#: The MLflow (and Tune) name of the size ratio that the JSON outputs call ``ratio``.
RATIO_METRIC = "compression_ratio"

# A checkpoint folder: the model so far, the results so far (state), and at the end the whole
# result and the plots.
MODEL_FILE, STATE_FILE, RESULT_FILE, PLOTS_DIR = "model.dcz", "state.json", "result.json", "plots"


@dataclass(frozen=True)
class Encoded:
    """The .dcz file a cycle wrote, and its size under each coder."""

    path: str | None  # None: written only to be measured (run_cycle without ``output``)
    coder: str
    sparsity: float  # fraction of zero weights over all pruned layers
    dense_bytes: int  # float32 size of the same parameters
    compressed_bytes: int  # the file on disk
    compressed_bytes_by_coder: Mapping[str, int]
    layers: tuple[Mapping[str, Any], ...]

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.compressed_bytes


@dataclass(frozen=True)
class CycleResult:
    """The cycle so far. ``accuracy`` (on the test part) and ``val_accuracy`` (on the
    validation split: what selects) and ``seconds`` are keyed by phase (then ``decoded``, and
    ``encoded``/``plots``/``total`` seconds once the file is written); ``bytes_by_phase`` is the
    size of the .dcz had the cycle stopped after that phase."""

    config: Mapping[str, Any]
    accuracy: Mapping[str, float] = field(default_factory=dict)
    seconds: Mapping[str, float] = field(default_factory=dict)
    bytes_by_phase: Mapping[str, int] = field(default_factory=dict)
    encoded: Encoded | None = None
    #: phase -> {"key": the stage's key, "reused": taken from an earlier computation,
    #: "seconds": what computing the stage took (saved when reused), and "recomputed": the damage
    #: found in the stored stage when it was set aside and computed again}
    stages: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    val_accuracy: Mapping[str, float] = field(default_factory=dict)
    #: layer -> {"sparsity", "k"} chosen by the allocator (``target_ratio``/``max_drop``), and
    #: what the sensitivity table predicted for it: {"budget_bytes", "bytes", "val_accuracy"}
    allocation: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    allocation_predicted: Mapping[str, Any] = field(default_factory=dict)
    #: what the dense phase started from, when not a random initialisation: {"weights" (a path,
    #: or torchvision's weights by name), "sha256", "reinitialised" (the layers those weights
    #: could not give: the classifier, the first conv)}
    start: Mapping[str, Any] = field(default_factory=dict)

    def after(self, phase: str, accuracy: float, val_accuracy: float, seconds: float, size: int | None,
              stage: Mapping[str, Any] | None = None) -> CycleResult:
        """This result with ``phase`` done (from ``stage``, when it is one)."""
        sizes = self.bytes_by_phase if size is None else {**self.bytes_by_phase, phase: size}
        stages = self.stages if stage is None else {**self.stages, phase: dict(stage)}
        return replace(self, accuracy={**self.accuracy, phase: accuracy}, seconds={**self.seconds, phase: seconds},
                       bytes_by_phase=sizes, stages=stages, val_accuracy={**self.val_accuracy, phase: val_accuracy})

    def as_of(self, phase: str) -> CycleResult:
        """This result as it stood when ``phase`` (one of PHASES) ended: ``as_of(p).metrics(p)``
        is what that phase's report held, so a report the driver never logged can be rebuilt."""
        done = PHASES[: PHASES.index(phase) + 1]

        def only(by_phase: Mapping[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in by_phase.items() if k in done}

        return replace(self, accuracy=only(self.accuracy), val_accuracy=only(self.val_accuracy),
                       seconds=only(self.seconds), bytes_by_phase=only(self.bytes_by_phase),
                       stages=only(self.stages), encoded=None)

    def with_seconds(self, **seconds: float) -> CycleResult:
        """More timings; ``total`` is kept the sum of the others."""
        merged = {k: v for k, v in {**self.seconds, **seconds}.items() if k != "total"}
        if "encoded" in merged:
            merged["total"] = sum(merged.values())
        return replace(self, seconds=merged)

    # -- the flat names of Tune reports and MLflow metrics ----------------------------------
    def metrics(self, phase: str) -> dict[str, Any]:
        """What a trial reports after ``phase`` (or ``FINAL``): the phase, ``accuracy`` and
        ``val_accuracy`` (of the model as it stands: decoded at the end), ``accuracy_<phase>``,
        ``val_accuracy_<phase>``, ``seconds_<phase>`` and
        ``compressed_bytes`` (the size had the trial stopped here: a multi-objective searcher
        gets both objectives from every report); at the end also ``sparsity``, ``dense_bytes``
        and ``compression_ratio``."""
        acc = dict(self.accuracy)
        out: dict[str, Any] = {"phase": phase, "accuracy": acc.get("decoded", acc.get(phase))}
        out.update({f"accuracy_{k}": v for k, v in acc.items()})
        val = dict(self.val_accuracy)
        out["val_accuracy"] = val.get("decoded", val.get(phase))
        out.update({f"val_accuracy_{k}": v for k, v in val.items()})
        out.update({f"seconds_{k}": v for k, v in self.seconds.items()})
        for name, stage in self.stages.items():
            out[f"stage_{name}"], out[f"reused_{name}"] = stage["key"], bool(stage["reused"])
            out[f"seconds_saved_{name}"] = float(stage["seconds"]) if stage["reused"] else 0.0
            if stage.get("recomputed"):
                out[f"recomputed_{name}"] = str(stage["recomputed"])
        if self.encoded is not None and phase == FINAL:
            e = self.encoded
            out.update(sparsity=e.sparsity, compressed_bytes=e.compressed_bytes, dense_bytes=e.dense_bytes,
                       **{RATIO_METRIC: e.ratio})
        else:
            out["compressed_bytes"] = self.bytes_by_phase.get(phase)
        return out

    # -- the compress JSON ------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """``dcsweep compress --json``: accuracy, sparsity, dense_bytes, compressed_bytes, ratio,
        layers, ... (before the file is written, only what is known so far)."""
        out: dict[str, Any] = {"model": self.config.get("model"), "dataset": self.config.get("dataset"),
                               "config": dict(self.config), "accuracy": dict(self.accuracy),
                               "val_accuracy": dict(self.val_accuracy),
                               "seconds": dict(self.seconds), "bytes_by_phase": dict(self.bytes_by_phase),
                               "stages": {k: dict(v) for k, v in self.stages.items()}}
        if self.start:
            out["start"] = dict(self.start)
        if self.allocation:
            out["allocation"] = {k: dict(v) for k, v in self.allocation.items()}
            out["allocation_predicted"] = dict(self.allocation_predicted)
        e = self.encoded
        if e is not None:
            out.update(sparsity=e.sparsity, dense_bytes=e.dense_bytes, compressed_bytes=e.compressed_bytes,
                       ratio=e.ratio, coder=e.coder, compressed_bytes_by_coder=dict(e.compressed_bytes_by_coder),
                       ratio_by_coder={c: e.dense_bytes / b for c, b in e.compressed_bytes_by_coder.items()},
                       layers=[dict(row) for row in e.layers], path=e.path)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CycleResult:
        """The inverse of ``to_json`` (a checkpoint's state, a trial's result.json). Raises
        KeyError or TypeError on a document that is not one."""
        encoded = None
        if "compressed_bytes" in data:
            encoded = Encoded(data["path"], str(data["coder"]), float(data["sparsity"]), int(data["dense_bytes"]),
                              int(data["compressed_bytes"]), dict(data["compressed_bytes_by_coder"]),
                              tuple(dict(row) for row in data["layers"]))
        return cls(dict(data["config"]), dict(data["accuracy"]), dict(data["seconds"]),
                   dict(data.get("bytes_by_phase", {})), encoded,
                   {k: dict(v) for k, v in dict(data.get("stages", {})).items()}, dict(data.get("val_accuracy", {})),
                   {k: dict(v) for k, v in dict(data.get("allocation", {})).items()},
                   dict(data.get("allocation_predicted", {})), dict(data.get("start", {})))


@dataclass(frozen=True)
class Report:
    """A trial's flat report read back on the driver's side (a Tune result or a row of its
    log): what the progress line, MLflow and the searcher need."""

    phase: str
    accuracy: float | None
    val_accuracy: float | None
    compressed_bytes: float | None
    ratio: float | None
    error: str | None
    numbers: Mapping[str, float]  # every number MLflow logs at this phase's step
    stages: Mapping[str, tuple[str, bool]] = field(default_factory=dict)  # phase -> (key, reused)
    recomputed: Mapping[str, str] = field(default_factory=dict)  # phase -> the damage its stored stage had
    world_size: int | None = None  # the workers that ran a multi-worker trial

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> Report:
        numbers = {k: float(v) for k, v in metrics.items() if _loggable(k, v)}
        stages = {phase: (str(metrics[f"stage_{phase}"]), _flag(metrics.get(f"reused_{phase}")))
                  for phase in PHASES if isinstance(metrics.get(f"stage_{phase}"), str)}
        recomputed = {phase: metrics[f"recomputed_{phase}"][:500] for phase in PHASES
                      if isinstance(metrics.get(f"recomputed_{phase}"), str) and metrics[f"recomputed_{phase}"]}
        world = _number(metrics.get("world_size"))
        return cls(str(metrics.get("phase")), _number(metrics.get("accuracy")), _number(metrics.get("val_accuracy")),
                   _number(metrics.get("compressed_bytes")), _number(metrics.get(RATIO_METRIC)),
                   metrics.get("error"), numbers, stages, recomputed,
                   int(world) if world is not None and world >= 1 else None)

    @property
    def step(self) -> int | None:
        return STEPS.get(self.phase)

    @staticmethod
    def diverged(error: str) -> dict[str, Any]:
        """The report of a trial whose loss diverged: both objectives at their worst, so a
        multi-objective searcher steers away from it."""
        return {"phase": DIVERGED, "error": error, "accuracy": 0.0, "val_accuracy": 0.0, "compressed_bytes": math.inf}


_LOGGED = ("sparsity", "compressed_bytes", "dense_bytes", RATIO_METRIC)


def _loggable(key: str, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return key.startswith(("accuracy", "val_accuracy", "seconds_")) or key in _LOGGED


def _flag(value: Any) -> bool:
    """A boolean as Tune hands it back: a bool, or read from its CSV log (text, or NaN where
    the column was still empty)."""
    return value is True or (isinstance(value, str) and value.lower() == "true") or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value == 1)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Trial:
    """A finished trial of a sweep as ``dcsweep pareto --json`` and ``pareto.csv`` show it:
    ``accuracy`` on the test part, ``val_accuracy`` on the validation split, which is what the
    front is marked on (a trial without it, from before the split existed, is never on it)."""

    run_id: str | None
    params: Mapping[str, str]
    accuracy: float
    compressed_bytes: int
    ratio: float | None
    val_accuracy: float | None = None
    pareto_optimal: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "params": dict(self.params), "accuracy": self.accuracy,
                "val_accuracy": self.val_accuracy, "compressed_bytes": self.compressed_bytes, "ratio": self.ratio,
                "pareto_optimal": self.pareto_optimal}
