"""One Deep Compression cycle as a plain function: ``run_cycle(config) -> dict``.

dense baseline (trained, or loaded from ``dense_path``) -> iterative pruning with retraining ->
k-means weight sharing with centroid fine-tuning -> the .dcz file -> that file decoded into a
fresh model and evaluated. No Ray, no MLflow: a sweep runner calls this once per trial.

After each phase the model and the results so far are written to a checkpoint directory (a .dcz
file, which keeps masks and codebooks, plus ``state.json``) and handed to
``callbacks.on_phase_end``; ``resume_from=<such a directory>`` continues after that phase. Each
phase seeds its own random streams, so a resumed cycle gives the same numbers as an unbroken one.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dcsweep.compression import (
    KMeansShare, MagnitudePrune, iterative_prune_, load_compressed, save_compressed, share_weights_,
    size_report, sparsity,
)

from .config import ConfigError, CycleConfig
from .datasets import Data, load_dataset
from .models import create_model
from .train import Schedule, evaluate, fit, pick_device, seed_everything

log = logging.getLogger("dcsweep")
PHASES = ("dense", "pruned", "shared")
STATE_FILE, MODEL_FILE = "state.json", "model.dcz"
PLOT_SAMPLES = 1 << 20


class CycleCallbacks:
    """Hooks a caller overrides; the defaults do nothing."""

    def on_phase_end(self, phase: str, checkpoint_dir: Path | None, result: dict[str, Any]) -> None:
        """``checkpoint_dir`` is deleted when this returns: copy what you keep. It is None when
        the phase needs no checkpoint (a dense model loaded from ``dense_path``)."""

    def on_epoch(self, phase: str, epoch: int, loss: float) -> None:
        """Called after every training epoch of every phase."""


def run_cycle(
    config: Mapping[str, Any] | CycleConfig,
    *,
    output: str | Path | None = None,
    callbacks: CycleCallbacks | None = None,
    resume_from: str | Path | None = None,
    plots: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the cycle; returns the compress JSON of ARCHITECTURE.md plus ``seconds`` per phase.

    ``output`` is where the .dcz goes (default: a new temporary directory, named in the result
    as ``path``). ``plots`` is a directory for weight histograms and a bytes-per-layer chart.
    """
    cfg = config if isinstance(config, CycleConfig) else CycleConfig.from_dict(config)
    callbacks = callbacks or CycleCallbacks()
    device = pick_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.download, cfg.image_size)
    seed_everything(cfg.seed)  # the initial weights too
    model = create_model(cfg.model, data.input_shape, data.num_classes)
    result: dict[str, Any] = {"model": cfg.model, "dataset": cfg.dataset, "config": cfg.to_dict(),
                              "accuracy": {}, "seconds": {}}
    done = -1
    if resume_from is not None:
        done, result = _restore(Path(resume_from), cfg, model)
        log.info("resuming after phase %r", PHASES[done])
    snapshots: dict[str, dict[str, torch.Tensor]] = {}
    for index, phase in enumerate(PHASES):
        if index <= done:
            continue
        start = time.perf_counter()
        generator = seed_everything(cfg.seed + 1000 * index)
        if plots is not None:
            snapshots[phase] = _weights(model)
        _PHASE_RUNNERS[phase](cfg, model, data, device, generator, callbacks, progress)
        result["accuracy"][phase] = evaluate(model, data.test, device)
        result["seconds"][phase] = time.perf_counter() - start
        log.info("%s: accuracy %.4f in %.1fs", phase, result["accuracy"][phase], result["seconds"][phase])
        if phase == "dense" and cfg.dense_path is not None:  # reloaded from dense_path on resume
            result.setdefault("bytes_by_phase", {})[phase] = size_report(
                model.cpu(), coder=cfg.coder, index_bits=cfg.index_bits).total_bytes
            model.to(device)
            callbacks.on_phase_end(phase, None, json.loads(json.dumps(result)))
        else:
            _checkpoint(cfg, phase, model, result, callbacks)
    if plots is not None:
        snapshots["final"] = _weights(model)
    _encode(cfg, model, data, device, result, output)
    if plots is not None:
        from .plots import write_plots

        start = time.perf_counter()
        write_plots(Path(plots), snapshots, size_report(result["path"]))
        result["seconds"]["plots"] = time.perf_counter() - start
        result["seconds"]["total"] += result["seconds"]["plots"]
    return result


def train_baseline(config: Mapping[str, Any] | CycleConfig, output: str | Path, progress: bool = False) -> float:
    """Only the dense phase, saved as a .dcz that ``dense_path`` accepts; returns its accuracy.
    A sweep trains this once and every trial starts from it."""
    cfg = config if isinstance(config, CycleConfig) else CycleConfig.from_dict(config)
    device = pick_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.download, cfg.image_size)
    seed_everything(cfg.seed)
    model = create_model(cfg.model, data.input_shape, data.num_classes)
    _dense(cfg, model, data, device, seed_everything(cfg.seed), CycleCallbacks(), progress)
    accuracy = evaluate(model, data.test, device)
    save_compressed(model.cpu(), output)
    return accuracy


# -- phases -------------------------------------------------------------------------------

def _dense(cfg: CycleConfig, model: nn.Module, data: Data, device: torch.device, gen: torch.Generator,
           callbacks: CycleCallbacks, progress: bool) -> None:
    if cfg.dense_path is not None:
        _load_dense(model, Path(cfg.dense_path))
        return
    fit(model, data.train, _schedule(cfg, cfg.epochs, cfg.lr), device, gen, "dense", progress,
        lambda e, loss: callbacks.on_epoch("dense", e, loss))


