"""Training and evaluation: device choice, optimizers, cosine schedule, mixed precision."""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .datasets import Folder, InMemory

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
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is available; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device='mps' was asked for but MPS is not available; use --device auto or cpu")
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
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total = label, total
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.perf_counter()

    def update(self, done: int, loss: float) -> None:
        if self.enabled:
            width = 24
            filled = int(width * done / max(self.total, 1))
            sys.stderr.write(f"\r{self.label:<18} [{'#' * filled}{'.' * (width - filled)}] "
                             f"{done}/{self.total} loss {loss:.4f} {time.perf_counter() - self.start:5.1f}s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def fit(model: nn.Module, data: InMemory | Folder, schedule: Schedule, device: torch.device,
        generator: torch.Generator, label: str = "train", progress: bool = True,
        on_epoch: Callable[[int, float], None] | None = None) -> float:
    """Train ``model`` in place; returns the last epoch's mean loss. Raises DivergedError."""
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
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    bar = _Progress(label, schedule.epochs, progress)
    loss_value = float("nan")
    model.to(device).train()
    for epoch in range(schedule.epochs):
        total, count = 0.0, 0
        for x, y in data.batches(schedule.batch_size, device, generator):
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = nn.functional.cross_entropy(model(x), y)
            if not torch.isfinite(loss):
                bar.close()
                raise DivergedError(f"{label}: loss became {loss.item()} in epoch {epoch + 1}; lower the "
                                    f"learning rate (lr={schedule.lr:g})")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += loss.item() * len(y)
            count += len(y)
        loss_value = total / max(count, 1)
        bar.update(epoch + 1, loss_value)
        if on_epoch is not None:
            on_epoch(epoch, loss_value)
    bar.close()
    log.info("%s: %d epochs, final loss %.4f", label, schedule.epochs, loss_value)
    return loss_value


@torch.no_grad()
def evaluate(model: nn.Module, data: InMemory | Folder, device: torch.device, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1], in eval mode, in a fixed order (so equal weights give equal
    accuracy, bit for bit)."""
    model.to(device).eval()
    correct = total = 0
    for x, y in data.batches(batch_size, device, None):
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)
