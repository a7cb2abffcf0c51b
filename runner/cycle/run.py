"""One Deep Compression cycle as a plain function: ``run_cycle(config) -> CycleResult``.

dense baseline (trained, or started from ``dense_path`` or torchvision's ``pretrained`` weights,
and fine-tuned for ``epochs``) -> iterative pruning with retraining ->
k-means weight sharing with centroid fine-tuning -> the .dcz file -> that file decoded into a
fresh model and evaluated. No Ray, no MLflow: a sweep runner calls this once per trial.

After each phase the model and the results so far are written to a checkpoint directory (a .dcz
file, which keeps masks and codebooks, plus ``state.json``) and handed to
``callbacks.on_phase_end``; ``resume_from=<such a directory>`` continues after that phase. Each
phase seeds its own random streams, so a resumed cycle gives the same numbers as an unbroken one.
Every temporary folder it makes is removed before it returns or raises.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from dcsweep.compression import (
    KMeansShare,
    MagnitudePrune,
    SizeReport,
    iterative_prune_,
    load_compressed,
    prune_,
    save_compressed,
    share_weights_,
    size_report,
    sparsity,
)
from dcsweep.compression.errors import CompressedFileError
from dcsweep.compression.layers import compressible_layers, structural_mask, tensor

from .allocation import Allocation, fit_budget
from .config import ConfigError, CycleConfig
from .datasets import Data, load_dataset
from .fingerprint import fingerprint
from .models import create_model
from .parallel import SINGLE, Ranks, ranked
from .pretrained import file_digest, load_state_, published, published_digest, read_state
from .results import MODEL_FILE, PHASES, STATE_FILE, CycleResult, Encoded
from .sensitivity import CSV_FILE, KS, PLOT_FILE, SPARSITIES, TABLE_FILE, Table, measure
from .stages import (
    NoStages,
    StageDamaged,
    StageRecord,
    Stages,
    key_of,
    ladder_inputs,
    sensitivity_inputs,
    stage_inputs,
    stage_keys,
)
from .train import Schedule, evaluate, fit, pick_device, seed_everything

log = logging.getLogger("dcsweep")
PLOT_SAMPLES = 1 << 20
SENSITIVITY_DIR = "sensitivity"  # in ``plots``: the table an allocated run chose from
RUNG_SEED_STRIDE = 7919  # rung n of a ladder trains with seed + 1000 + stride * (n + 1)


class CycleCallbacks:
    """Hooks a caller overrides; the defaults do nothing."""

    def on_phase_end(self, phase: str, checkpoint_dir: Path | None, result: CycleResult) -> None:
        """``checkpoint_dir`` is deleted when this returns: copy what you keep. It is None when
        the phase needs no checkpoint (a dense model loaded from ``dense_path``, not trained)."""

    def on_epoch(self, phase: str, epoch: int, loss: float) -> None:
        """Called after every training epoch of every phase."""


class _Cycle:
    """The state one run of the cycle carries from phase to phase."""

    def __init__(self, cfg: CycleConfig, callbacks: CycleCallbacks, progress: bool,
                 workdir: Path | None = None, device: str | None = None, ranks: Ranks = SINGLE) -> None:
        self.cfg, self.callbacks, self.progress, self.workdir = cfg, callbacks, progress, workdir
        self.ranks = ranks
        self.device = pick_device(device or cfg.device)
        self.data: Data = load_dataset(cfg.dataset, cfg.data_root, cfg.download, cfg.image_size, cfg.val_fraction)
        seed_everything(cfg.seed)  # the initial weights too
        self.model = create_model(cfg.model, self.data.input_shape, self.data.num_classes)
        cfg.check_layers(self.model)  # a rule naming no layer is refused before any training
        self.dense_sha256 = _dense_digest(cfg)  # hashed once: a dense file can be large
        self.weights: dict[str, torch.Tensor] | None = None  # a state dict to start from, until loaded
        self.weights_source = ""  # how errors name it
        self.result = CycleResult(cfg.to_dict(), start=self.read_start())
        self.data_id = fingerprint(self.data)  # the data by its content: part of every stage key
        self.set_keys()
        self.stages: Stages = NoStages()
        self.allocated_from: Table | None = None  # the sensitivity table this run allocated from

    @property
    def dense_from_file(self) -> bool:
        """The dense model is ``dense_path``'s, as it is: loaded, not trained, and no stage."""
        return self.cfg.dense_path is not None and self.cfg.epochs == 0

    def read_start(self) -> dict[str, Any]:
        """What the dense phase starts from, checked against the model now (before any
        training): {} for a random start, else the weights, their sha256 and the layers they
        cannot give (left at their initialisation: see pretrained.py)."""
        cfg = self.cfg
        if cfg.pretrained:
            pub = published(cfg.model)
            source, path = f"torchvision's {pub.weights}", pub.file
        elif cfg.dense_path is not None:
            source, path = f"dense_path={cfg.dense_path!r}", Path(cfg.dense_path).expanduser()
            if path.suffix == ".dcz":  # our own file: it names its architecture and loads whole
                return {"weights": str(path), "sha256": self.dense_sha256, "reinitialised": []}
        else:
            return {}
        self.weights, self.weights_source = read_state(path, self.model, source), source
        reinitialised = load_state_(self.model, self.weights, source, apply=False)
        if reinitialised:
            log.info("%s: %s re-initialised (the data set's classes or channels differ from the weights')",
                     source, ", ".join(reinitialised))
        return {"weights": pub.weights if cfg.pretrained else str(path), "sha256": self.dense_sha256,
                "reinitialised": reinitialised}

    def set_keys(self) -> None:
        """Each phase's stage key and what makes it, for the settings as they stand."""
        self.inputs = stage_inputs(self.cfg, self.dense_sha256, self.data_id)
        self.keys = {phase: key_of(inputs) for phase, inputs in self.inputs.items()}

    def record(self, phase: str, inputs: Mapping[str, Any], accuracy: float | None, val_accuracy: float,
               seconds: float, files: tuple[str, ...] = (MODEL_FILE,)) -> StageRecord:
        """The record of a stage computed here: its figures, what made its key, and for the
        people who list the store, the model and the data set with its resolved path."""
        about = {"model": self.cfg.model, "dataset": self.cfg.dataset, "data_path": _data_path(self.cfg),
                 "data": self.data_id, "settings": {k: v for k, v in self.cfg.to_dict().items()
                                                    if k in ("sparsity", "k", "k_conv", "k_fc", "quality")}}
        return StageRecord(phase, key_of(inputs), accuracy, val_accuracy, seconds, files, inputs, about)

    def scores(self, model: nn.Module | None = None) -> tuple[float, float]:
        """(test accuracy, validation accuracy) of ``model`` (default: the cycle's)."""
        model = self.model if model is None else model
        return (evaluate(model, self.data.test, self.device, ranks=self.ranks),
                evaluate(model, self.data.validation, self.device, ranks=self.ranks))

    def fit(self, phase: str, label: str, epochs: int, lr: float, gen: torch.Generator, first_epoch: int = 0) -> None:
        cfg = self.cfg
        schedule = Schedule(epochs, lr, cfg.optimizer, cfg.momentum, cfg.weight_decay, cfg.batch_size)
        fit(self.model, self.data.train, schedule, self.device, gen, label, self.progress,
            lambda e, loss: self.callbacks.on_epoch(phase, first_epoch + e, loss), self.ranks)

    # -- phases -------------------------------------------------------------------------------
    def dense(self, gen: torch.Generator) -> None:
        cfg = self.cfg
        if self.weights is not None:  # loaded once; the cycle need not keep 500 MB beside its model
            load_state_(self.model, self.weights, self.weights_source)
            self.weights = None
        elif cfg.dense_path is not None:
            _load_dense(self.model, Path(cfg.dense_path))
        if cfg.epochs:
            self.fit("dense", "dense", cfg.epochs, cfg.lr, gen)

    def pruned(self, gen: torch.Generator) -> None:
        cfg = self.cfg
        if cfg.prune_schedule == "ladder":
            self.climb()
            self.prune_rung(len(cfg.rungs) - 1, cfg.rungs[-1])
            return

        def retrain(model: nn.Module, step: int) -> None:
            self.ranks.share(model)  # rank 0's masks, whatever the ranks' thresholds came to
            self.fit("pruned", f"prune {step + 1}/{cfg.prune_steps}", cfg.prune_epochs, cfg.prune_learning_rate, gen,
                     first_epoch=step * cfg.prune_epochs)

        iterative_prune_(self.model, cfg.prune_config, cfg.prune_steps, retrain)

    # -- a pruning ladder ------------------------------------------------------------------
    def climb(self) -> None:
        """The rungs below this trial's: each taken from the stages, or computed from the rung
        below and published for every other trial that climbs past it."""
        for number, (target, inputs) in enumerate(ladder_inputs(self.cfg, self.keys["dense"], self.data_id)[:-1]):
            key = key_of(inputs)
            with self.stages.claim("pruned", key) as found:
                if found is not None:
                    _load_stage(found.folder / MODEL_FILE, self.model)
                    continue
                start = time.perf_counter()
                self.prune_rung(number, target)
                accuracy, val_accuracy = self.scores()
                record = self.record("pruned", inputs, accuracy, val_accuracy, time.perf_counter() - start)
                log.info("ladder rung %d (sparsity %g): accuracy %.4f in %.1fs", number, target, accuracy,
                         record.seconds)
                with tempfile.TemporaryDirectory(prefix="dcsweep-rung-", dir=self.workdir) as tmp:
                    save_compressed(self.model, Path(tmp) / MODEL_FILE)
                    self.stages.publish("pruned", key, Path(tmp), record)

    def prune_rung(self, number: int, target: float) -> None:
        """One rung: one pruning step up to ``target`` sparsity and one retraining, seeded by the rung's
        number alone, so whichever trial computes a rung computes the same one."""
        cfg = self.cfg
        gen = seed_everything(cfg.seed + 1000 + RUNG_SEED_STRIDE * (number + 1))
        def retrain(model: nn.Module, step: int) -> None:
            self.ranks.share(model)
            self.fit("pruned", f"rung {number + 1} (sparsity {target:g})", cfg.prune_epochs, cfg.prune_learning_rate,
                     gen)

        iterative_prune_(self.model, MagnitudePrune(sparsity=target, layers=cfg.layers), 1, retrain)

    def shared(self, gen: torch.Generator) -> None:
        share_weights_(self.model, self.cfg.share_config)
        self.ranks.share(self.model)  # rank 0's codebooks and indices
        self.fit("shared", "share", self.cfg.share_epochs, self.cfg.share_learning_rate, gen)

    # -- per-layer allocation -------------------------------------------------------------------
    def table(self, sparsities: Sequence[float], ks: Sequence[int], dense_ready: bool) -> tuple[Table, bool]:
        """The sensitivity table of the dense model, and whether it was taken from the stages
        (computed once per dense model and grid, like any stage). Without ``dense_ready`` the
        dense stage is taken or computed first, and only when the table is not kept already."""
        inputs = sensitivity_inputs(self.cfg, self.keys["dense"], sparsities, ks, self.data_id)
        with self.stages.claim("sensitivity", key_of(inputs)) as found:
            if found is not None:
                return _read_table(found.folder), True
            if not dense_ready:
                self.run_stage("dense", self.keys["dense"], seed_everything(self.cfg.seed), self.stages)
            table = measure(self.model, self.data.validation, self.device, sparsities, ks, coder=self.cfg.coder,
                            index_bits=self.cfg.index_bits, init=self.cfg.init, seed=self.cfg.seed,
                            retrain=self.retrain_for_table if self.cfg.table_retrain_epochs else None)
            table = self.ranks.decide(table)  # every rank allocates from rank 0's
            log.info("sensitivity table: %d layers x %d rows in %.1fs", len(table.layers),
                     len(sparsities) * len(ks), table.seconds)
            with tempfile.TemporaryDirectory(prefix="dcsweep-sensitivity-", dir=self.workdir) as tmp:
                table.write(Path(tmp))
                record = self.record("sensitivity", inputs, None, table.dense_val_accuracy, table.seconds,
                                     (TABLE_FILE, CSV_FILE, PLOT_FILE))
                self.stages.publish("sensitivity", record.key, Path(tmp), record)
            return table, False

    def retrain_for_table(self, model: nn.Module, number: int) -> None:
        """The table's short retraining of one pruned layer's model, as the cycle retrains but at
        ``table_retrain_lr``."""
        cfg = self.cfg
        schedule = Schedule(cfg.table_retrain_epochs, cfg.table_retrain_learning_rate, cfg.optimizer, cfg.momentum,
                            cfg.weight_decay, cfg.batch_size)
        fit(model, self.data.train, schedule, self.device, seed_everything(cfg.seed + 5000 + number),
            f"sensitivity {number + 1}", self.progress)

    def allocate(self) -> None:
        """Choose each layer's sparsity and k for the run's target from the dense model's table,
        priced by the file the choice writes, and run the rest of the cycle with them."""
        cfg = self.cfg
        grid = _grid(cfg)
        table, _ = self.table(*grid, dense_ready=True)
        self.allocated_from = table
        budget = None if cfg.target_ratio is None else int(table.dense_bytes / cfg.target_ratio)
        allocation, priced = self.ranks.decide(fit_budget(
            table, budget_bytes=budget, max_drop=None if cfg.max_drop is None else cfg.max_drop / 100,
            price=self.price))
        log.info("allocation for %s: %s (%d B before retraining, predicted validation accuracy %.4f)",
                 f"ratio {cfg.target_ratio:g}" if cfg.target_ratio else f"at most {cfg.max_drop:g} points lost",
                 allocation.to_json(), priced, allocation.predicted_val_accuracy)
        self.result = dataclasses.replace(self.result, allocation=allocation.to_json(), allocation_predicted={
            "budget_bytes": budget, "bytes": priced, "val_accuracy": allocation.predicted_val_accuracy,
            "table": key_of(sensitivity_inputs(cfg, self.keys["dense"], *grid, self.data_id))})
        self.apply(allocation.to_json())

    def apply(self, allocation: Mapping[str, Mapping[str, Any]]) -> None:
        """Per-layer rules from an allocation; the pruned and shared stages are keyed by them, so
        two targets that allocate alike share their stages."""
        self.cfg = dataclasses.replace(
            self.cfg, target_ratio=None, max_drop=None,
            layers={name: float(v["sparsity"]) for name, v in allocation.items()},
            k_layers={name: int(v["k"]) for name, v in allocation.items()})
        self.set_keys()

    def price(self, allocation: Allocation) -> int:
        """The .dcz size of the dense model pruned and shared as ``allocation`` says, without
        retraining: what the table's prices add up to, counted by the file itself."""
        model = copy.deepcopy(self.model)
        prune_(model, MagnitudePrune(sparsity=0.0, layers=allocation.sparsity))
        share_weights_(model, KMeansShare(k=self.cfg.k, layers=allocation.k, init=self.cfg.init, seed=self.cfg.seed))
        return self.bytes_of(model)

    def phase(self, name: str) -> Callable[[torch.Generator], None]:
        return {"dense": self.dense, "pruned": self.pruned, "shared": self.shared}[name]

    # -- files --------------------------------------------------------------------------------
    def bytes_now(self) -> int:
        """The .dcz's size if the cycle stopped here (in the run's own coder and widths)."""
        return self.bytes_of(self.model)

    def bytes_of(self, model: nn.Module) -> int:
        return size_report(model, coder=self.cfg.coder, index_bits=self.cfg.index_bits).total_bytes

    def run_stage(self, phase: str, key: str, gen: torch.Generator, stages: Stages) -> None:
        """The phase, or the stage another trial (or sweep) computed with the same key; a stage
        computed here is published for the others. A dense model from ``dense_path`` that is
        not fine-tuned is only loaded: no stage."""
        start = time.perf_counter()
        from_file = phase == "dense" and self.dense_from_file
        with (NoStages() if from_file else stages).claim(phase, key) as found:
            if found is not None:
                record = found.record
                if record.accuracy is None:
                    raise StageDamaged(f"stage {phase}/{key} holds no model's accuracy: not a {phase} stage")
                _load_stage(found.folder / MODEL_FILE, self.model)  # bit-exact: the very weights computed
                log.info("%s: stage %s reused (accuracy %.4f, %.1fs saved)", phase, key, record.accuracy,
                         record.seconds)
                stage = {"key": key, "reused": True, "seconds": record.seconds}
                self.checkpoint(phase, record.accuracy, record.val_accuracy, time.perf_counter() - start, stage)
                return
            self.phase(phase)(gen)
            self.ranks.share(self.model)  # bit-identical on every rank, whatever its device summed
            accuracy, val_accuracy = self.scores()
            seconds = time.perf_counter() - start
            log.info("%s: accuracy %.4f (validation %.4f) in %.1fs", phase, accuracy, val_accuracy, seconds)
            if from_file:  # loaded, not computed: the pruned stage's key holds the file's digest
                self.checkpoint(phase, accuracy, val_accuracy, seconds, None)
                return
            record = self.record(phase, self.inputs[phase], accuracy, val_accuracy, seconds)
            stage = {"key": key, "reused": False, "seconds": seconds}
            if (damage := stages.recomputed(phase, key)) is not None:
                stage["recomputed"] = damage
            self.checkpoint(phase, accuracy, val_accuracy, seconds, stage,
                            lambda folder: stages.publish(phase, key, folder, record))

    def checkpoint(self, phase: str, accuracy: float, val_accuracy: float, seconds: float,
                   stage: dict[str, Any] | None, publish: Callable[[Path], None] | None = None) -> None:
        """The model as a .dcz in the run's own format and the results so far, handed to the
        callback (and to ``publish``, for a stage computed here); a dense model loaded from
        ``dense_path`` and not trained needs no checkpoint (a resume loads it again)."""
        if phase == "dense" and self.dense_from_file:
            self.result = self.result.after(phase, accuracy, val_accuracy, seconds, self.bytes_now(), stage)
            self.callbacks.on_phase_end(phase, None, self.result)
            return
        with tempfile.TemporaryDirectory(prefix=f"dcsweep-{phase}-", dir=self.workdir) as tmp:
            folder = Path(tmp)
            report = save_compressed(self.model, folder / MODEL_FILE, coder=self.cfg.coder,
                                     index_bits=self.cfg.index_bits)
            self.result = self.result.after(phase, accuracy, val_accuracy, seconds, report.total_bytes, stage)
            if publish is not None:
                publish(folder)
            state = {"phase": phase, "result": self.result.to_json(), "dense_sha256": self.dense_sha256}
            (folder / STATE_FILE).write_text(json.dumps(state, indent=1))
            self.callbacks.on_phase_end(phase, folder, self.result)

    def encode(self, output: Path | None) -> SizeReport:
        """Write the .dcz (to a temporary folder when there is no ``output``: measured, then
        removed), decode it into a fresh model and evaluate that; returns the file's sizes."""
        start = time.perf_counter()
        cfg = self.cfg
        with tempfile.TemporaryDirectory(prefix="dcsweep-encode-", dir=self.workdir) as tmp:
            path = output if output is not None else Path(tmp) / MODEL_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            report = save_compressed(self.model, path, coder=cfg.coder, index_bits=cfg.index_bits)
            decoded = load_compressed(path)  # a fresh model built from the file's own architecture
        accuracy, val_accuracy = self.scores(decoded)
        by_coder = {cfg.coder: report.total_bytes, **{
            c: size_report(self.model, coder=c, index_bits=cfg.index_bits).total_bytes
            for c in ("huffman", "ans") if c != cfg.coder}}
        if report.dense_weights:
            log.warning("stored dense (not pruned or shared): %s", ", ".join(report.dense_weights))
        encoded = Encoded(str(output) if output is not None else None, cfg.coder, sparsity(self.model),
                          report.dense_bytes, report.total_bytes, by_coder, tuple(r.to_dict() for r in report.layers))
        self.result = dataclasses.replace(self.result, accuracy={**self.result.accuracy, "decoded": accuracy},
                                          val_accuracy={**self.result.val_accuracy, "decoded": val_accuracy},
                                          encoded=encoded)
        self.result = self.result.with_seconds(encoded=time.perf_counter() - start)
        return report


