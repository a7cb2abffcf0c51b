"""The allocator: exact over the table, within its budget as the written file counts it."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch

from dcsweep.compression import KMeansShare, MagnitudePrune, prune_, save_compressed, share_weights_
from dcsweep.runner.cycle import ConfigError
from dcsweep.runner.cycle import run as cycle_run
from dcsweep.runner.cycle.allocation import LOSS_WEIGHT, RETRAIN_MARGIN, allocate, fit_budget
from dcsweep.runner.cycle.sensitivity import Row, Table


def _table(seed: int = 0, layers: int = 3) -> Table:
    """A table of made-up rows: drops and sizes that are not convex in each other."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(layers):
        rows = []
        for s, k in itertools.product((0.0, 0.5, 0.8, 0.9, 0.95), (4, 32)):
            size = int((1 - s) * 10_000 * (i + 1) * (2 if k == 4 else 5) / 8) + 40
            drop = float(torch.rand((), generator=gen)) * s ** 3 * (0.3 if k == 32 else 0.5)
            rows.append(Row(s, k, 0.95 - drop, size, 0.2 + drop))
        out.append((f"layer{i}", tuple(rows)))
    return Table(tuple(out), 0.95, 0.2, 400_000, 1_000, 1.0)


def _cost(table: Table, choice: tuple[Row, ...]) -> float:
    return sum(table.dense_val_accuracy - r.val_accuracy + LOSS_WEIGHT * (r.val_loss - table.dense_val_loss)
               for r in choice)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("budget", [4_000, 9_000, 20_000])
def test_the_knapsack_finds_the_best_choice_within_the_budget(seed: int, budget: int) -> None:
    table = _table(seed)
    got = allocate(table, budget_bytes=budget)
    fits = [c for c in itertools.product(*(rows for _, rows in table.layers))
            if table.fixed_bytes + sum(r.bytes for r in c) <= budget]
    best = min(_cost(table, c) for c in fits)
    chosen = tuple(row for _, row in got.choice)
    assert got.predicted_bytes == table.fixed_bytes + sum(r.bytes for r in chosen) <= budget
    # exact: no choice that fits costs less (the byte rounding of its 4,096 steps loses nothing here)
    assert _cost(table, chosen) <= best + 1e-9


def test_max_drop_takes_the_fewest_bytes_predicted_within_it() -> None:
    table = _table(1)
    got = allocate(table, max_drop=0.01)
    assert table.dense_val_accuracy - got.predicted_val_accuracy <= 0.01
    within = [c for c in itertools.product(*(rows for _, rows in table.layers))
              if sum(table.dense_val_accuracy - r.val_accuracy for r in c) <= 0.01]
    fewest = table.fixed_bytes + min(sum(r.bytes for r in c) for c in within)
    assert got.predicted_bytes <= fewest * 1.01


def test_targets_out_of_reach_are_refused_naming_what_is_allowed() -> None:
    table = _table()
    with pytest.raises(ConfigError, match=r"target_ratio 400\.0\) is not reachable.*allowed: target_ratio <="):
        allocate(table, budget_bytes=1_000)
    with pytest.raises(ConfigError, match="max_drop=-1 points is not reachable"):
        allocate(table, max_drop=-0.01)
    with pytest.raises(ConfigError, match="not both"):
        allocate(table, budget_bytes=9_000, max_drop=0.01)


@pytest.mark.parametrize("ratio", [15, 40])
def test_an_allocation_fits_its_budget_in_the_file_it_writes(ratio: float, tmp_path: Path) -> None:
    """LeNet-5 (conv and fc layers): the dense model pruned and shared as allocated, written as
    a .dcz, is within the budget less the margin kept for retraining."""
    cfg = cycle_run.CycleConfig.from_dict({"model": "lenet5", "dataset": "synthetic:1x28x28:10", "epochs": 1,
                                           "target_ratio": ratio})
    cycle = cycle_run._Cycle(cfg, cycle_run.CycleCallbacks(), False)
    cycle.dense(torch.Generator().manual_seed(0))
    dense = copy.deepcopy(cycle.model)
    cycle.allocate()
    chosen = cycle.result.allocation
    assert set(chosen) == {"features.0", "features.2", "fc1", "fc2"}
    model = copy.deepcopy(dense)
    prune_(model, MagnitudePrune(sparsity=0.0, layers={n: v["sparsity"] for n, v in chosen.items()}))
    share_weights_(model, KMeansShare(layers={n: v["k"] for n, v in chosen.items()}))
    written = save_compressed(model, tmp_path / "allocated.dcz")
    budget = cycle.result.allocation_predicted["budget_bytes"]
    assert written.total_bytes == (tmp_path / "allocated.dcz").stat().st_size
    assert written.total_bytes == cycle.result.allocation_predicted["bytes"]
    assert written.total_bytes <= budget * (1 - RETRAIN_MARGIN) and budget == int(written.dense_bytes / ratio)
    # the rest of the cycle runs with those rules
    assert cycle.cfg.layers == {n: v["sparsity"] for n, v in chosen.items()} and cycle.cfg.target_ratio is None


def test_a_ratio_the_table_cannot_reach_names_the_ratio_asked_and_the_largest_allowed() -> None:
    table = _table()
    with pytest.raises(ConfigError, match=r"target_ratio=300.1 is not reachable from the sensitivity table: .* "
                                          r"allowed: target_ratio <= \d+\.\d"):
        fit_budget(table, budget_bytes=table.dense_bytes // 300, max_drop=None, price=lambda a: a.predicted_bytes)
