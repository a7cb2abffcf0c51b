"""Magnitude pruning: targets reached, rules honoured, pruned weights zero under any optimizer."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dcsweep.compression import (
    KMeansShare,
    MagnitudePrune,
    Masked,
    iterative_prune_,
    prune_,
    prune_schedule,
    share_weights_,
    sparsity,
    structural_mask,
)

from ..helpers import accuracy, convnet, mlp, train


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.clone() for n, m in model.state_dict().items() if n.endswith(".mask")}


def test_per_layer_sparsity_prunes_the_smallest_magnitudes(trained_mlp) -> None:
    before = {n: p.detach().clone() for n, p in trained_mlp.named_parameters()}
    reached = prune_(trained_mlp, MagnitudePrune(sparsity=0.9))
    assert set(reached) == {"1.weight", "3.weight", "5.weight"}  # never biases
    for name, s in reached.items():
        w = before[name]
        assert s == pytest.approx(round(0.9 * w.numel()) / w.numel())
        module = trained_mlp[int(name.split(".")[0])]
        kept = structural_mask(module)
        # every kept weight is at least as large as every pruned one
        assert w[kept].abs().min() >= w[~kept].abs().max()
        assert torch.equal(module.weight, torch.where(kept, w, 0.0))
    for i in (1, 3, 5):
        assert torch.equal(trained_mlp[i].bias, before[f"{i}.bias"])


def test_global_scope_uses_one_threshold(trained_mlp) -> None:
    prune_(trained_mlp, MagnitudePrune(sparsity=0.8, scope="global"))
    layers = [trained_mlp[i] for i in (1, 3, 5)]
    kept = torch.cat([m.weight[structural_mask(m)].abs() for m in layers])
    pruned = torch.cat([m.parametrizations.weight.original[~structural_mask(m)] for m in layers])
    total = sum(m.weight.numel() for m in layers)
    assert sparsity(trained_mlp) == pytest.approx(round(0.8 * total) / total)
    per_layer = [1 - structural_mask(m).float().mean().item() for m in layers]
    assert max(per_layer) - min(per_layer) > 0.05  # layers differ: the threshold is shared, not the rate
    assert kept.min() > 0 and pruned.abs().max() == 0


def test_quality_rule_uses_std_of_remaining_weights(trained_mlp) -> None:
    layer = trained_mlp[1]
    w0 = layer.weight.detach().clone()
    prune_(trained_mlp, MagnitudePrune(quality=0.5))
    mask1 = structural_mask(layer).clone()
    assert torch.equal(mask1, w0.abs() > 0.5 * w0.std(correction=0))
    prune_(trained_mlp, MagnitudePrune(quality=0.5))  # second round: std over survivors only
    remaining = w0[mask1]
    assert torch.equal(structural_mask(layer), mask1 & (w0.abs() > 0.5 * remaining.std(correction=0)))


def test_overrides_by_name_and_pattern_and_exclude() -> None:
    model = convnet()
    reached = prune_(model, MagnitudePrune(sparsity=0.5, layers={"0": 0.25, "*": 0.75}, exclude=("8",)))
    assert reached["0.weight"] == pytest.approx(0.25, abs=0.01)  # exact name beats the pattern
    assert reached["3.weight"] == pytest.approx(0.75, abs=0.01)
    assert "8.weight" not in reached and structural_mask(model[8]) is None
    assert structural_mask(model[1]) is None  # BatchNorm untouched by default


def test_bias_and_norm_only_when_asked() -> None:
    model = convnet()
    reached = prune_(model, MagnitudePrune(sparsity=0.5, include_bias=True, include_norm=True))
    assert {"0.bias", "1.weight", "1.bias", "8.bias"} <= set(reached)


def test_masks_only_grow_and_are_buffers(trained_mlp) -> None:
    prune_(trained_mlp, MagnitudePrune(sparsity=0.9))
    first = masks(trained_mlp)
    assert set(first) == {"1.parametrizations.weight.0.mask", "3.parametrizations.weight.0.mask",
                          "5.parametrizations.weight.0.mask"}
    prune_(trained_mlp, MagnitudePrune(sparsity=0.5))  # a lower target prunes nothing back
    assert all(torch.equal(first[n], m) for n, m in masks(trained_mlp).items())
    moved = trained_mlp.to(torch.float64)
    assert moved[1].parametrizations.weight.original.dtype == torch.float64
    assert moved[1].parametrizations.weight[0].mask.dtype == torch.bool


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-2),
    ],
    ids=["sgd-momentum-wd", "sgd-nesterov", "adam-wd", "adamw"],
)
def test_pruned_weights_stay_exactly_zero_under_optimizers(digits, make_opt) -> None:
    model = train(mlp(), digits, epochs=1)
    opt = make_opt(model.parameters())  # momentum state from before pruning too
    train_step(model, opt, digits)
    prune_(model, MagnitudePrune(sparsity=0.95))
    mask = {i: structural_mask(model[i]).clone() for i in (1, 3, 5)}
    for _ in range(20):
        train_step(model, opt, digits)
    for i, keep in mask.items():
        w = model[i].weight
        assert torch.equal(w[~keep], torch.zeros_like(w[~keep]))
        assert bool((w[keep] != 0).any())
        assert torch.equal(structural_mask(model[i]), keep)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, digits) -> None:
    model.train()
    loss = nn.functional.cross_entropy(model(digits[0][:128]), digits[1][:128])
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_schedule_ramps_to_the_target() -> None:
    steps = prune_schedule(MagnitudePrune(sparsity=0.9, layers={"fc": 0.6}), 4)
    values = [c.sparsity for c in steps]
    assert values == sorted(values) and values[-1] == 0.9 and len(values) == 4
    assert values[0] > 0.9 / 4  # cubic: big cuts first
    assert dict(steps[-1].layers)["fc"] == 0.6
    assert [c.quality for c in prune_schedule(MagnitudePrune(quality=2.0), 2)] == [1.0, 2.0]
    with pytest.raises(ValueError, match="steps must be an integer >= 1; got 0"):
        prune_schedule(MagnitudePrune(sparsity=0.5), 0)


def test_iterative_pruning_with_retraining_keeps_accuracy(digits, trained_mlp) -> None:
    dense = accuracy(trained_mlp, digits)
    calls = []

    def retrain(model: nn.Module, step: int) -> None:
        calls.append(step)
        train(model, digits, epochs=2, lr=3e-3)

    history = iterative_prune_(trained_mlp, MagnitudePrune(sparsity=0.9), steps=3, retrain=retrain)
    assert calls == [0, 1, 2]
    assert [h["1.weight"] for h in history] == sorted(h["1.weight"] for h in history)
    assert sparsity(trained_mlp) == pytest.approx(0.9, abs=1e-3)
    assert accuracy(trained_mlp, digits) >= dense - 0.03


def test_pruning_a_shared_layer_is_refused(trained_mlp) -> None:
    share_weights_(trained_mlp, KMeansShare(k=8))
    with pytest.raises(ValueError, match="already weight-shared; prune before share_weights_"):
        prune_(trained_mlp, MagnitudePrune(sparsity=0.5))


def test_masked_is_a_where_not_a_multiply() -> None:
    m = Masked(torch.tensor([True, False, False]))
    out = m(torch.tensor([1.0, -2.0, float("nan")]))
    assert out.tolist()[:2] == [1.0, 0.0] and out[2].item() == 0.0
    assert not torch.signbit(out[1])  # +0.0, not -0.0: decoded files are bit-identical


@pytest.mark.parametrize("rule", [{"sparsity": 0.5}, {"sparsity": 0.5, "scope": "global"}, {"quality": 1.0}])
def test_a_zero_element_layer_is_pruned_to_nothing_without_error(rule: dict) -> None:
    model = nn.Sequential(nn.Linear(0, 4), nn.ReLU(), nn.Linear(4, 3))
    reached = prune_(model, MagnitudePrune(**rule))
    assert reached["0.weight"] == 0.0 and set(reached) == {"0.weight", "2.weight"}
    assert model(torch.zeros(2, 0)).shape == (2, 3)


@pytest.mark.parametrize("field", ["layers", "exclude"])
def test_a_rule_that_matches_no_layer_is_refused(field: str) -> None:
    model = mlp()
    rule = {"layers": {"fc9": 0.5}} if field == "layers" else {"exclude": ("fc9",)}
    with pytest.raises(ValueError, match=rf"MagnitudePrune.{field} pattern\(s\) \['fc9'\] match no layer of the "
                                         r"model; its layers are \['1', '3', '5'\]"):
        prune_(model, MagnitudePrune(sparsity=0.5, **rule))
    assert not any(n.endswith(".mask") for n in model.state_dict())  # refused before any change
    share = {"layers": {"fc9": 4}} if field == "layers" else {"exclude": ("fc9",)}
    with pytest.raises(ValueError, match=rf"KMeansShare.{field} pattern\(s\) \['fc9'\] match no layer"):
        share_weights_(model, KMeansShare(**share))
    prune_(model, MagnitudePrune(sparsity=0.5, layers={"[13]": 0.2}))  # a glob that matches is fine


def test_embeddings_and_transposed_convolutions_are_compressed() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({"emb": nn.Embedding(50, 16), "up": nn.ConvTranspose2d(4, 2, 3), "fc": nn.Linear(16, 4)})
    reached = prune_(model, MagnitudePrune(sparsity=0.75))
    assert set(reached) == {"emb.weight", "up.weight", "fc.weight"}
    assert float((model["emb"].weight == 0).float().mean()) == pytest.approx(0.75)
    ks = share_weights_(model, KMeansShare(k=4, k_conv=8))
    assert ks == {"emb.weight": 4, "up.weight": 8, "fc.weight": 4}
    assert model["emb"](torch.tensor([1, 2])).unique().numel() <= 5  # 4 centroids and the pruned zeros
    assert model["up"](torch.zeros(1, 4, 5, 5)).shape == (1, 2, 7, 7)


@pytest.mark.parametrize(("make", "verb", "message"), [
    (lambda: nn.Sequential(torch.nn.utils.parametrizations.weight_norm(nn.Linear(8, 8))), "prune",
     r"cannot prune 0.weight: it carries a parametrization the library does not manage \(_WeightNorm\)"),
    (lambda: nn.Sequential(torch.nn.utils.parametrizations.weight_norm(nn.Linear(8, 8))), "share",
     r"cannot share 0.weight: it carries a parametrization the library does not manage"),
    (lambda: nn.Sequential(nn.Embedding(20, 4, sparse=True)), "prune",
     r"cannot prune 0.weight: its module makes sparse gradients \(sparse=True\)"),
    (lambda: nn.Sequential(nn.Embedding(20, 4, sparse=True)), "share", r"cannot share 0.weight: .*sparse=True"),
])
def test_layers_the_parametrizations_cannot_carry_are_refused_before_any_change(make, verb: str,
                                                                                message: str) -> None:
    """Found by a hostile review: an AttributeError after Masked was registered (a half-changed
    model), or a backward pass that failed later."""
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        if verb == "prune":
            prune_(model, MagnitudePrune(sparsity=0.5))
        else:
            share_weights_(model, KMeansShare(k=4))
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_the_quality_rule_refuses_weights_it_cannot_take_a_std_of(bad: float) -> None:
    model = nn.Linear(10, 10)
    model.weight.data[0, 0] = bad  # the std was NaN, nothing passed it, and the whole layer was pruned
    with pytest.raises(ValueError, match="cannot prune .weight by quality: it holds NaN or infinite weights"):
        prune_(model, MagnitudePrune(quality=0.5))
    assert not hasattr(model, "parametrizations")


def test_exclude_given_as_one_string_is_refused() -> None:
    for config in (MagnitudePrune, KMeansShare):
        with pytest.raises(ValueError, match=r"exclude must be a list or tuple of module names or patterns, not "
                                             r"one string; got '10'"):
            config(exclude="10")  # was ('1', '0'): layers 1 and 0 skipped, layer 10 pruned
