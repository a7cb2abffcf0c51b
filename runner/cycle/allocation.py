"""Per-layer allocation: each layer's sparsity and k, chosen from a sensitivity table to meet a
size target at the best predicted validation accuracy.

The predicted accuracy of a choice is the dense validation accuracy minus the sum of each
layer's own drop in the table (drops measured one layer at a time, without retraining; the
cycle's retraining then recovers most of them, so the prediction ranks choices, it does not
promise a number). Its size is the table's fixed bytes plus each chosen row's coded bytes.
What the search minimises is that drop plus ``LOSS_WEIGHT`` times the rise in validation loss:
on a split of a few hundred images one image is a quarter point, so many rows tie on accuracy;
the loss, which moves smoothly and adds up across layers, breaks those ties toward the rows
that hurt least.

Why an exact multiple-choice knapsack rather than AIMET's greedy equal-accuracy search or a
Lagrangian sweep: both only reach choices on the convex hull of each layer's (bytes, drop)
curve, and a layer's curve is rarely convex (a conv layer loses nothing until 80% and then a
lot). The knapsack runs as a dynamic programme over the byte budget in ``UNITS`` steps with
every row's bytes rounded *up* to whole steps, so a choice it accepts never exceeds the budget
in the table's prices; it costs layers x rows x ``UNITS`` additions, milliseconds for VGG-16.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .config import ConfigError
from .sensitivity import Row, Table

#: Steps of the byte budget in the dynamic programme.
UNITS = 4096
#: Share of a byte budget left free for what retraining does to the coded sizes: the masks and
#: codebook sizes are the allocation's, but retrained weights cluster and code a little
#: differently (0.3-0.7% larger on LeNet-5 at ratios 30-60; bench/allocation.py prints it).
RETRAIN_MARGIN = 0.02
#: Weight of the validation loss's rise beside the accuracy drop in what the search minimises.
LOSS_WEIGHT = 0.1


@dataclass(frozen=True)
class Allocation:
    """One row per layer, with what the table predicts for the whole model."""

    choice: tuple[tuple[str, Row], ...]
    predicted_bytes: int
    predicted_val_accuracy: float
    budget_bytes: int | None

    @property
    def sparsity(self) -> dict[str, float]:
        return {name: row.sparsity for name, row in self.choice}

    @property
    def k(self) -> dict[str, int]:
        return {name: row.k for name, row in self.choice}

    def to_json(self) -> dict[str, Any]:
        """``{layer: {"sparsity", "k"}}``, the compress JSON's ``allocation``."""
        return {name: {"sparsity": row.sparsity, "k": row.k} for name, row in self.choice}


