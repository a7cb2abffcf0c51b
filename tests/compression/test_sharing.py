"""Weight sharing: codebook[indices], fixed assignments, centroid gradient = sum of members'."""

from __future__ import annotations

import torch
import torch.nn as nn

from dcsweep.compression import KMeansShare, MagnitudePrune, SharedWeight, prune_, share_weights_, structural_mask

from ..helpers import accuracy, convnet, train


def shared(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    p = module.parametrizations.weight
    assert isinstance(p[0], SharedWeight)
    return p.original, p[0].indices


def test_k_per_layer_type_and_pattern() -> None:
    model = convnet()
    ks = share_weights_(model, KMeansShare(k=7, k_conv=9, layers={"8": 13, "1*": 4}))
    assert ks == {"0.weight": 9, "3.weight": 9, "8.weight": 13, "10.weight": 4}
    assert "1.weight" not in ks  # BatchNorm never shared
    codebook, indices = shared(model[10])
    assert codebook.shape == (4,) and indices.dtype == torch.int32 and indices.shape == (10, 64)


def test_shared_weight_is_codebook_lookup_and_pruned_stay_zero(trained_mlp) -> None:
    prune_(trained_mlp, MagnitudePrune(sparsity=0.8))
    keep = structural_mask(trained_mlp[1]).clone()
    share_weights_(trained_mlp, KMeansShare(k=16))
    layer = trained_mlp[1]
    codebook, indices = shared(layer)
    assert torch.equal(structural_mask(layer), keep)
    assert torch.equal(indices[~keep], torch.full_like(indices[~keep], 16))
    w = layer.weight
    assert torch.equal(w[keep], codebook[indices[keep].long()])
    assert torch.equal(w[~keep], torch.zeros_like(w[~keep]))
    assert w[keep].unique().numel() == 16


def test_centroid_gradient_is_sum_of_member_gradients(trained_mlp, digits) -> None:
    prune_(trained_mlp, MagnitudePrune(sparsity=0.5))
    share_weights_(trained_mlp, KMeansShare(k=8))
    layer = trained_mlp[3]
    codebook, indices = shared(layer)
    with torch.nn.utils.parametrize.cached():  # one weight tensor for the whole forward
        weight = layer.weight
        weight.retain_grad()
        nn.functional.cross_entropy(trained_mlp(digits[0][:64]), digits[1][:64]).backward()
    # the paper's eq. 3 written as the seed did: a loop over clusters (the reference, not the code)
    expected = torch.stack([weight.grad[indices == c].double().sum() for c in range(8)])
    torch.testing.assert_close(codebook.grad.double(), expected, rtol=1e-5, atol=1e-7)
    assert (expected != 0).all()


def test_fine_tuning_moves_centroids_not_assignments(trained_mlp, digits) -> None:
    prune_(trained_mlp, MagnitudePrune(sparsity=0.9))
    share_weights_(trained_mlp, KMeansShare(k=4))
    before_acc = accuracy(trained_mlp, digits)
    codebook, indices = shared(trained_mlp[1])
    c0, i0 = codebook.detach().clone(), indices.clone()
    params = list(trained_mlp.parameters())
    assert all(not p.dtype.is_floating_point or p.requires_grad for p in params)
    train(trained_mlp, digits, epochs=2, lr=1e-3)
    assert torch.equal(indices, i0) and not torch.equal(codebook.detach(), c0)
    assert trained_mlp[1].weight.unique().numel() <= 5  # 4 centroids and the pruned zero
    assert accuracy(trained_mlp, digits) >= before_acc - 0.01


def test_state_dict_carries_structure_and_to_moves_it(trained_mlp) -> None:
    share_weights_(trained_mlp, KMeansShare(k=5))
    keys = trained_mlp.state_dict().keys()
    assert {"1.parametrizations.weight.original", "1.parametrizations.weight.0.indices"} <= set(keys)
    trained_mlp.double()
    codebook, indices = shared(trained_mlp[1])
    assert codebook.dtype == torch.float64 and indices.dtype == torch.int32


def test_sharing_accuracy_on_real_data(trained_convnet, digits) -> None:
    dense = accuracy(trained_convnet, digits)
    share_weights_(trained_convnet, KMeansShare(k_conv=32, k_fc=16))
    assert accuracy(trained_convnet, digits) >= dense - 0.02


def test_fully_pruned_layer_is_left_alone() -> None:
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.zero_()
    prune_(layer, MagnitudePrune(sparsity=0.99))
    structural_mask(layer).zero_()
    assert share_weights_(layer, KMeansShare(k=4)) == {}


class _TiedLM(nn.Module):
    """An embedding and an output layer that share one weight, as language models do."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight


def test_a_tied_weight_is_refused_whole_instead_of_resized_under_its_other_module() -> None:
    """Sharing resizes the weight's Parameter to the codebook in place: the other module's
    weight became a (k,) vector. Found by a hostile review."""
    import pytest

    model = _TiedLM()
    for exclude in ((), ("head",)):
        with pytest.raises(ValueError, match=r"cannot share emb.weight: it is the same tensor as head.weight \(tied"):
            share_weights_(model, KMeansShare(k=4, exclude=exclude))
        assert model.head.weight.shape == (20, 8) and not hasattr(model.emb, "parametrizations")  # untouched
    share_weights_(model, KMeansShare(k=4, exclude=("emb", "head")))  # neither shared: fine
    pruned = _TiedLM()
    prune_(pruned, MagnitudePrune(sparsity=0.5))  # masks keep a tensor's shape: pruning a tie is fine
    with pytest.raises(ValueError, match=r"cannot share emb.weight: it is the same tensor as head.weight"):
        share_weights_(pruned, KMeansShare(k=4))


def test_an_optimizer_step_after_sharing_does_not_meet_the_dense_gradient() -> None:
    model = nn.Linear(8, 4)
    model(torch.randn(2, 8)).sum().backward()  # a gradient of the weight's shape (4, 8)
    share_weights_(model, KMeansShare(k=4))
    codebook, _ = shared(model)
    assert codebook.grad is None
    model(torch.randn(2, 8)).sum().backward()  # failed: (4, 8) + (4,)
    assert codebook.grad is not None and codebook.grad.shape == (4,)
