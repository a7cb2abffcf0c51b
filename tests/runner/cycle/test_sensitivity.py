"""The sensitivity table on a real trained model: batched evaluation, file-exact prices, cache."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from dcsweep.compression import KMeansShare, MagnitudePrune, prune_, save_compressed, share_weights_
from dcsweep.compression.layers import compressible_layers
from dcsweep.runner.cycle import run as cycle_run
from dcsweep.runner.cycle.run import sensitivity_table, train_baseline
from dcsweep.runner.cycle.sensitivity import Table, measure
from dcsweep.runner.cycle.train import evaluate
from dcsweep.runner.sweep.stages import StageStore

SETTINGS = {"model": "lenet300", "dataset": "digits", "epochs": 4}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dense") / "dense.dcz"
    train_baseline(SETTINGS, path)
    return path


@pytest.fixture(scope="module")
def table(dense: Path) -> tuple[Table, torch.nn.Module, object]:
    cycle = cycle_run._Cycle(cycle_run.CycleConfig.from_dict({**SETTINGS, "dense_path": str(dense), "epochs": 0}),
                             cycle_run.CycleCallbacks(), False)
    cycle.dense(torch.Generator())
    return measure(cycle.model, cycle.data.validation, CPU, (0.0, 0.5, 0.9), (4, 32)), cycle.model, cycle.data


def _variant(model: torch.nn.Module, layer: str, sparsity: float, k: int) -> torch.nn.Module:
    """The model with ``layer`` alone pruned and shared as the table says."""
    out = copy.deepcopy(model)
    module = dict(compressible_layers(out))[layer]
    prune_(module, MagnitudePrune(sparsity=sparsity))
    share_weights_(module, KMeansShare(k=k))
    return out


def test_each_layer_gets_a_row_per_sparsity_and_k(table) -> None:
    tab, model, _ = table
    assert [name for name, _ in tab.layers] == [name for name, _ in compressible_layers(model)]
    for _, rows in tab.layers:
        assert [(r.sparsity, r.k) for r in rows] == [(s, k) for s in (0.0, 0.5, 0.9) for k in (4, 32)]
        by = {(r.sparsity, r.k): r for r in rows}
        assert by[0.9, 4].bytes < by[0.5, 4].bytes <= by[0.0, 4].bytes  # sparser codes smaller (at 0.5 a gap
        # codes in 2 bits, what a kept weight saves)
        assert by[0.5, 4].bytes < by[0.5, 32].bytes  # so do fewer clusters
    assert 0.5 < tab.dense_val_accuracy <= 1.0


def test_batched_accuracies_equal_evaluating_each_variant_alone(table) -> None:
    tab, model, data = table
    for layer, rows in tab.layers[:2]:
        for row in rows[::2]:
            alone = evaluate(_variant(model, layer, row.sparsity, row.k), data.validation, CPU)
            assert row.val_accuracy == pytest.approx(alone, abs=1e-12)


def test_a_rows_bytes_are_what_the_file_stores_for_that_layer(table, tmp_path: Path) -> None:
    tab, model, _ = table
    layer, rows = tab.layers[0]
    row = rows[3]
    dense_file = save_compressed(model, tmp_path / "dense.dcz")
    report = save_compressed(_variant(model, layer, row.sparsity, row.k), tmp_path / "one.dcz")
    sizes = {r.name: r.bytes for r in report.layers}
    assert sizes[f"{layer}.weight"] == row.bytes
    # and everything else is what the table calls fixed, up to the header's record of the layer
    rest = report.total_bytes - row.bytes - sum(r.bytes for r in report.layers if r.name.endswith(".weight")
                                                 and r.name != f"{layer}.weight")
    assert abs(rest - tab.fixed_bytes) < 64 and dense_file.total_bytes > report.total_bytes


def test_the_table_is_kept_and_a_different_dense_model_recomputes(dense: Path, tmp_path: Path) -> None:
    store = StageStore(tmp_path / "store")
    first, cached = sensitivity_table({**SETTINGS, "dense_path": str(dense), "epochs": 0}, stages=store, ks=(4,))
    assert not cached
    again, cached = sensitivity_table({**SETTINGS, "dense_path": str(dense), "epochs": 0}, stages=store, ks=(4,))
    assert cached and again == first
    other = tmp_path / "other.dcz"
    train_baseline({**SETTINGS, "seed": 1}, other)
    _, cached = sensitivity_table({**SETTINGS, "dense_path": str(other), "epochs": 0}, stages=store, ks=(4,))
    assert not cached  # another dense model: another table
    _, cached = sensitivity_table({**SETTINGS, "dense_path": str(dense), "epochs": 0}, stages=store, ks=(4, 8))
    assert not cached  # another grid: another table
    trained, cached = sensitivity_table({**SETTINGS, "epochs": 2}, stages=store, ks=(4,))
    assert not cached and len(store.storage.folders("stages", "dense")) == 1  # its dense stage trained once
    assert sensitivity_table({**SETTINGS, "epochs": 2}, stages=store, ks=(4,)) == (trained, True)


def test_a_retrained_table_prices_what_retraining_recovers(dense: Path, tmp_path: Path) -> None:
    """With table_retrain_epochs each pruned layer's model is retrained before it is measured:
    at 95% sparsity the large first layer loses much less than without, and it is another table."""
    store = StageStore(tmp_path / "store")
    settings = {**SETTINGS, "dense_path": str(dense), "epochs": 0}
    plain, _ = sensitivity_table(settings, stages=store, sparsities=(0.95,), ks=(16,))
    # on this 4-epoch model, the cycle's own retraining rate (2 x lr) rather than the default lr / 10
    retrained, cached = sensitivity_table({**settings, "table_retrain_epochs": 2, "table_retrain_lr": 0.002},
                                          stages=store,
                                          sparsities=(0.95,), ks=(16,))
    assert not cached
    (_, (before,)), (_, (after,)) = plain.layers[0], retrained.layers[0]
    assert after.val_loss < before.val_loss and after.val_accuracy >= before.val_accuracy
    assert abs(after.bytes - before.bytes) < 0.1 * before.bytes  # the same mask size, retrained values
    # the retraining's rate is part of what the table is kept under
    faster, cached = sensitivity_table({**settings, "table_retrain_epochs": 2, "table_retrain_lr": 0.05},
                                       stages=store, sparsities=(0.95,), ks=(16,))
    assert not cached and faster.layers[0][1][0] != after