def run_cycle(
    config: Mapping[str, Any] | CycleConfig,
    *,
    output: str | Path | None = None,
    callbacks: CycleCallbacks | None = None,
    resume_from: str | Path | None = None,
    plots: str | Path | None = None,
    progress: bool = False,
    workdir: str | Path | None = None,
    stages: Stages | None = None,
    device: str | None = None,
    ranks: Ranks = SINGLE,
) -> CycleResult:
    """Run the cycle; ``result.to_json()`` is the compress JSON of ARCHITECTURE.md.

    ``output`` is where the .dcz goes (default: nowhere that lasts; the file is written to a
    temporary folder to be measured and decoded, and ``encoded.path`` is None). ``plots`` is a
    directory for weight histograms and a bytes-per-layer chart. ``workdir`` holds the cycle's
    temporary folders (default: the system's), each removed before the cycle returns or raises.
    ``stages`` finds the phases earlier cycles computed with the same settings and keeps the
    ones this cycle computes (see :mod:`.stages`); ``result.stages`` says which were reused.
    ``device`` overrides where the run computes (its settings' ``device``) and leaves what its
    stages are keyed by alone: a sweep's trial that holds no GPU runs ``auto`` on the CPU.
    ``ranks``: the processes that run this cycle together, data-parallel (see parallel.py);
    each calls run_cycle with the same settings, rank 0 alone with ``output``, ``plots`` and
    callbacks that keep anything, and every rank with a ``resume_from`` of the same files.
    """
    cfg = config if isinstance(config, CycleConfig) else CycleConfig.from_dict(config)
    cycle = _Cycle(cfg, callbacks or CycleCallbacks(), progress, Path(workdir) if workdir is not None else None,
                   device, ranks)
    cycle.stages = ranked(stages or NoStages(), ranks, cycle.workdir)
    done = -1
    if resume_from is not None:
        done, cycle.result = _restore(Path(resume_from), cfg, cycle.model, cycle.dense_sha256)
        log.info("resuming after phase %r", PHASES[done])
    if cfg.allocates and cycle.result.allocation:  # resumed after the allocation was made
        cycle.apply(cycle.result.allocation)
    snapshots: dict[str, dict[str, torch.Tensor]] = {}
    for index, phase in enumerate(PHASES):
        if index <= done:
            continue
        if phase == "pruned" and cfg.allocates:
            cycle.allocate()
        generator = seed_everything(cfg.seed + 1000 * index)
        if plots is not None:
            snapshots[phase] = _weights(cycle.model)
        cycle.run_stage(phase, cycle.keys[phase], generator, cycle.stages)
    if plots is not None:
        snapshots["final"] = _weights(cycle.model)
    report = cycle.encode(Path(output) if output is not None else None)
    if plots is not None:
        from .plots import write_plots

        start = time.perf_counter()
        write_plots(Path(plots), snapshots, report)
        if cycle.allocated_from is not None:
            (Path(plots) / SENSITIVITY_DIR).mkdir(exist_ok=True)
            cycle.allocated_from.write(Path(plots) / SENSITIVITY_DIR)
        cycle.result = cycle.result.with_seconds(plots=time.perf_counter() - start)
    return cycle.result


