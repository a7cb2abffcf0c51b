"""The ranks a cycle computes on: one process (:data:`SINGLE`, the null object) or the N
processes of a ``torch.distributed`` group (a multi-worker trial's Ray Train workers).

Every rank runs the whole cycle on the same seed, so all ranks draw the same global batches in
the same order; each computes the loss of its own slice of every global batch and the gradients
are summed over the ranks, which gives each step the gradient of the whole global batch, as one
process would (only the order of float additions differs). Rank 0 alone reads and writes the
stage store and the files; whatever it decides (a stage found, its figures) and every tensor of
the model after each phase (weights, masks, codebooks, indices) are broadcast from it, so all
ranks hold bit-identical models however the ops of a device order their sums. An evaluation
counts each rank's slice of the split once and sums the counts: the whole split, exactly once.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
import torch.nn as nn

from .stages import Found, StageRecord, Stages


class Ranks(Protocol):
    """What the cycle asks of the processes it runs on."""

    @property
    def rank(self) -> int: ...

    @property
    def world(self) -> int: ...

    def part(self, n: int) -> slice:
        """This rank's contiguous slice of a global batch of ``n`` examples."""

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place; returned."""

    def sum_gradients(self, model: nn.Module) -> None:
        """Each trainable parameter's gradient summed over the ranks."""

    def share(self, model: nn.Module) -> None:
        """Every tensor of ``model`` (parameters and buffers) made rank 0's."""

    def decide(self, value: Any) -> Any:
        """Rank 0's ``value`` (a small picklable object), on every rank."""


@dataclass(frozen=True)
class Single:
    """One process: every collective is the identity, and the cycle runs as it always did."""

    rank: int = 0
    world: int = 1

    def part(self, n: int) -> slice:
        return slice(0, n)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def sum_gradients(self, model: nn.Module) -> None:
        return None

    def share(self, model: nn.Module) -> None:
        return None

    def decide(self, value: Any) -> Any:
        return value


SINGLE = Single()


class Distributed:
    """The ranks of the default ``torch.distributed`` process group (gloo between CPU
    processes, NCCL between GPUs), already initialised by whoever started the processes."""

    def __init__(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("Distributed ranks need an initialised torch.distributed process group")
        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def part(self, n: int) -> slice:
        # ranks take ceil-sized slices in order; a short last batch leaves the last ranks less
        size = -(-n // self.world)
        return slice(min(n, self.rank * size), min(n, (self.rank + 1) * size))

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        self.dist.all_reduce(tensor, op=self.dist.ReduceOp.SUM)
        return tensor

    def sum_gradients(self, model: nn.Module) -> None:
        # one flat buffer: one collective a step, not one per parameter
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.sum_(flat)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def share(self, model: nn.Module) -> None:
        with torch.no_grad():
            for tensor in model.state_dict(keep_vars=True).values():
                data = tensor.data
                if data.dtype == torch.bool:  # gloo sends no bools: their bytes instead
                    data = data.view(torch.uint8)
                self.dist.broadcast(data, src=0)

    def decide(self, value: Any) -> Any:
        box = [value if self.rank == 0 else None]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]


def current_ranks() -> Ranks:
    """The ranks of this process: a Distributed group when one is initialised with more than
    one process, else SINGLE."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Distributed()
    return SINGLE


class RankedStages:
    """The stages of a cycle on several ranks: rank 0 alone claims, waits on and publishes
    stages in the store; what its claim found (the stage's checked record and files, or
    nothing) reaches every other rank, which then loads the same bytes. Every rank calls each
    method at the same point of the cycle (they are collectives)."""

    def __init__(self, stages: Stages, ranks: Ranks, workdir: Path | None = None) -> None:
        self.stages, self.ranks, self.workdir = stages, ranks, workdir

    @contextlib.contextmanager
    def claim(self, phase: str, key: str) -> Iterator[Found | None]:
        if self.ranks.rank == 0:
            with self.stages.claim(phase, key) as found:
                self.ranks.decide(None if found is None else (
                    found.record, {name: (found.folder / name).read_bytes() for name in found.record.files}))
                yield found
            return
        taken = self.ranks.decide(None)
        if taken is None:
            yield None
            return
        record, files = taken
        with tempfile.TemporaryDirectory(prefix="dcsweep-stage-", dir=self.workdir) as tmp:
            for name, data in files.items():  # plain names: rank 0's check of the record refuses others
                (Path(tmp) / name).write_bytes(data)
            yield Found(Path(tmp), record)

    def publish(self, phase: str, key: str, folder: Path, record: StageRecord) -> None:
        if self.ranks.rank == 0:
            self.stages.publish(phase, key, folder, record)

    def recomputed(self, phase: str, key: str) -> str | None:
        return cast(str | None, self.ranks.decide(self.stages.recomputed(phase, key) if self.ranks.rank == 0
                                                  else None))


def ranked(stages: Stages, ranks: Ranks, workdir: Path | None = None) -> Stages:
    """``stages`` as a cycle on ``ranks`` uses them: unchanged for one process."""
    return stages if ranks.world == 1 else RankedStages(stages, ranks, workdir)
