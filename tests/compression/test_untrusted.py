"""A .dcz file is untrusted input: crafted files with valid checksums (CRC-32 stops accidents,
not attackers) raise CompressedFileError, allocate nothing they have not paid for in bytes,
and never make the loader build, import or download what they name."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
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
from dcsweep.compression.fileformat import pack, parse

from ..helpers import mlp

ARCH = {"name": "untrusted-mlp", "kwargs": {}}
register_architecture("untrusted-mlp", mlp)


def good_file(coder: str = "huffman") -> bytes:
    model = mlp()
    prune_(model, MagnitudePrune(sparsity=0.8, layers={"5": 0.0}))
    share_weights_(model, KMeansShare(k=8, exclude=("3",)))
    return pack_model(model, coder)


def pack_model(model: nn.Module, coder: str) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dcz-test-") as folder:
        save_compressed(model, Path(folder) / "m.dcz", coder=coder, arch=ARCH)
        return (Path(folder) / "m.dcz").read_bytes()


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    parsed = parse(data)
    return dict(parsed.header), bytes(parsed.body)


def edited(data: bytes, edit: Callable[[dict[str, Any]], Any]) -> bytes:
    """The file with its header changed by ``edit`` and every checksum made valid again."""
    header, body = split(data)
    edit(header)
    return pack(header, body)


def record(header: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in header["tensors"] if r["n"] == name)


def load(data: bytes, tmp_path: Path, model: nn.Module | None = None) -> nn.Module:
    path = tmp_path / "crafted.dcz"
    path.write_bytes(data)
    return load_compressed(path, model)


@pytest.mark.parametrize("coder", ["huffman", "ans"])
def test_the_untouched_file_loads(coder: str, tmp_path: Path) -> None:
    model = load(good_file(coder), tmp_path)
    assert isinstance(model, nn.Sequential)


def _declare_huge(header: dict[str, Any]) -> None:
    rec = record(header, "1.weight")  # shared: a 2**28-element tensor holding its few kept weights
    rec["s"] = [1 << 14, 1 << 14]


def _one_symbol_everywhere(header: dict[str, Any]) -> None:
    rec = record(header, "5.weight")  # kept whole: its gaps are one symbol, so a huge count costs no payload
    rec["s"], rec["nz"], rec["g"] = [1 << 30], 1 << 30, 1 << 30


CRAFTED = {
    "a 2**28-element shared tensor": (_declare_huge, "more than the .* allowed|does not match"),
    "a one-symbol stream of 2**30": (_one_symbol_everywhere, "does not match|size does not match"),
    "a sparse record claiming a codebook": (lambda h: record(h, "3.weight").update(k=4), "has no codebook"),
    "a codebook of 2**20 entries": (lambda h: record(h, "1.weight").update(k=1 << 20), r"codebook size"),
    "more nonzeros than elements": (lambda h: record(h, "1.weight").update(nz=10**6, g=10**6), "gap count|nonzeros"),
    "index bits of 40": (lambda h: record(h, "1.weight").update(b=40), r"index bits must be in \[1, 15\]"),
    "a negative dimension": (lambda h: record(h, "1.bias").update(s=[-1]), "wrong type"),
    "a string shape": (lambda h: record(h, "1.bias").update(s="abc"), "wrong type"),
    "a float size": (lambda h: record(h, "1.bias").update(z=[1.5]), "wrong type"),
    "a record that is a list": (lambda h: h["tensors"].__setitem__(0, [1, 2]), "wrong type"),
    "an unknown dtype": (lambda h: record(h, "1.bias").update(d="complex128"), "wrong type"),
    "65 dimensions": (lambda h: record(h, "1.bias").update(s=[1] * 65), "wrong type"),
    "a zero-size tensor with a dimension of 10**30": (lambda h: record(h, "1.bias").update(s=[0, 10**30]),
                                                      "out of range"),
    "dimensions whose product overflows int64": (lambda h: record(h, "1.bias").update(s=[1 << 62, 1 << 62, 0]),
                                                 "out of range"),
    "4,001-digit dimensions": (lambda h: record(h, "1.bias").update(s=[10**4000, 10**4000]), "out of range"),
    "an unknown record key": (lambda h: record(h, "1.bias").update(x=[{}] * 1000), "unknown"),
    "an unknown header key": (lambda h: h.update(x=[{}] * 1000), r"unknown keys \['x'\]"),
    "a duplicate record": (lambda h: h["tensors"].append(h["tensors"][0]), "has two records"),
    "tensors not a list": (lambda h: h.update(tensors={"a": 1}), "'tensors' list"),
    "an architecture that is a string": (lambda h: h.update(arch="lenet"), "architecture record"),
    "a coder that is a list": (lambda h: h.update(coder=["huffman"]), "header is not valid"),
    "an unknown coder": (lambda h: h.update(coder="lzma"), "coder must be one of"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_headers_with_valid_checksums_are_refused(case: str, tmp_path: Path) -> None:
    edit, message = CRAFTED[case]
    data = edited(good_file(), edit)
    with pytest.raises(CompressedFileError, match=message):
        load(data, tmp_path)
    with pytest.raises(CompressedFileError):
        load(data, tmp_path, mlp())
    with pytest.raises(CompressedFileError):
        read_compressed(tmp_path / "crafted.dcz")


@pytest.mark.parametrize(("arch", "message"), [
    ({"name": "torchvision:vit_h_14", "kwargs": {}}, r"unknown architecture 'torchvision:vit_h_14'; registered"),
    ({"name": "untrusted-mlp", "kwargs": {"weights": "DEFAULT"}}, r"takes no keyword 'weights' from a file"),
    ({"name": "os:system", "kwargs": {}}, "unknown architecture"),
])
def test_files_build_only_registered_architectures_with_allowed_kwargs(arch: dict, message: str,
                                                                       tmp_path: Path) -> None:
    data = edited(good_file(), lambda h: h.update(arch=arch))
    with pytest.raises(CompressedFileError, match=message):
        load(data, tmp_path)


def test_string_kwargs_are_refused_even_where_the_keyword_is_allowed(tmp_path: Path) -> None:
    register_architecture("untrusted-linear", lambda n=3: nn.Sequential(nn.Linear(n, 2)), kwargs=("n",))
    data = edited(good_file(), lambda h: h.update(arch={"name": "untrusted-linear", "kwargs": {"n": "/etc/passwd"}}))
    with pytest.raises(CompressedFileError, match="keyword 'n' must be an integer"):
        load(data, tmp_path)
    # an allowed integer that builds a model the file does not match: refused on the meta device
    data = edited(good_file(), lambda h: h.update(arch={"name": "untrusted-linear", "kwargs": {"n": 1 << 30}}))
    with pytest.raises(CompressedFileError, match="model does not match"):
        load(data, tmp_path)


def test_a_file_that_fits_but_declares_too_much_per_byte_is_refused(tmp_path: Path) -> None:
    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(4096, 4096, bias=False))

    big = build()
    prune_(big, MagnitudePrune(sparsity=0.9999))  # 1,678 weights kept of 16.8 M
    register_architecture("untrusted-big", build)
    path = tmp_path / "big.dcz"
    save_compressed(big, path, arch={"name": "untrusted-big"})
    elements = 4096 * 4096
    assert elements > 1024 * path.stat().st_size
    with pytest.raises(CompressedFileError, match=f"declares {elements} tensor elements, more than"):
        load_compressed(path)
    with pytest.raises(CompressedFileError, match="more than"):
        read_compressed(path)
    assert load_compressed(path, max_elements=elements)[0].weight.shape == (4096, 4096)
    assert load_compressed(path, build())[0].weight.shape == (4096, 4096)


def _zlib_of_zeros(size: int) -> bytes:
    c = zlib.compressobj(1)
    chunk = bytes(1 << 24)
    return b"".join(c.compress(chunk) for _ in range(size >> 24)) + c.flush()


def test_deeply_nested_json_is_refused(tmp_path: Path) -> None:
    nested = b"[" * 200_000 + b"]" * 200_000
    data = pack({}, b"", packed_header=zlib.compress(nested))
    with pytest.raises(CompressedFileError, match="header is not valid"):
        load(data, tmp_path)


def test_a_header_that_inflates_far_more_than_ours_is_refused(tmp_path: Path) -> None:
    """Empty JSON objects inflate about 1000x and take 25 bytes of memory per byte once parsed;
    a real header inflates 3-30x."""
    objects = b'{"tensors":[],"arch":null,"coder":"huffman","body":0,"x":[' + b"{}," * (1 << 20) + b"{}]}"
    data = pack({}, b"", packed_header=zlib.compress(objects, 9))
    assert len(objects) > 128 * len(zlib.compress(objects, 9))
    with pytest.raises(CompressedFileError, match="inflates past its limit"):
        load(data, tmp_path)


def test_a_file_that_cannot_be_read_raises_the_one_error(tmp_path: Path) -> None:
    (tmp_path / "f.dcz").write_bytes(good_file())
    with pytest.raises(CompressedFileError, match="cannot be read"):
        read_compressed(tmp_path / "f.dcz" / "x")  # a path through a file: NotADirectoryError


def test_a_model_built_from_a_file_gets_memory_for_its_tensors_only(tmp_path: Path) -> None:
    """LeNet-5's builder runs a probe input through its convolutions to size fc1; a file could
    size that probe at 40 GB while its own tensors stay within bounds. The loader builds the
    model on the meta device only and gives memory to the tensors the file then fills."""
    devices: list[str] = []

    def build(probe: list[int] = [4]) -> nn.Module:  # noqa: B006 -- a file's kwargs are lists
        devices.append(torch.zeros(*probe).device.type)  # sized by the file, not one of the model's tensors
        return nn.Sequential(nn.Linear(4, 4))

    register_architecture("untrusted-probe", build, kwargs=("probe",))
    model = nn.Sequential(nn.Linear(4, 4))
    prune_(model, MagnitudePrune(sparsity=0.5))
    save_compressed(model, tmp_path / "m.dcz", arch={"name": "untrusted-probe", "kwargs": {"probe": [4]}})
    data = edited((tmp_path / "m.dcz").read_bytes(), lambda h: h["arch"]["kwargs"].update(probe=[1 << 20] * 2))
    loaded = load(data, tmp_path)  # a real probe of 2**40 floats would need 4 TiB
    assert devices == ["meta"]
    assert torch.equal(loaded[0].weight, model[0].weight) and torch.equal(loaded[0].bias, model[0].bias)


def test_a_model_with_buffers_the_file_does_not_hold_is_built_for_real(tmp_path: Path) -> None:
    def build() -> nn.Module:
        model = nn.Sequential(nn.Linear(4, 4))
        model[0].register_buffer("scale", torch.arange(4.0), persistent=False)  # not in state_dict, nor the file
        return model

    register_architecture("untrusted-nonpersistent", build)
    model = build()
    prune_(model, MagnitudePrune(sparsity=0.5))
    save_compressed(model, tmp_path / "m.dcz", arch={"name": "untrusted-nonpersistent"})
    loaded = load_compressed(tmp_path / "m.dcz")
    assert torch.equal(loaded[0].scale, torch.arange(4.0)) and torch.equal(loaded[0].weight, model[0].weight)


BOMBS = r'''
import resource, sys, zlib
from pathlib import Path
from dcsweep.compression import CompressedFileError, load_compressed, read_compressed

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

load_compressed(sys.argv[1])  # the untouched file, so that lazy imports and caches are warm
base = peak_mb()
for path in sys.argv[2:]:
    for reader in (load_compressed, read_compressed):
        try:
            reader(path)
        except CompressedFileError as exc:
            print(Path(path).name, reader.__name__, "refused:", str(exc)[-120:])
        else:
            raise SystemExit(f"{path} was accepted by {reader.__name__}")
print(f"GROWTH {peak_mb() - base:.0f}")
'''


def test_bombs_are_refused_before_they_allocate(tmp_path: Path) -> None:
    """The issue's bombs, in a fresh process whose peak memory is read after all of them."""
    good = good_file("ans")
    files = {"good": good, "huge-tensor": edited(good, _declare_huge)}
    header, body = split(good)
    files["header-bomb"] = pack(header, body, packed_header=_zlib_of_zeros(512 << 20))
    # a coder table that claims to inflate to 512 MiB: the first tensor's first table, replaced
    names = [r["n"] for r in header["tensors"]]
    rec = record(header, "1.weight")
    before = sum(sum(r["z"]) for r in header["tensors"][:names.index("1.weight")])
    start = before + rec["z"][0]  # the codebook comes first, the index table next
    bomb = b"\x01" + _zlib_of_zeros(512 << 20)
    old = rec["z"][1]
    rec["z"][1] = len(bomb)
    files["table-bomb"] = pack(header, body[:start] + bomb + body[start + old:])
    files["one-symbol"] = edited(good, _one_symbol_everywhere)
    paths = []
    for name, data in files.items():
        (tmp_path / f"{name}.dcz").write_bytes(data)
        paths.append(str(tmp_path / f"{name}.dcz"))
    code = "import sys; sys.path.insert(0, {!r})\nfrom tests.compression.test_untrusted import ARCH\n".format(str(
        Path(__file__).parents[2])) + textwrap.dedent(BOMBS)
    out = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]
    refused = [line for line in out.stdout.splitlines() if " refused: " in line]
    assert {line.split()[0] for line in refused} == {"huge-tensor.dcz", "header-bomb.dcz", "table-bomb.dcz",
                                                      "one-symbol.dcz"}
    assert "inflates past its limit" in out.stdout
    growth = float(out.stdout.split("GROWTH ")[1])
    assert growth < 150, out.stdout  # megabytes; any bomb expanded would take 512 MB or more


