"""Configs are frozen dataclasses that round-trip through plain dicts and refuse bad values."""

from __future__ import annotations

import dataclasses

import pytest

from dcsweep.compression import KMeansShare, MagnitudePrune

CONFIGS = [
    MagnitudePrune(sparsity=0.9),
    MagnitudePrune(sparsity=0.8, scope="global", layers={"fc3": 0.5}, exclude=("conv1",)),
    MagnitudePrune(quality=1.5, layers={"features.*": 0.7}, include_bias=True, include_norm=True),
    KMeansShare(k=16, init="linear"),
    KMeansShare(k=13, k_conv=256, k_fc=32, layers={"classifier.*": 4}, init="optimal", seed=3),
]


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_dict_round_trip(config) -> None:
    data = config.to_dict()
    assert type(config).from_dict(data) == config
    assert isinstance(data["layers"], dict) and isinstance(data["exclude"], list)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.k = 3  # type: ignore[misc]


@pytest.mark.parametrize("cls", [MagnitudePrune, KMeansShare])
def test_unknown_field_lists_the_valid_ones(cls) -> None:
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['sparsty'\]; valid fields are \[.*"):
        cls.from_dict({"sparsty": 0.5})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "MagnitudePrune.sparsity must be set, or quality set"),
        ({"sparsity": 0.5, "quality": 1.0}, "but not both"),
        ({"sparsity": 1.0}, r"sparsity must be a sparsity in \[0, 1\); got 1.0"),
        ({"sparsity": -0.1}, r"got -0.1"),
        ({"sparsity": float("nan")}, "finite number"),
        ({"sparsity": "0.5"}, "finite number; got '0.5'"),
        ({"quality": -1.0}, "quality >= 0; got -1.0"),
        ({"sparsity": 0.5, "scope": "model"}, r"scope must be one of \['layer', 'global'\]; got 'model'"),
        ({"quality": 1.0, "scope": "global"}, "'layer' when pruning by quality"),
        ({"sparsity": 0.5, "layers": {"fc1": 1.5}}, r"layers\['fc1'\] must be a sparsity in \[0, 1\)"),
    ],
)
def test_prune_config_errors_name_field_value_and_range(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        MagnitudePrune(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 1}, r"KMeansShare.k must be an integer in \[2, 65536\]; got 1"),
        ({"k": 70000}, "got 70000"),
        ({"k": 4.0}, "got 4.0"),
        ({"k_conv": 1}, "k_conv must be"),
        ({"layers": {"fc*": 1}}, r"layers\['fc\*'\] must be"),
        ({"init": "gmm"}, r"init must be one of \['linear', 'density', 'random', 'kmeans\+\+', 'optimal'\]; got 'gmm'"),
        ({"max_iter": 0}, "max_iter must be an integer >= 1"),
    ],
)
def test_share_config_errors(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        KMeansShare(**kwargs)