def sensitivity_table(config: Mapping[str, Any] | CycleConfig, *, stages: Stages | None = None,
                      sparsities: Sequence[float] = SPARSITIES, ks: Sequence[int] = KS, progress: bool = False,
                      workdir: str | Path | None = None) -> tuple[Table, bool]:
    """``dcsweep sensitivity``: the table of the dense model the settings describe (the dense
    stage a sweep with them shares, or ``dense_path``), and whether ``stages`` kept it already."""
    cfg = config if isinstance(config, CycleConfig) else CycleConfig.from_dict(config)
    kept = cached_table(cfg, stages or NoStages(), sparsities, ks)
    if kept is not None:
        return kept, True
    cycle = _Cycle(cfg, CycleCallbacks(), progress, Path(workdir) if workdir is not None else None)
    cycle.stages = stages or NoStages()
    return cycle.table(sparsities, ks, dense_ready=False)


def _grid(cfg: CycleConfig) -> tuple[list[float], list[int]]:
    """The sensitivity table's grid a run allocates from: its own, or the defaults."""
    return (sorted({float(v) for v in cfg.table_sparsities or SPARSITIES}),
            sorted({int(v) for v in cfg.table_ks or KS}))


def check_target(cfg: CycleConfig) -> None:
    """Refuse, before any training, a ``target_ratio`` that no allocation from the table's grid
    can reach: every layer at the grid's highest sparsity and smallest k, priced on the model's
    initial weights (trained weights code within a few percent of that, so only a target over
    1.1x of it is refused here; the allocator checks the exact table later)."""
    if cfg.target_ratio is None:
        return
    sparsities, ks = _grid(cfg)
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.download, cfg.image_size, cfg.val_fraction)
    seed_everything(cfg.seed)
    model = create_model(cfg.model, data.input_shape, data.num_classes)
    prune_(model, MagnitudePrune(sparsity=max(sparsities)))
    share_weights_(model, KMeansShare(k=min(ks), init=cfg.init, seed=cfg.seed))
    report = size_report(model, coder=cfg.coder, index_bits=cfg.index_bits)
    if cfg.target_ratio > 1.1 * report.ratio:
        raise ConfigError(f"target_ratio={cfg.target_ratio:g} is not reachable for {cfg.model}: every layer at "
                          f"sparsity {max(sparsities):g} and k={min(ks)} gives about {report.ratio:.0f}x; "
                          f"allowed: a ratio up to about {report.ratio:.0f}")