JSON = st.recursive(st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                    max_leaves=8)
FIELDS = ["n", "t", "d", "s", "p", "z", "nz", "k", "b", "g"]


@pytest.fixture(scope="module")
def fuzz_base() -> bytes:
    return good_file()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_headers_with_valid_checksums_raise_only_compressed_file_error(fuzz_base: bytes, tmp_path: Path,
                                                                              data: st.DataObject) -> None:
    header, body = split(fuzz_base)
    header = json.loads(json.dumps(header))
    for _ in range(data.draw(st.integers(1, 3))):
        rec = data.draw(st.sampled_from(header["tensors"]))
        where = data.draw(st.sampled_from(["any", "int", "shape"]))
        if where == "any":
            rec[data.draw(st.sampled_from(FIELDS))] = data.draw(JSON)
        elif where == "int":  # plausible numbers are the dangerous ones
            rec[data.draw(st.sampled_from(["nz", "k", "b", "g"]))] = data.draw(st.integers(0, 1 << 40))
        else:
            rec["s"] = data.draw(st.lists(st.integers(0, 1 << 20), max_size=4))
    if data.draw(st.booleans()):
        header[data.draw(st.sampled_from(["arch", "coder", "body", "tensors"]))] = data.draw(JSON)
    crafted = pack(header, body) if data.draw(st.booleans()) else pack(
        header, body, packed_header=zlib.compress(json.dumps(header).encode()))
    path = tmp_path / "fuzz.dcz"
    path.write_bytes(crafted)
    for reader in (lambda: load_compressed(path), lambda: load_compressed(path, mlp()), lambda: read_compressed(path),
                   lambda: size_report(path).format_table()):
        with contextlib.suppress(CompressedFileError):
            reader()


