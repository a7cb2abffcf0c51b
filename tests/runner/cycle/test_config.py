"""Every knob of the cycle is validated with a message naming field, value and allowed range."""

from __future__ import annotations

import pytest

from dcsweep.runner.cycle import ConfigError, CycleConfig


def test_defaults_and_round_trip() -> None:
    cfg = CycleConfig()
    assert (cfg.model, cfg.dataset, cfg.sparsity) == ("lenet300", "digits", 0.9)
    assert CycleConfig.from_dict(cfg.to_dict()) == cfg
    assert CycleConfig.from_dict({"quality": 1.5}).sparsity is None  # the rule replaces the default
    assert cfg.prune_learning_rate == 2 * cfg.lr and cfg.share_learning_rate == cfg.lr / 5


@pytest.mark.parametrize(("settings", "message"), [
    ({"model": "vgg"}, r"model='vgg' is not allowed; model must be one of \['alexnet'"),
    ({"dataset": "svhn"}, r"unknown dataset 'svhn'; valid datasets: cifar10"),
    ({"sparsity": 1.0}, r"sparsity=1.0 is not allowed; sparsity must be a number in \[0, 1\)"),
    ({"sparsity": -0.5}, r"sparsity=-0.5"),
    ({"sparsity": 0.5, "quality": 1.0}, "set, or quality set, but not both"),
    ({"quality": -1.0}, r"quality=-1.0 is not allowed; quality must be a number in \[0, 100\]"),
    ({"k": 1}, r"k=1 is not allowed; k must be an integer in \[2, 65536\]"),
    ({"k_fc": 1}, r"k_fc=1"),
    ({"k_conv": 2.5}, r"k_conv=2.5"),
    ({"index_bits": 16}, r"index_bits=16 is not allowed; index_bits must be an integer in \[1, 15\]"),
    ({"init": "gmm"}, r"init='gmm' is not allowed; init must be one of \['linear'"),
    ({"coder": "zip"}, r"coder='zip' is not allowed; coder must be one of \['huffman', 'ans'\]"),
    ({"optimizer": "rmsprop"}, r"optimizer='rmsprop'"),
    ({"device": "tpu"}, r"device='tpu' is not allowed; device must be one of \['auto', 'cpu', 'cuda', 'mps'\]"),
    ({"epochs": -1}, r"epochs=-1 is not allowed; epochs must be an integer in \[0, 1048576\]"),
    ({"epochs": 0}, r"epochs=0 is not allowed; epochs must be >= 1 unless dense_path"),
    ({"prune_steps": 0}, r"prune_steps=0"),
    ({"batch_size": 0}, r"batch_size=0"),
    ({"lr": 0.0}, r"lr=0.0 is not allowed; lr must be a number in \(0, 10\]"),
    ({"share_lr": float("nan")}, r"share_lr=nan"),
    ({"table_retrain_lr": 0}, r"table_retrain_lr=0 is not allowed; table_retrain_lr must be a number in \(0, 10\]"),
    ({"momentum": 1.0}, r"momentum=1.0"),
    ({"weight_decay": -1e-4}, r"weight_decay=-0.0001"),
    ({"seed": -1}, r"seed=-1"),
    ({"layers": {"fc1": 1.5}}, r"layers=\{'fc1': 1.5\} is not allowed"),
    ({"lr": True}, r"lr=True"),
    ({"sparsty": 0.5}, r"unknown setting\(s\) \['sparsty'\]; valid settings are \['model', 'dataset'"),
])
def test_bad_settings(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CycleConfig.from_dict(settings)