def cached_table(cfg: CycleConfig, stages: Stages, sparsities: Sequence[float], ks: Sequence[int]) -> Table | None:
    """The table ``stages`` keep for these settings, found without training or measuring (the
    data set is loaded: its fingerprint is part of the key)."""
    data_id = fingerprint(load_dataset(cfg.dataset, cfg.data_root, cfg.download, cfg.image_size, cfg.val_fraction))
    dense = stage_keys(cfg, _dense_digest(cfg), data_id)["dense"]
    with stages.claim("sensitivity", key_of(sensitivity_inputs(cfg, dense, sparsities, ks, data_id))) as found:
        return None if found is None else _read_table(found.folder)


def _load_stage(path: Path, model: nn.Module) -> None:
    """A stage's verified model into ``model``; StageDamaged when it still does not load (a
    stage written wrong, or forged with matching digests), so the store sets it aside."""
    try:
        load_compressed(path, model)
    except CompressedFileError as exc:
        raise StageDamaged(f"its model does not load: {exc}") from None


def _data_path(cfg: CycleConfig) -> str | None:
    """Where the data set lies, resolved (for messages and listings; keys hold its content)."""
    if cfg.dataset.startswith("imagefolder:"):
        return str(Path(cfg.dataset.split(":", 1)[1]).expanduser().resolve())
    return str(Path(cfg.data_root).expanduser().resolve()) if cfg.data_root else None


