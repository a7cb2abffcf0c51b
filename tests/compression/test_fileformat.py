"""The .dcz file: bit-exact round trips, honest sizes, and only CompressedFileError on bad files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcsweep.compression import (
    CompressedFileError,
    KMeansShare,
    MagnitudePrune,
    load_compressed,
    prune_,
    read_compressed,
    register_architecture,
    save_compressed,
    share_weights_,
    size_report,
)
from dcsweep.compression.fileformat import FORMAT_VERSION, MAGIC
from dcsweep.compression.layers import compressible_layers

from ..helpers import accuracy, convnet, mlp

MODELS = {
    "mlp": mlp,
    "convnet": convnet,
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
}


def compress(model: nn.Module, sparsity: float = 0.9, k_conv: int = 32, k_fc: int = 16) -> nn.Module:
    """Every kind of tensor record: the first layer kept whole but masked (sparsity 0), the
    second pruned only, the rest pruned and shared."""
    first, second = [name for name, _ in compressible_layers(model)][:2]
    prune_(model, MagnitudePrune(sparsity=sparsity, layers={first: 0.0}))
    share_weights_(model, KMeansShare(k_conv=k_conv, k_fc=k_fc, exclude=(second,)))
    return model.eval()


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:  # bitwise: view as integers so -0.0 != +0.0 and NaN payloads count
        x, y = sa[key], sb[key]
        assert x.dtype == y.dtype and x.shape == y.shape, key
        assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)), key


@pytest.mark.parametrize("coder", ["huffman", "ans"])
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_is_bit_exact(name: str, coder: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = compress(MODELS[name]())
    if name == "resnet18":  # BatchNorm statistics that are not the defaults
        model.train()(torch.randn(4, 3, 32, 32))
        model.eval()
    path = tmp_path / "m.dcz"
    report = save_compressed(model, path, coder=coder)
    assert report.total_bytes == os.path.getsize(path)
    loaded = load_compressed(path, MODELS[name]())
    assert_same_state(model, loaded)
    x = torch.randn(2, 3, 32, 32) if name == "resnet18" else torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))
    save_compressed(loaded, tmp_path / "again.dcz", coder=coder)
    assert (tmp_path / "again.dcz").read_bytes() == path.read_bytes()


def test_decoded_accuracy_equals_shared_accuracy(trained_convnet, digits, tmp_path: Path) -> None:
    model = compress(trained_convnet, sparsity=0.7)
    shared_acc = accuracy(model, digits)
    save_compressed(model, tmp_path / "c.dcz")
    assert accuracy(load_compressed(tmp_path / "c.dcz", convnet()), digits) == shared_acc


def test_size_report_adds_up_and_matches_the_model(trained_mlp, tmp_path: Path) -> None:
    compress(trained_mlp)
    in_memory = size_report(trained_mlp, coder="ans")
    on_disk = save_compressed(trained_mlp, tmp_path / "m.dcz", coder="ans")
    from_file = size_report(tmp_path / "m.dcz")
    assert in_memory == on_disk == from_file
    assert from_file.total_bytes == (tmp_path / "m.dcz").stat().st_size
    params = sum(p.numel() for p in mlp().parameters())
    assert from_file.dense_bytes == 4 * params
    rows = {r.name: r for r in from_file.layers}
    assert rows["1.weight"].kind == "shared" and rows["1.weight"].k == 16
    assert rows["1.weight"].nonzero == 64 * 300 and rows["3.weight"].nonzero == round(0.1 * 300 * 100)
    assert rows["1.bias"].kind == "dense" and rows["1.bias"].dense == 300 * 4
    data = from_file.to_dict()
    assert {"dense_bytes", "compressed_bytes", "ratio", "layers"} <= set(data)
    assert {"name", "shape", "nonzero", "k", "index_bits", "bytes"} <= set(data["layers"][0])


@pytest.mark.parametrize("name", list(MODELS))
def test_file_overhead_is_small(name: str) -> None:
    """Beyond weights, positions, codebooks and dense tensors, a file holds under 1 KB plus a
    few bytes per tensor (magic, version, header, coder tables, checksums)."""
    torch.manual_seed(0)
    report = size_report(compress(MODELS[name]()))
    tensors = len(report.layers)
    assert report.overhead_bytes < 1024 + 16 * tensors, (report.overhead_bytes, tensors)


def test_pruned_unshared_and_dense_layers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = mlp()
    prune_(model, MagnitudePrune(sparsity=0.6, exclude=("5",)))
    save_compressed(model, tmp_path / "p.dcz", index_bits=3)
    kinds = {r.name: (r.kind, r.index_bits) for r in size_report(tmp_path / "p.dcz").layers}
    assert kinds["1.weight"] == ("sparse", 3) and kinds["5.weight"] == ("dense", None)
    assert_same_state(model, load_compressed(tmp_path / "p.dcz", mlp()))


def test_load_without_a_model_instance(tmp_path: Path) -> None:
    register_architecture("test-mlp", mlp)
    model = compress(mlp())
    save_compressed(model, tmp_path / "a.dcz", arch={"name": "test-mlp"})
    assert_same_state(model, load_compressed(tmp_path / "a.dcz"))
    register_architecture("test-resnet18", torchvision.models.resnet18, kwargs=("num_classes",))
    resnet = compress(torchvision.models.resnet18(num_classes=10))
    save_compressed(resnet, tmp_path / "r.dcz", arch={"name": "test-resnet18", "kwargs": {"num_classes": 10}})
    assert_same_state(resnet, load_compressed(tmp_path / "r.dcz"))
    save_compressed(model, tmp_path / "none.dcz")
    with pytest.raises(ValueError, match="names no architecture; pass model="):
        load_compressed(tmp_path / "none.dcz")
    save_compressed(model, tmp_path / "u.dcz", arch={"name": "nope"})
    with pytest.raises(ValueError, match=r"unknown architecture 'nope'; registered: \[.*'test-mlp'"):
        load_compressed(tmp_path / "u.dcz")


def test_wrong_model_is_refused(tmp_path: Path) -> None:
    save_compressed(compress(mlp()), tmp_path / "m.dcz")
    with pytest.raises(ValueError, match="model does not match"):
        load_compressed(tmp_path / "m.dcz", convnet())


def test_read_compressed_gives_tensors(tmp_path: Path) -> None:
    model = compress(mlp())
    save_compressed(model, tmp_path / "m.dcz")
    header, tensors = read_compressed(tmp_path / "m.dcz")
    assert header["coder"] == "huffman"
    assert torch.equal(tensors["1.weight"].value, model[1].weight)
    assert tensors["1.weight"].codebook is not None and tensors["1.bias"].mask is None


@pytest.fixture(scope="module")
def good_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dcz") / "c.dcz"
    save_compressed(compress(convnet()), path, coder="huffman")
    return path.read_bytes()


def _load_bytes(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bad.dcz"
    path.write_bytes(data)
    load_compressed(path, convnet())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_files_raise_only_compressed_file_error(good_file: bytes, tmp_path: Path, data) -> None:
    at = data.draw(st.integers(0, len(good_file) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != good_file[at]))
    with pytest.raises(CompressedFileError):
        _load_bytes(good_file[:at] + bytes([byte]) + good_file[at + 1:], tmp_path)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_truncated_or_extended_files_raise_only_compressed_file_error(good_file: bytes, tmp_path: Path, data) -> None:
    cut = data.draw(st.integers(0, len(good_file) - 1))
    with pytest.raises(CompressedFileError, match="truncated|checksum|not a .dcz"):
        _load_bytes(good_file[:cut], tmp_path)
    with pytest.raises(CompressedFileError, match="trailing"):
        _load_bytes(good_file + data.draw(st.binary(min_size=1, max_size=9)), tmp_path)


def test_specific_failures_have_clear_messages(good_file: bytes, tmp_path: Path) -> None:
    with pytest.raises(CompressedFileError, match="not a .dcz file: bad magic"):
        _load_bytes(b"PK\x03\x04" + good_file[4:], tmp_path)
    newer = good_file[:8] + (FORMAT_VERSION + 1).to_bytes(2, "little") + good_file[10:]
    with pytest.raises(CompressedFileError, match=f"version {FORMAT_VERSION + 1} is newer"):
        _load_bytes(newer, tmp_path)
    with pytest.raises(CompressedFileError, match="body checksum mismatch"):
        _load_bytes(good_file[:-10] + bytes([good_file[-10] ^ 1]) + good_file[-9:], tmp_path)
    with pytest.raises(CompressedFileError, match="shorter than a .dcz prefix"):
        _load_bytes(MAGIC[:5], tmp_path)
    with pytest.raises(CompressedFileError, match="is a directory"):
        load_compressed(tmp_path)
    assert issubclass(CompressedFileError, ValueError)


def test_failed_save_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.dcz"
    target.write_bytes(b"precious")
    with pytest.raises(ValueError, match="coder must be one of"):
        save_compressed(compress(mlp()), target, coder="zip")
    assert target.read_bytes() == b"precious" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("coder", ["huffman", "ans"])
def test_size_report_of_a_model_counts_its_architecture_record(coder: str, tmp_path: Path) -> None:
    """The in-memory report of a model that names its architecture equals the file it writes
    (the header's architecture record was left out of the report: about 40 B)."""
    model = compress(mlp())
    model.dcz_arch = {"name": "test-mlp", "kwargs": {"input_shape": [1, 8, 8], "num_classes": 10}}
    written = save_compressed(model, tmp_path / "m.dcz", coder=coder)
    assert size_report(model, coder=coder).total_bytes == written.total_bytes == (tmp_path / "m.dcz").stat().st_size


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_permissions_of_the_umask(umask: int, tmp_path: Path) -> None:
    old = os.umask(umask)
    try:
        save_compressed(compress(mlp()), tmp_path / "m.dcz")
    finally:
        os.umask(old)
    assert (tmp_path / "m.dcz").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["m.dcz"]  # no temporary file left


class _Mixed(nn.Module):
    """Layers beyond Linear and Conv: an embedding table, a transposed convolution, an LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 12)
        self.lstm = nn.LSTM(12, 8, batch_first=True)
        self.up = nn.ConvTranspose1d(8, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.emb(tokens))
        return self.fc(self.up(hidden.transpose(1, 2)).mean(-1))


def test_embeddings_and_transposed_convs_are_coded_and_what_is_not_is_said(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = compress(_Mixed())
    report = save_compressed(model, tmp_path / "x.dcz")
    kinds = {r.name: r.kind for r in report.layers}
    assert kinds["emb.weight"] == "shared" and kinds["up.weight"] == "sparse" and kinds["fc.weight"] == "shared"
    assert report.dense_weights == ("lstm.weight_ih_l0", "lstm.weight_hh_l0")
    assert "weights stored dense (not pruned or shared): lstm.weight_ih_l0, lstm.weight_hh_l0" in report.format_table()
    loaded = load_compressed(tmp_path / "x.dcz", _Mixed())
    assert_same_state(model, loaded)
    tokens = torch.randint(0, 40, (2, 6))
    with torch.no_grad():
        assert torch.equal(model.eval()(tokens), loaded.eval()(tokens))


def test_a_model_loaded_from_its_file_alone_saves_the_same_bytes(tmp_path: Path) -> None:
    """Its architecture record was lost on the way: the second file could not be loaded
    without a model. Found by a hostile review."""
    def build(h: int = 4) -> nn.Module:
        return nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2))

    register_architecture("resave-tiny", build, kwargs=("h",))
    model = build(16)
    prune_(model, MagnitudePrune(sparsity=0.7))
    share_weights_(model, KMeansShare(k=8))
    save_compressed(model, tmp_path / "a.dcz", arch={"name": "resave-tiny", "kwargs": {"h": 16}})
    save_compressed(load_compressed(tmp_path / "a.dcz"), tmp_path / "b.dcz")
    assert (tmp_path / "b.dcz").read_bytes() == (tmp_path / "a.dcz").read_bytes()


def test_a_weight_normed_layer_is_stored_dense(tmp_path: Path) -> None:
    model = nn.Sequential(torch.nn.utils.parametrizations.weight_norm(nn.Linear(8, 8)), nn.Linear(8, 2))
    prune_(model, MagnitudePrune(sparsity=0.5, exclude=("0",)))
    save_compressed(model, tmp_path / "w.dcz")  # an AttributeError: torch's ParametrizationList had no .original
    plain = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    loaded = load_compressed(tmp_path / "w.dcz", plain)
    assert torch.equal(loaded[0].weight, model[0].weight) and torch.equal(loaded[1].weight, model[1].weight)
