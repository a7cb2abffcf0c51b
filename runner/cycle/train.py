"""Training and evaluation: device choice, optimizers, cosine schedule, mixed precision."""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .config import DEVICES, ConfigError
from .datasets import Folder, InMemory
from .parallel import SINGLE, Ranks

log = logging.getLogger("dcsweep")


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu for ``auto``; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in DEVICES:
        raise ConfigError(f"device={name!r} is not allowed; device must be one of {list(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was asked for but no CUDA device is available; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device='mps' was asked for but MPS is not available; use --device auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; returns the generator that orders the batches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class Schedule:
    epochs: int
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64


class _Progress:
    """Training progress on stderr when ``enabled``: a one-line bar on a terminal, else (a log
    file, a pipe) one log line per epoch, so that a long run is never silent."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.start = time.perf_counter()

    def update(self, done: int, loss: float) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        if not self.tty:
            log.info("%s: epoch %d/%d, loss %.4f, %.1fs", self.label, done, self.total, loss, elapsed)
            return
        width = 24
        filled = int(width * done / max(self.total, 1))
        sys.stderr.write(f"\r{self.label:<18} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{self.total} loss {loss:.4f} {elapsed:5.1f}s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


#: Steps between checks that the loss is finite: each check waits for the device, so on a GPU
#: checking every step would stall the queue of kernels (a diverged run wastes at most this many).
CHECK_EVERY = 50


def mixed_precision(device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype, whether a gradient scaler is needed) on ``device``: bfloat16 where the
    GPU has it (fp32's range, so no loss scaling and no host sync each step), float16 with a
    scaler on older GPUs, none on the CPU."""
    if device.type != "cuda":
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


def fit(model: nn.Module, data: InMemory | Folder, schedule: Schedule, device: torch.device,
        generator: torch.Generator, label: str = "train", progress: bool = True,
        on_epoch: Callable[[int, float], None] | None = None, ranks: Ranks = SINGLE) -> float:
    """Train ``model`` in place; returns the last epoch's mean loss. Raises DivergedError
    when a batch's loss is NaN or infinite (found within CHECK_EVERY steps). Over several
    ``ranks`` each takes its slice of every global batch of ``schedule.batch_size`` and the
    gradients are summed over them (see parallel.py)."""
    if schedule.epochs == 0:
        return float("nan")
    params = [p for p in model.parameters() if p.requires_grad]
    if schedule.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum,
                                                     weight_decay=schedule.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    steps = schedule.epochs * math.ceil(len(data) / schedule.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    dtype, scaled = mixed_precision(device)
    scaler = torch.amp.GradScaler("cuda", enabled=scaled)
    bar = _Progress(label, schedule.epochs, progress)
    loss_value = float("nan")
    model.to(device).train()
    for epoch in range(schedule.epochs):
        # summed on the device: reading a loss back each step would wait for the GPU each step
        total = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
        first_bad = torch.full((), -1, dtype=torch.long, device=device)
        count = 0
        for step, (x, y, whole) in enumerate(_slices(data, schedule.batch_size, device, generator, ranks)):
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                if ranks.world == 1:
                    loss = nn.functional.cross_entropy(model(x), y)
                elif not len(y):  # a short last batch left this rank nothing: it adds no gradient
                    loss = torch.zeros((), device=device, requires_grad=True)
                else:  # this slice's share of the global batch's mean: the ranks' gradients sum to it
                    loss = nn.functional.cross_entropy(model(x), y, reduction="sum") / whole
            bad = ~torch.isfinite(loss.detach())
            first_bad = torch.where(bad & (first_bad < 0), step, first_bad)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            ranks.sum_gradients(model)
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += loss.detach().double() * (len(y) if ranks.world == 1 else whole)
            count += whole
            if (step + 1) % CHECK_EVERY == 0:
                _check_finite(first_bad, label, epoch, schedule, bar, ranks)
        _check_finite(first_bad, label, epoch, schedule, bar, ranks)
        loss_value = ranks.sum_(total).item() / max(count, 1)
        bar.update(epoch + 1, loss_value)
        if on_epoch is not None:
            on_epoch(epoch, loss_value)
    bar.close()
    log.info("%s: %d epochs, final loss %.4f", label, schedule.epochs, loss_value)
    return loss_value


def _slices(data: InMemory | Folder, batch_size: int, device: torch.device, generator: torch.Generator | None,
            ranks: Ranks) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(this rank's images, its labels, the global batch's size) for each global batch."""
    if ranks.world == 1:  # as a single process always drew them
        for x, y in data.batches(batch_size, device, generator):
            yield x, y, len(y)
        return
    yield from data.parts(batch_size, device, generator, ranks.part)


def _check_finite(first_bad: torch.Tensor, label: str, epoch: int, schedule: Schedule, bar: _Progress,
                  ranks: Ranks = SINGLE) -> None:
    step = int(first_bad)
    if ranks.world > 1:  # every rank stops together, or the others would wait for it forever
        anywhere = ranks.sum_(torch.tensor([float(step >= 0)], device=first_bad.device))
        step = max(step, 0) if float(anywhere) > 0 else -1
    if step >= 0:
        bar.close()
        raise DivergedError(f"{label}: loss became nan or infinite in epoch {epoch + 1} (step {step + 1}); "
                            f"lower the learning rate (lr={schedule.lr:g})")


@torch.no_grad()
def evaluate(model: nn.Module, data: InMemory | Folder, device: torch.device, batch_size: int = 256,
             ranks: Ranks = SINGLE) -> float:
    """Top-1 accuracy in [0, 1], in eval mode, in a fixed order (so equal weights give equal
    accuracy, bit for bit). Over several ``ranks`` each counts its slice of every batch and the
    counts are summed: every example once."""
    model.to(device).eval()
    dtype, _ = mixed_precision(device)
    correct = torch.zeros((), dtype=torch.long, device=device)  # counted on the device: one sync
    total = 0
    for x, y, whole in _slices(data, batch_size, device, None, ranks):
        if len(y):
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                correct += (model(x).argmax(1) == y).sum()
        total += whole
    return int(ranks.sum_(correct)) / max(total, 1)