def _read_table(stage: Path) -> Table:
    """The table a sensitivity stage's folder keeps."""
    return Table.from_json(json.loads((stage / TABLE_FILE).read_text()))


def train_baseline(config: Mapping[str, Any] | CycleConfig, output: str | Path, progress: bool = False) -> float:
    """Only the dense phase, saved as a .dcz that ``dense_path`` accepts; returns its accuracy.
    (A sweep trains its dense model as the first stage of its first trial instead.)"""
    cfg = config if isinstance(config, CycleConfig) else CycleConfig.from_dict(config)
    cycle = _Cycle(cfg, CycleCallbacks(), progress)
    cycle.dense(seed_everything(cfg.seed))
    accuracy = evaluate(cycle.model, cycle.data.test, cycle.device)
    save_compressed(cycle.model, output)
    return accuracy


# -- checkpoints ---------------------------------------------------------------------------

def _dense_digest(cfg: CycleConfig) -> str | None:
    """The weights the dense phase starts from by their content, not where they lie (the same
    file may come back at another path, e.g. a copy in a temporary folder): what keys the dense
    stage and what a resume checks."""
    if cfg.pretrained:
        return published_digest(cfg.model, cfg.download)
    if cfg.dense_path is None:
        return None
    return file_digest(Path(cfg.dense_path).expanduser())


