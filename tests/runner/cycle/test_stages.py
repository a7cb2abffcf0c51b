"""Stage keys name exactly what a phase consumed; a cycle takes a stage another cycle computed
with the same key and gets bit-identical weights and the same result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dcsweep.compression import load_compressed
from dcsweep.runner.cycle import ConfigError, CycleConfig, run_cycle
from dcsweep.runner.cycle.stages import CONSUMES, ladder_keys, stage_keys
from dcsweep.runner.sweep.stages import StageStore

FAST = {"epochs": 6, "prune_steps": 2, "prune_epochs": 3, "share_epochs": 2}


def digits_id() -> str:
    """The fingerprint a cycle keys digits by."""
    from dcsweep.runner.cycle import load_dataset
    from dcsweep.runner.cycle.fingerprint import fingerprint

    return fingerprint(load_dataset("digits"))


def keys(**settings: object) -> dict[str, str]:
    return stage_keys(CycleConfig.from_dict({**FAST, **settings}))


def test_every_key_changes_with_what_the_stage_code_does_not_with_its_comments(tmp_path: Path, monkeypatch) -> None:
    """The package version stays 0.1.0 while a checkout changes; the code's digest does not. A
    comment or docstring edit (a patch release, a reformat) keeps every stage; an expression
    edit recomputes them all."""
    import shutil

    import dcsweep.runner.cycle.stages as stages

    before = keys()
    assert stages.code_digest() == stages.code_digest.__wrapped__()  # cached, and stable
    copy = tmp_path / "cycle"
    shutil.copytree(Path(stages.__file__).parent, copy)
    monkeypatch.setattr(stages, "__file__", str(copy / "stages.py"))  # the digest reads this folder
    train = (copy / "train.py").read_text()
    (copy / "train.py").write_text(train.replace('"""', '"""Reworded. ', 1) + "\n# one changed line\n")
    assert stages.code_digest.__wrapped__() == stages.code_digest()
    assert "momentum=" in train
    (copy / "train.py").write_text(train.replace("momentum=", "momentum=0.5 * ", 1))
    changed = stages.code_digest.__wrapped__()
    assert changed != stages.code_digest()
    monkeypatch.setattr(stages, "code_digest", lambda: changed)
    after = keys()
    assert all(before[phase] != after[phase] for phase in before)


def test_a_syntax_digest_ignores_docstrings_and_comments_only() -> None:
    from dcsweep.runner.cycle.stages import syntax_digest

    base = syntax_digest(b'"""Module."""\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    assert syntax_digest(b'def f(x):  # why\n    return x + 1\n') == base
    assert syntax_digest(b'"""Other."""\ndef f(x):\n    return (x +\n            1)\n') == base
    assert syntax_digest(b'def f(x):\n    return x + 2\n') != base
    assert syntax_digest(b'def f(x):\n    "not first"\n    return x + 1\n') == base  # the docstring slot


@pytest.mark.parametrize(("setting", "value", "changed"), [
    ("k", 4, {"shared"}),
    ("init", "density", {"shared"}),
    ("share_epochs", 5, {"shared"}),
    ("sparsity", 0.8, {"pruned", "shared"}),
    ("prune_epochs", 4, {"pruned", "shared"}),
    ("prune_lr", 0.01, {"pruned", "shared"}),
    ("layers", {"fc1": 0.5}, {"pruned", "shared"}),
    ("epochs", 7, {"dense", "pruned", "shared"}),
    ("seed", 1, {"dense", "pruned", "shared"}),
    ("coder", "ans", set()),  # the file's coder changes no trained weight
    ("index_bits", 4, set()),
])
def test_a_key_changes_with_what_its_phase_consumed_and_after(setting: str, value: object, changed: set) -> None:
    before, after = keys(), keys(**{setting: value})
    assert {phase for phase in before if before[phase] != after[phase]} == changed


def test_the_learning_rate_is_keyed_as_used() -> None:
    """prune_lr unset means 2 x lr: the same rate written two ways is the same stage."""
    assert keys(prune_lr=0.002)["pruned"] == keys()["pruned"]
    assert keys(lr=0.01)["pruned"] != keys()["pruned"]


def test_every_cycle_setting_is_consumed_by_some_phase_or_changes_no_weight() -> None:
    consumed = {name for names in CONSUMES.values() for name in names}
    unconsumed = set(CycleConfig().to_dict()) - consumed
    # prune_lr/share_lr are keyed as the rates used; a ladder's rungs through the chain of keys;
    # an allocation's target and grid through the per-layer rules it becomes (layers, k_layers);
    # a start's weights (dense_path, pretrained) through their sha256
    assert unconsumed == {"download", "coder", "index_bits", "dense_path", "prune_lr", "share_lr", "ladder",
                          "target_ratio", "max_drop", "table_sparsities", "table_ks", "table_retrain_epochs",
                          "table_retrain_lr", "pretrained"}


def test_a_dense_file_is_keyed_by_its_content() -> None:
    cfg = CycleConfig.from_dict({**FAST, "dense_path": "m.dcz", "epochs": 0})
    a, b = stage_keys(cfg, "0" * 64), stage_keys(cfg, "1" * 64)
    assert a["dense"] != b["dense"] and a["pruned"] != b["pruned"]
    assert stage_keys(CycleConfig.from_dict({**FAST, "dense_path": "m.dcz", "epochs": 0, "lr": 0.5}),
                      "0" * 64)["dense"] == a["dense"]  # the file, not its recipe
    tuned = CycleConfig.from_dict({**FAST, "dense_path": "m.dcz", "epochs": 2})
    assert stage_keys(tuned, "0" * 64)["dense"] != a["dense"]  # fine-tuned: a stage of its own
    retuned = CycleConfig.from_dict({**FAST, "dense_path": "m.dcz", "epochs": 2, "lr": 0.5})
    assert stage_keys(tuned, "0" * 64)["dense"] != stage_keys(retuned, "0" * 64)["dense"]


def test_a_pretrained_start_is_keyed_by_the_weights_and_what_its_dense_phase_reads() -> None:
    start = {**FAST, "model": "resnet18", "dataset": "cifar10", "pretrained": True, "epochs": 0}
    a = stage_keys(CycleConfig.from_dict(start), "0" * 64)
    assert stage_keys(CycleConfig.from_dict(start), "1" * 64)["dense"] != a["dense"]
    # evaluated as they are: the training's settings do not matter, the data and seed do
    assert stage_keys(CycleConfig.from_dict({**start, "lr": 0.5, "batch_size": 8}), "0" * 64)["dense"] == a["dense"]
    assert stage_keys(CycleConfig.from_dict({**start, "seed": 1}), "0" * 64)["dense"] != a["dense"]
    assert stage_keys(CycleConfig.from_dict({**start, "dataset": "mnist"}), "0" * 64)["dense"] != a["dense"]
    tuned = stage_keys(CycleConfig.from_dict({**start, "epochs": 1}), "0" * 64)
    retuned = stage_keys(CycleConfig.from_dict({**start, "epochs": 1, "lr": 0.5}), "0" * 64)
    assert len({a["dense"], tuned["dense"], retuned["dense"]}) == 3


def test_a_second_cycle_takes_both_stages_and_matches_the_first_bit_for_bit(tmp_path: Path) -> None:
    store = StageStore(tmp_path / "store")
    first = run_cycle({**FAST, "k": 8}, stages=store, output=tmp_path / "a.dcz")
    second = run_cycle({**FAST, "k": 8, "coder": "ans"}, stages=store, output=tmp_path / "b.dcz")
    assert {p: s["reused"] for p, s in first.stages.items()} == {"dense": False, "pruned": False, "shared": False}
    assert {p: s["reused"] for p, s in second.stages.items()} == {"dense": True, "pruned": True, "shared": True}
    assert {p: s["key"] for p, s in first.stages.items()} == {p: s["key"] for p, s in second.stages.items()}
    assert first.accuracy == second.accuracy and first.encoded is not None and second.encoded is not None
    model_a, model_b = (load_compressed(tmp_path / n) for n in ("a.dcz", "b.dcz"))
    for (name, x), (_, y) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    # a third with another k takes the pruned stage only; another prune setting recomputes it
    third = run_cycle({**FAST, "k": 4}, stages=store)
    assert [third.stages[p]["reused"] for p in ("dense", "pruned", "shared")] == [True, True, False]
    fourth = run_cycle({**FAST, "k": 4, "prune_epochs": 4}, stages=store)
    assert [fourth.stages[p]["reused"] for p in ("dense", "pruned", "shared")] == [True, False, False]
    record = json.loads((tmp_path / "store" / "stages" / "pruned" / first.stages["pruned"]["key"] /
                         "stage.json").read_text())
    assert record["accuracy"] == first.accuracy["pruned"] and record["seconds"] > 0
    # the result says how long the stage took to compute: what its reuse saved
    assert second.metrics("final")["seconds_saved_pruned"] == pytest.approx(record["seconds"])
    assert second.metrics("final")["stage_pruned"] == first.stages["pruned"]["key"]


LADDER = {**FAST, "prune_schedule": "ladder", "ladder": [0.5, 0.8, 0.9]}


def test_a_rung_has_one_key_in_every_trial_that_climbs_past_it() -> None:
    cfg = CycleConfig.from_dict({**LADDER, "sparsity": 0.9})
    assert cfg.rungs == [0.5, 0.8, 0.9]
    low = stage_keys(CycleConfig.from_dict({**LADDER, "sparsity": 0.8}))
    high = ladder_keys(cfg, stage_keys(cfg)["dense"])
    assert [s for s, _ in high] == [0.5, 0.8, 0.9]
    assert high[1][1] == low["pruned"]  # rung 0.8 is the pruned stage of the trial at 0.8
    assert stage_keys(cfg)["pruned"] == high[-1][1]
    assert keys(sparsity=0.8)["pruned"] != low["pruned"]  # a ladder is another experiment
    # a rung's key does not depend on the trial's prune_steps (a rung is one step)
    assert stage_keys(CycleConfig.from_dict({**LADDER, "sparsity": 0.8, "prune_steps": 5}))["pruned"] == low["pruned"]


@pytest.mark.parametrize(("settings", "message"), [
    ({"prune_schedule": "stairs"}, "prune_schedule='stairs' is not allowed"),
    ({"ladder": [0.5]}, "empty unless prune_schedule is 'ladder'"),
    ({"prune_schedule": "ladder", "ladder": [1.5]}, r"ladder=\[1.5\] is not allowed"),
    ({"prune_schedule": "ladder", "quality": 1.0}, "a ladder climbs sparsities"),
])
def test_bad_ladders_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CycleConfig.from_dict(settings)


def test_a_ladder_computes_each_rung_once_and_the_next_trial_climbs_on_it(tmp_path: Path) -> None:
    store = StageStore(tmp_path / "store")
    high = run_cycle({**LADDER, "sparsity": 0.9, "k": 8}, stages=store)
    rungs = ladder_keys(CycleConfig.from_dict({**LADDER, "sparsity": 0.9}), high.stages["dense"]["key"], digits_id())
    assert all(store.done("pruned", key) for _, key in rungs)  # every rung published on the way
    low = run_cycle({**LADDER, "sparsity": 0.8, "k": 8}, stages=store)
    assert low.stages["pruned"] == {"key": rungs[1][1], "reused": True, "seconds": pytest.approx(
        low.stages["pruned"]["seconds"])}
    assert low.encoded is not None and high.encoded is not None
    assert low.encoded.sparsity == pytest.approx(0.8, abs=0.01)
    assert high.encoded.sparsity == pytest.approx(0.9, abs=0.01)
    # whoever computes a rung computes the same one: a cycle with no store climbs to the same model
    alone = run_cycle({**LADDER, "sparsity": 0.9, "k": 8})
    assert alone.accuracy == high.accuracy and alone.bytes_by_phase == high.bytes_by_phase


def test_a_cycle_recomputes_a_stage_swapped_with_another_and_says_so(tmp_path: Path) -> None:
    """A pruned model replaced by another sparsity's is never reused: the trial recomputes it,
    gets what a clean store gives, and its result names the damage (MLflow's
    ``dcsweep.stage.pruned.recomputed``)."""
    store = StageStore(tmp_path / "store")
    first = run_cycle({**FAST, "sparsity": 0.9, "k": 8}, stages=store)
    other = run_cycle({**FAST, "sparsity": 0.5, "k": 8}, stages=store)
    pruned = tmp_path / "store" / "stages" / "pruned"
    mine, theirs = first.stages["pruned"]["key"], other.stages["pruned"]["key"]
    (pruned / mine / "model.dcz").write_bytes((pruned / theirs / "model.dcz").read_bytes())
    again = run_cycle({**FAST, "sparsity": 0.9, "k": 8}, stages=store)
    assert again.stages["pruned"]["reused"] is False
    assert again.stages["pruned"]["recomputed"].startswith("model.dcz is ")  # another size or digest
    assert again.metrics("final")["recomputed_pruned"] == again.stages["pruned"]["recomputed"]
    assert again.accuracy == first.accuracy and again.bytes_by_phase == first.bytes_by_phase
    assert again.stages["dense"]["reused"] is True and "recomputed" not in again.stages["dense"]