def allocate(table: Table, *, budget_bytes: int | None = None, max_drop: float | None = None) -> Allocation:
    """The best predicted validation accuracy within ``budget_bytes``, or the fewest bytes whose
    predicted validation accuracy is at most ``max_drop`` (a fraction, 0.005 = half a point)
    below the dense model's. Exactly one of the two. Raises ConfigError when no choice meets it."""
    if (budget_bytes is None) == (max_drop is None):
        raise ConfigError("allocation needs a byte budget (or ratio) or a maximum accuracy drop, not both")
    names = [name for name, _ in table.layers]
    rows = [rows for _, rows in table.layers]
    smallest = smallest_bytes(table)
    if budget_bytes is not None and budget_bytes < smallest:
        raise ConfigError(f"a budget of {budget_bytes:,} B (target_ratio {table.dense_bytes / budget_bytes:.1f}) is "
                          f"not reachable: the smallest allocation in the sensitivity table takes {smallest:,} B; "
                          f"allowed: target_ratio <= {table.dense_bytes / smallest:.1f}")
    largest = table.fixed_bytes + sum(max(r.bytes for r in layer) for layer in rows)
    capacity = (budget_bytes if budget_bytes is not None else largest) - table.fixed_bytes
    unit = max(capacity / UNITS, 1.0)
    costs, picks = _knapsack(rows, table, unit, int(capacity // unit))
    if max_drop is None:
        choice = _trace(picks, rows, len(costs) - 1, unit)
    else:  # the smallest budget whose best choice is predicted within max_drop
        choice = next((c for u in range(len(costs)) if np.isfinite(costs[u])
                       and _drop(c := _trace(picks, rows, u, unit), table) <= max_drop + 1e-12), [])
        if not choice:
            least = _drop(_trace(picks, rows, len(costs) - 1, unit), table)
            raise ConfigError(f"max_drop={100 * max_drop:g} points is not reachable: the least predicted drop "
                              f"in the sensitivity table is {100 * least:.2f} points")
    chosen = tuple(zip(names, choice, strict=True))
    size = table.fixed_bytes + sum(r.bytes for r in choice)
    return Allocation(chosen, size, table.dense_val_accuracy - _drop(choice, table), budget_bytes)


def fit_budget(table: Table, *, budget_bytes: int | None, max_drop: float | None,
               price: Callable[[Allocation], int]) -> tuple[Allocation, int]:
    """:func:`allocate`, with the choice priced by the file it writes (``price``); while that
    exceeds the budget less ``RETRAIN_MARGIN`` (the file's header grows with what it records),
    allocate again for that less the excess. Returns the allocation and its priced bytes."""
    if budget_bytes is None:
        allocation = allocate(table, max_drop=max_drop)
        return allocation, price(allocation)
    aim = int(budget_bytes * (1 - RETRAIN_MARGIN))
    if aim < smallest_bytes(table):
        reach = table.dense_bytes * (1 - RETRAIN_MARGIN) / smallest_bytes(table)
        raise ConfigError(f"target_ratio={table.dense_bytes / budget_bytes:.1f} is not reachable from the sensitivity "
                          f"table: its smallest choice takes {smallest_bytes(table):,} B (with the "
                          f"{100 * RETRAIN_MARGIN:g}% kept for retraining); allowed: target_ratio <= {reach:.1f}")
    target = aim
    for _ in range(8):
        allocation = allocate(table, budget_bytes=target)
        priced = price(allocation)
        if priced <= aim:
            return replace(allocation, budget_bytes=budget_bytes), priced
        target -= priced - aim
    raise ConfigError(f"no allocation from the sensitivity table fits {budget_bytes:,} B once written "
                      f"(the last took {priced:,} B)")


def _drop(choice: list[Row], table: Table) -> float:
    """The predicted validation accuracy drop of one row per layer: the sum of their own."""
    return sum(max(table.dense_val_accuracy - r.val_accuracy, 0.0) for r in choice)


def smallest_bytes(table: Table) -> int:
    """The size of the smallest choice the table offers."""
    return table.fixed_bytes + sum(min(r.bytes for r in rows) for _, rows in table.layers)


def _weight(row: Row, unit: float) -> int:
    return math.ceil(row.bytes / unit - 1e-9)


def _cost(row: Row, table: Table) -> float:
    return (max(table.dense_val_accuracy - row.val_accuracy, 0.0)
            + LOSS_WEIGHT * max(row.val_loss - table.dense_val_loss, 0.0))


def _knapsack(rows: list[tuple[Row, ...]], table: Table, unit: float, units: int) -> tuple[np.ndarray, list]:
    """best[u]: the least total cost with every layer's row chosen in at most u steps of bytes;
    picks[layer][u]: the row that layer takes on that best path."""
    best = np.zeros(units + 1)  # no layer yet: nothing dropped at any budget
    picks = []
    for layer in rows:
        new = np.full(units + 1, np.inf)
        pick = np.full(units + 1, -1, dtype=np.int64)
        for i, row in enumerate(layer):
            w = _weight(row, unit)
            if w > units:
                continue
            candidate = np.full(units + 1, np.inf)
            candidate[w:] = best[: units + 1 - w] + _cost(row, table)
            better = candidate < new
            new[better], pick[better] = candidate[better], i
        best = new
        picks.append(pick)
    return best, picks


def _trace(picks: list[np.ndarray], rows: list[tuple[Row, ...]], units: int, unit: float) -> list[Row]:
    if not math.isfinite(float(units)) or picks[-1][units] < 0:
        raise ConfigError("no allocation in the sensitivity table fits the budget")
    choice = []
    for layer, pick in zip(reversed(rows), reversed(picks), strict=True):
        row = layer[int(pick[units])]
        choice.append(row)
        units -= _weight(row, unit)
    return choice[::-1]