def _restore(folder: Path, cfg: CycleConfig, model: nn.Module, dense_sha256: str | None) -> tuple[int, CycleResult]:
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        phase, result = state["phase"], CycleResult.from_json(state["result"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"resume_from={str(folder)!r} is not a cycle checkpoint: {exc}") from None
    mine = cfg.to_dict()
    changed = sorted(k for k, v in mine.items() if k != "dense_path" and result.config.get(k) != v)
    if (result.config.get("dense_path") is None) != (cfg.dense_path is None):
        changed.append("dense_path")
    elif cfg.from_weights and state.get("dense_sha256") != dense_sha256:
        changed.append("dense_path (its content)" if cfg.dense_path else "pretrained (the weights' content)")
    if changed:
        raise ConfigError(f"resume_from={str(folder)!r} was made with other settings (differ: {changed})")
    load_compressed(folder / MODEL_FILE, model)
    return PHASES.index(phase), result


def _load_dense(model: nn.Module, path: Path) -> None:
    """A dense model's .dcz (a state dict file is read by ``_Cycle.read_start``)."""
    if not path.is_file():
        raise ConfigError(f"dense_path={str(path)!r} does not exist; give a .dcz or state-dict .pt file")
    load_compressed(path, model)
    if compressed := [name for name, m in model.named_modules() if parametrize.is_parametrized(m)]:
        raise ConfigError(f"dense_path={str(path)!r} holds a pruned or shared model (layers {compressed[:3]}); "
                          f"give a dense model's .dcz or state-dict .pt file")


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    gen = torch.Generator().manual_seed(0)
    for name, module in compressible_layers(model):
        w = tensor(module, "weight").detach().cpu()
        mask = structural_mask(module)
        values = w[mask.cpu()] if mask is not None else w.reshape(-1)
        if values.numel() > PLOT_SAMPLES:  # a histogram needs no 100M points
            values = values[torch.randint(values.numel(), (PLOT_SAMPLES,), generator=gen)]
        out[name] = values.clone()
    return out