def test_names_with_control_characters_are_escaped(tmp_path: Path) -> None:
    model = nn.Sequential()
    model.add_module("evil\x1b]0;pwned\x07\x1b[2J", nn.Linear(4, 4))
    prune_(model, MagnitudePrune(sparsity=0.5))
    save_compressed(model, tmp_path / "e.dcz")
    model.add_module("dense\x1b[31m", nn.Linear(4, 4))  # a weight stored dense is named on a line of its own
    save_compressed(model, tmp_path / "e.dcz")
    table = size_report(tmp_path / "e.dcz").format_table()
    assert "\x1b" not in table and "\x07" not in table and "\\x1b[2J" in table and "dense\\x1b[31m" in table
    data = edited((tmp_path / "e.dcz").read_bytes(), lambda h: h["tensors"].append(h["tensors"][0]))
    with pytest.raises(CompressedFileError) as info:
        load(data, tmp_path)
    assert "\x1b" not in str(info.value) and "has two records" in str(info.value)


@pytest.mark.parametrize("body", [None, "12", True, -1, 1.5])
def test_a_body_size_that_is_not_a_count_is_refused(body: object, tmp_path: Path) -> None:
    """Found by the fuzz test: a null body size reached arithmetic before it was checked."""
    header, payload = split(good_file())
    crafted = pack(header, payload, packed_header=zlib.compress(json.dumps({**header, "body": body}).encode()))
    with pytest.raises(CompressedFileError, match="do not add up to the body size"):
        load(crafted, tmp_path)
