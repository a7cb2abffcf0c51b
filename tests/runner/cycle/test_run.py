"""The whole cycle on real data (digits), its checkpoints, and resuming from them."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from dcsweep.compression import load_compressed, save_compressed, size_report
from dcsweep.runner.cycle import FINAL, STEPS, ConfigError, CycleCallbacks, CycleResult, Report, run_cycle

FAST = {"epochs": 15, "prune_steps": 2, "prune_epochs": 5, "share_epochs": 3}


class Recorder(CycleCallbacks):
    def __init__(self, keep: Path) -> None:
        self.keep, self.phases, self.epochs = keep, [], []

    def on_phase_end(self, phase: str, checkpoint_dir: Path | None, result: CycleResult) -> None:
        self.phases.append((phase, dict(result.accuracy)))
        if checkpoint_dir is not None:
            shutil.copytree(checkpoint_dir, self.keep / phase)

    def on_epoch(self, phase: str, epoch: int, loss: float) -> None:
        self.epochs.append((phase, epoch))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Recorder, Path]:
    folder = tmp_path_factory.mktemp("cycle")
    recorder = Recorder(folder)
    result = run_cycle(FAST, output=folder / "m.dcz", callbacks=recorder, plots=folder / "plots").to_json()
    return result, recorder, folder


def test_cycle_compresses_digits(full_run) -> None:
    result, _, folder = full_run
    acc = result["accuracy"]
    assert acc["dense"] > 0.9
    assert acc["shared"] >= acc["dense"] - 0.05
    assert acc["decoded"] == acc["shared"]  # exactly: the file holds the shared weights bit for bit
    assert result["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert result["compressed_bytes"] == (folder / "m.dcz").stat().st_size
    assert result["dense_bytes"] == 4 * 50_610
    assert result["ratio"] > 15
    assert set(result["compressed_bytes_by_coder"]) == {"huffman", "ans"}
    assert {row["name"] for row in result["layers"]} >= {"fc1.weight", "fc1.bias", "fc3.weight"}
    assert set(result["seconds"]) == {"dense", "pruned", "shared", "encoded", "plots", "total"}
    assert result["seconds"]["total"] == pytest.approx(sum(v for k, v in result["seconds"].items() if k != "total"))
    json.dumps(result)  # the compress JSON is plain JSON


def test_cycle_writes_plots(full_run) -> None:
    _, _, folder = full_run
    names = sorted(p.name for p in (folder / "plots").iterdir())
    assert names == ["bytes_per_layer.png", "weights_fc1.png", "weights_fc2.png", "weights_fc3.png"]
    assert all((folder / "plots" / n).read_bytes()[:4] == b"\x89PNG" for n in names)


def test_callbacks_see_every_phase(full_run) -> None:
    result, recorder, folder = full_run
    assert [p for p, _ in recorder.phases] == ["dense", "pruned", "shared"]
    assert ("dense", 14) in recorder.epochs and ("pruned", 9) in recorder.epochs
    shared = load_compressed(folder / "shared" / "model.dcz")
    assert size_report(folder / "shared" / "model.dcz").layers[1].kind == "shared"
    assert shared is not None


@pytest.mark.parametrize("phase", ["dense", "pruned", "shared"])
def test_resume_after_a_phase_gives_the_same_result(full_run, phase: str, tmp_path: Path) -> None:
    result, _, folder = full_run
    resumed = run_cycle(FAST, output=tmp_path / "r.dcz", resume_from=folder / phase).to_json()
    assert resumed["accuracy"] == result["accuracy"]
    assert (tmp_path / "r.dcz").read_bytes() == (folder / "m.dcz").read_bytes()
    for done in ("dense", "pruned", "shared")[: ("dense", "pruned", "shared").index(phase) + 1]:
        assert resumed["seconds"][done] == result["seconds"][done]  # carried over, not redone


def test_resume_with_other_settings_is_refused(full_run) -> None:
    _, _, folder = full_run
    with pytest.raises(ConfigError, match=r"was made with other settings \(differ: \['k'\]\)"):
        run_cycle({**FAST, "k": 8}, resume_from=folder / "pruned")
    with pytest.raises(ConfigError, match="is not a cycle checkpoint"):
        run_cycle(FAST, resume_from=folder / "plots")


@pytest.mark.parametrize("suffix", [".dcz", ".pt"])
def test_start_from_a_trained_dense_model(full_run, tmp_path: Path, suffix: str) -> None:
    result, _, folder = full_run
    dense = load_compressed(folder / "dense" / "model.dcz")
    path = tmp_path / f"dense{suffix}"
    if suffix == ".pt":
        torch.save(dense.state_dict(), path)
    else:
        shutil.copy(folder / "dense" / "model.dcz", path)
    again = run_cycle({**FAST, "dense_path": str(path), "epochs": 0}, output=tmp_path / "m.dcz").to_json()
    assert again["accuracy"]["dense"] == result["accuracy"]["dense"]


def test_quality_rule_cycle(tmp_path: Path) -> None:
    result = run_cycle({**FAST, "quality": 0.8, "coder": "ans", "index_bits": 4}, output=tmp_path / "q.dcz").to_json()
    assert 0.3 < result["sparsity"] < 0.99
    assert result["accuracy"]["decoded"] == result["accuracy"]["shared"]
    assert {row["index_bits"] for row in result["layers"] if row["kind"] == "shared"} == {4}


def test_the_result_schema_round_trips_and_names_each_number_once(full_run) -> None:
    result, _, _ = full_run
    assert CycleResult.from_json(result).to_json() == result
    metrics = CycleResult.from_json(result).metrics(FINAL)
    assert metrics["accuracy"] == result["accuracy"]["decoded"]
    assert metrics["compression_ratio"] == result["ratio"] and "ratio" not in metrics  # MLflow's name
    report = Report.from_metrics(metrics)
    assert report.step == STEPS[FINAL] == 3 and report.ratio == result["ratio"]
    # every number is logged; the stage keys and flags become tags
    assert set(report.numbers) == {k for k in metrics if k != "phase" and not k.startswith(("stage_", "reused_"))}
    assert report.stages == {p: (s["key"], s["reused"]) for p, s in result["stages"].items()}
    assert set(report.stages) == {"dense", "pruned", "shared"}


def test_without_output_nothing_is_left_in_the_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    result = run_cycle({**FAST, "epochs": 2, "prune_steps": 1, "prune_epochs": 1, "share_epochs": 1})
    assert result.encoded is not None and result.encoded.path is None and result.encoded.compressed_bytes > 0
    assert list(temp.iterdir()) == []

    class Failing(CycleCallbacks):
        def on_phase_end(self, phase: str, checkpoint_dir: Path | None, result: CycleResult) -> None:
            if phase == "pruned":
                raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        run_cycle({**FAST, "epochs": 2, "prune_steps": 1, "prune_epochs": 1}, callbacks=Failing())
    assert list(temp.iterdir()) == []  # a cycle that fails leaves nothing behind either


def test_a_resume_checks_the_dense_models_content_not_its_path(full_run, tmp_path: Path) -> None:
    _, _, folder = full_run
    first, second, other = tmp_path / "a.dcz", tmp_path / "b.dcz", tmp_path / "c.dcz"
    shutil.copy(folder / "dense" / "model.dcz", first)
    shutil.copy(folder / "dense" / "model.dcz", second)
    keep = tmp_path / "keep"
    run_cycle({**FAST, "dense_path": str(first), "epochs": 0}, output=tmp_path / "x.dcz", callbacks=Recorder(keep))
    moved = run_cycle({**FAST, "dense_path": str(second), "epochs": 0}, output=tmp_path / "y.dcz",
                      resume_from=keep / "pruned")
    assert (tmp_path / "y.dcz").read_bytes() == (tmp_path / "x.dcz").read_bytes() and moved.encoded is not None
    model = load_compressed(first)
    next(model.parameters()).data.add_(1.0)  # another dense model at a path the checkpoint never saw
    save_compressed(model, other)
    with pytest.raises(ConfigError, match=r"differ: \['dense_path \(its content\)'\]"):
        run_cycle({**FAST, "dense_path": str(other), "epochs": 0}, resume_from=keep / "pruned")


def test_a_layer_rule_that_matches_no_layer_is_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"layers=\{'fc9': 0.5\} is not allowed: .*\['fc9'\] match no layer of the "
                                          r"model; its layers are \['fc1', 'fc2', 'fc3'\]"):
        run_cycle({**FAST, "layers": {"fc9": 0.5}, "epochs": 10_000})  # would take hours if it trained


@pytest.mark.parametrize("seed", range(5))
def test_figures_draw_any_sizes_and_values(seed: int, tmp_path: Path) -> None:
    """Bars of fractional pixels, empty and constant tensors, huge counts: every figure draws."""
    import numpy as np
    import torch

    from dcsweep.compression import LayerSize, SizeReport
    from dcsweep.runner.cycle.plots import write_plots

    rng = np.random.default_rng(seed)
    layers = tuple(LayerSize(f"l{i}.weight", "shared", (8, 8), 10, 4, 3, *map(int, rng.integers(0, 1000, 5)))
                   for i in range(6))
    # 106 then 6 bytes at 0.1 px a byte: a 0.6-pixel bar that starts past a pixel's middle
    sliver = LayerSize("sliver.weight", "shared", (8, 8), 10, 4, 3, 106, 6, 0, 0, 5088)
    report = SizeReport((*layers, sliver), "huffman", 40, 4096, ())
    values = [torch.randn(1000), torch.zeros(0), torch.full((50,), 0.25), torch.randn(200_000) * 1e-6]
    snapshots = {p: {f"l{i}": values[(i + k) % len(values)] for i in range(4)}
                 for k, p in enumerate(("dense", "pruned", "final"))}
    written = write_plots(tmp_path, snapshots, report)
    assert len(written) == 5 and all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