def _prune(cfg: CycleConfig, model: nn.Module, data: Data, device: torch.device, gen: torch.Generator,
           callbacks: CycleCallbacks, progress: bool) -> None:
    rule = {"sparsity": cfg.sparsity} if cfg.sparsity is not None else {"quality": cfg.quality}
    schedule = _schedule(cfg, cfg.prune_epochs, cfg.prune_learning_rate)

    def retrain(m: nn.Module, step: int) -> None:
        fit(m, data.train, schedule, device, gen, f"prune {step + 1}/{cfg.prune_steps}", progress,
            lambda e, loss: callbacks.on_epoch("pruned", step * cfg.prune_epochs + e, loss))

    iterative_prune_(model, MagnitudePrune(**rule, layers=cfg.layers), cfg.prune_steps, retrain)


def _share(cfg: CycleConfig, model: nn.Module, data: Data, device: torch.device, gen: torch.Generator,
           callbacks: CycleCallbacks, progress: bool) -> None:
    share_weights_(model, KMeansShare(k=cfg.k, k_conv=cfg.k_conv, k_fc=cfg.k_fc, init=cfg.init, seed=cfg.seed))
    fit(model, data.train, _schedule(cfg, cfg.share_epochs, cfg.share_learning_rate), device, gen, "share",
        progress, lambda e, loss: callbacks.on_epoch("shared", e, loss))


_PHASE_RUNNERS = {"dense": _dense, "pruned": _prune, "shared": _share}


def _schedule(cfg: CycleConfig, epochs: int, lr: float) -> Schedule:
    return Schedule(epochs, lr, cfg.optimizer, cfg.momentum, cfg.weight_decay, cfg.batch_size)


def _encode(cfg: CycleConfig, model: nn.Module, data: Data, device: torch.device, result: dict[str, Any],
            output: str | Path | None) -> None:
    start = time.perf_counter()
    path = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="dcsweep-")) / MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    report = save_compressed(model.cpu(), path, coder=cfg.coder, index_bits=cfg.index_bits)
    decoded = load_compressed(path)  # a fresh model built from the file's own architecture
    result["accuracy"]["decoded"] = evaluate(decoded, data.test, device)
    other = {c: size_report(model, coder=c, index_bits=cfg.index_bits).total_bytes
             for c in ("huffman", "ans") if c != cfg.coder}
    by_coder = {cfg.coder: report.total_bytes, **other}
    result.update(
        sparsity=sparsity(model), dense_bytes=report.dense_bytes, compressed_bytes=report.total_bytes,
        ratio=report.ratio, coder=cfg.coder, compressed_bytes_by_coder=by_coder,
        ratio_by_coder={c: report.dense_bytes / b for c, b in by_coder.items()},
        layers=[row.to_dict() for row in report.layers], path=str(path))
    result["seconds"]["encoded"] = time.perf_counter() - start
    result["seconds"]["total"] = sum(v for k, v in result["seconds"].items() if k != "total")


# -- checkpoints ---------------------------------------------------------------------------

def _checkpoint(cfg: CycleConfig, phase: str, model: nn.Module, result: dict[str, Any],
                callbacks: CycleCallbacks) -> None:
    """The model as a .dcz in the run's own format (so its size is the size if the run stopped
    here: ``bytes_by_phase``) and the results so far, handed to the callback."""
    folder = Path(tempfile.mkdtemp(prefix=f"dcsweep-{phase}-"))
    try:
        device = next(model.parameters()).device
        report = save_compressed(model.cpu(), folder / MODEL_FILE, coder=cfg.coder, index_bits=cfg.index_bits)
        model.to(device)
        result.setdefault("bytes_by_phase", {})[phase] = report.total_bytes
        (folder / STATE_FILE).write_text(json.dumps({"phase": phase, "result": result}, indent=1))
        callbacks.on_phase_end(phase, folder, json.loads(json.dumps(result)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _restore(folder: Path, cfg: CycleConfig, model: nn.Module) -> tuple[int, dict[str, Any]]:
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        phase, result = state["phase"], state["result"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"resume_from={str(folder)!r} is not a cycle checkpoint: {exc}") from None
    if result.get("config") != cfg.to_dict():
        changed = sorted(k for k, v in cfg.to_dict().items() if result.get("config", {}).get(k) != v)
        raise ConfigError(f"resume_from={str(folder)!r} was made with other settings (differ: {changed})")
    load_compressed(folder / MODEL_FILE, model)
    return PHASES.index(phase), result


def _load_dense(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"dense_path={str(path)!r} does not exist; give a .dcz or state-dict .pt file")
    if path.suffix == ".dcz":
        load_compressed(path, model)
        return
    try:  # weights_only: a state dict of tensors, never arbitrary pickled objects
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"dense_path={str(path)!r} is not a state dict for this model: {exc}") from None


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    from dcsweep.compression.layers import compressible_layers, structural_mask

    out = {}
    gen = torch.Generator().manual_seed(0)
    for name, module in compressible_layers(model):
        w = module.weight.detach().cpu()
        mask = structural_mask(module)
        values = w[mask] if mask is not None else w.reshape(-1)
        if values.numel() > PLOT_SAMPLES:  # a histogram needs no 100M points
            values = values[torch.randint(values.numel(), (PLOT_SAMPLES,), generator=gen)]
        out[name] = values.clone()
    return out
