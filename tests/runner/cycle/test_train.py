"""Training and evaluation on real data (scikit-learn's digits): divergence is caught within
CHECK_EVERY steps without a host sync each step, and evaluation counts like a plain loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dcsweep.runner.cycle import DivergedError, load_dataset
from dcsweep.runner.cycle.train import CHECK_EVERY, Schedule, evaluate, fit, mixed_precision, seed_everything

CPU = torch.device("cpu")


class _Counted:
    """A data source that counts the batches a caller takes from it."""

    def __init__(self, source) -> None:
        self.source, self.taken = source, 0

    def __len__(self) -> int:
        return len(self.source)

    def batches(self, batch_size, device, generator=None):
        for batch in self.source.batches(batch_size, device, generator):
            self.taken += 1
            yield batch


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_a_diverging_run_stops_within_check_every_steps_and_says_where() -> None:
    data = load_dataset("digits")
    train = _Counted(data.train)
    model = _mlp()
    with pytest.raises(DivergedError, match=r"loss became nan or infinite in epoch 1 \(step (\d+)\).*lr=1e\+12"):
        fit(model, train, Schedule(epochs=3, lr=1e12, optimizer="sgd", momentum=0.9, batch_size=8), CPU,
            seed_everything(0), progress=False)
    assert train.taken < len(data.train) // 8  # stopped inside the first epoch
    assert train.taken % CHECK_EVERY == 0  # at the first check after the loss went bad


def test_a_healthy_run_learns_and_reports_its_mean_loss() -> None:
    data = load_dataset("digits")
    model = _mlp()
    losses: list[float] = []
    last = fit(model, data.train, Schedule(epochs=3, lr=1e-2, batch_size=32), CPU, seed_everything(0),
               progress=False, on_epoch=lambda epoch, loss: losses.append(loss))
    assert len(losses) == 3 and losses[-1] == last and losses[-1] < losses[0] < 2.5
    assert evaluate(model, data.test, CPU) > 0.8


def test_evaluate_counts_like_a_plain_loop() -> None:
    data = load_dataset("digits")
    model = _mlp().eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in data.test.batches(100, CPU):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    assert evaluate(model, data.test, CPU, batch_size=37) == correct / total


def test_the_cpu_trains_in_float32() -> None:
    assert mixed_precision(CPU) == (None, False)


def test_in_memory_sets_are_gathered_on_the_host_for_the_cpu() -> None:
    train = load_dataset("digits").train
    images, labels = train.on(CPU)
    assert images is train.images and labels is train.labels
