"""The .dcz container: a model's tensors, coded, behind checksums.

Layout (all integers little-endian)::

    magic      8 bytes   b"\\x89DCZ\\r\\n\\x1a\\n"   (binary-safe, like PNG's)
    version    u16       FORMAT_VERSION; a reader refuses newer ones
    header_len u32
    header     zlib-compressed JSON: arch, coder, body size, one record per tensor
    header_crc u32       CRC-32 of everything above
    body       the parts of every tensor, in record order
    body_crc   u32       CRC-32 of the body

A tensor record has a kind: ``shared`` (codebook, cluster-index table and stream, gap table and
stream), ``sparse`` (gap table and stream, the kept values raw) or ``dense`` (raw bytes). Raw
tensors are stored little-endian in their own dtype, so decoding is bit-exact. Nothing is
unpickled and nothing named in the file is executed.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ._config import Rules, match_rule
from .coding import Coded, get_coder, inflate
from .errors import CompressedFileError
from .layers import Masked, original, parametrization, parametrizations, tensor
from .sparse import (
    MAX_INDEX_BITS,
    MIN_INDEX_BITS,
    best_index_bits,
    check_index_bits,
    decode_gaps,
    encode_gaps,
    gap_alphabet,
)

MAGIC = b"\x89DCZ\r\n\x1a\n"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sHI")
_CRC = struct.Struct("<I")
KINDS = {  # kind -> its parts, in file order
    "dense": ("data",),
    "sparse": ("gap_table", "gaps", "values"),
    "shared": ("codebook", "index_table", "indices", "gap_table", "gaps"),
}
DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool)}
MAX_HEADER = 64 << 20  # bytes of packed header
MAX_HEADER_JSON = 64 << 20  # bytes the header may inflate to (a record is about 100 bytes)
MAX_NAME = 1024  # characters of a tensor name
MAX_DIMS = 64  # dimensions of a tensor
MAX_CODEBOOK = 1 << 16
MAX_ELEMENTS = 1 << 40  # of one tensor, and of any one dimension (a zero-size tensor too)
MAX_COUNT = 1 << 62  # any other integer of a record: part sizes in bytes, counts
HEADER_KEYS = frozenset({"arch", "coder", "body", "tensors"})
RECORD_KEYS = frozenset({"n", "t", "d", "s", "p", "z", "nz", "k", "b", "g"})
#: A header inflates to at most this many times its packed size. Ours: 3-5x for real models,
#: 30x for 3,000 identical layers; a JSON bomb of empty objects: about 1000x, and each inflated
#: byte of it takes 25 bytes once parsed into Python objects.
MAX_HEADER_INFLATION = 128
#: Loading a file without a model instance gives its tensors at most this many elements per
#: byte of file. The paper's best ratio is 49x (about 12 weights per byte); 1024 leaves room for
#: far sparser models and still refuses a 7 KB file that declares a billion weights.
ELEMENTS_PER_BYTE = 1024

if sys.byteorder != "little":  # raw tensors are written in native order
    raise ImportError("dcsweep.compression's .dcz files need a little-endian machine")


@dataclass(frozen=True)
class Record:
    """One tensor in a .dcz file; ``parts`` maps part name to byte length, in file order."""

    name: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    is_param: bool
    parts: dict[str, int]
    nonzero: int
    k: int = 0
    index_bits: int = 0
    entries: int = 0  # gap symbols, fillers included

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"n": self.name, "t": self.kind, "d": self.dtype, "s": list(self.shape),
                "p": int(self.is_param), "z": list(self.parts.values()), "nz": self.nonzero,
                "k": self.k, "b": self.index_bits, "g": self.entries}

    @classmethod
    def from_json(cls, raw: Any) -> Record:
        try:
            kind, sizes = raw["t"], raw["z"]
            shape = tuple(raw["s"])
            ints = (*shape, *sizes, raw["nz"], raw["k"], raw["b"], raw["g"])
            ok = (set(raw) == RECORD_KEYS and isinstance(raw["n"], str) and 0 < len(raw["n"]) <= MAX_NAME
                  and raw["d"] in DTYPES and len(shape) <= MAX_DIMS and isinstance(sizes, list)
                  and len(sizes) == len(KINDS[kind])
                  and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_COUNT for v in ints)
                  and all(v <= MAX_ELEMENTS for v in shape) and math.prod(shape) <= MAX_ELEMENTS)
            rec = cls(raw["n"], kind, raw["d"], shape, bool(raw["p"]), dict(zip(KINDS[kind], sizes, strict=True)),
                      raw["nz"], raw["k"], raw["b"], raw["g"]) if ok else None
        except (KeyError, TypeError, ValueError):
            rec = None
        problem = rec.problem() if rec is not None else ("fields are missing, unknown, of the wrong type or "
                                                         f"out of range (at most {MAX_ELEMENTS} elements)")
        if rec is None or problem:
            raise CompressedFileError(f"malformed tensor record in header ({problem}): {_excerpt(raw)}")
        return rec

    def problem(self) -> str | None:
        """Why the record's numbers cannot describe a real tensor, or None: every part size is
        fixed by the shape, dtype, counts and codebook size, so nothing later can be asked to
        allocate more than the record declares."""
        itemsize = DTYPES[self.dtype].itemsize
        expected: dict[str, int] = {}
        if self.kind == "dense":
            if (self.nonzero, self.k, self.index_bits, self.entries) != (self.numel, 0, 0, 0):
                return "a dense tensor has nonzero == numel and no k, index bits or gaps"
            expected["data"] = self.numel * itemsize
        else:
            if not MIN_INDEX_BITS <= self.index_bits <= MAX_INDEX_BITS:
                return f"index bits must be in [{MIN_INDEX_BITS}, {MAX_INDEX_BITS}]"
            # each filler skips 2**bits positions, so a tensor holds at most numel >> bits of them
            if not self.nonzero <= self.entries <= self.nonzero + (self.numel >> self.index_bits):
                return "gap count does not fit the tensor's size"
            if self.nonzero > self.numel:
                return "more nonzeros than elements"
            if self.kind == "sparse":
                if self.k:
                    return "a sparse tensor has no codebook"
                expected["values"] = self.nonzero * itemsize
            else:
                if not 1 <= self.k <= MAX_CODEBOOK:
                    return f"codebook size must be in [1, {MAX_CODEBOOK}]"
                expected["codebook"] = self.k * itemsize
        wrong = [part for part, size in expected.items() if self.parts[part] != size]
        return f"{', '.join(wrong)} size does not match the shape and dtype" if wrong else None


# -- model -> records -------------------------------------------------------------------------

def model_tensors(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, bool]]:
    """(qualified name, module, attribute, is_parameter) of every tensor a file must hold."""
    for prefix, module in model.named_modules():
        if ".parametrizations." in f".{prefix}.":
            continue  # internals of a parametrization: covered by the parametrized tensor
        dot = f"{prefix}." if prefix else ""
        names = [(n, True) for n, p in module._parameters.items() if p is not None]
        if parametrize.is_parametrized(module):
            for n, plist in parametrizations(module).items():  # weight_norm's have original0, original1
                names.append((n, isinstance(plist._parameters.get("original", plist._parameters.get("original0")),
                                            nn.Parameter)))
        names += [(n, False) for n, b in module._buffers.items()
                  if b is not None and n not in module._non_persistent_buffers_set]
        for attr, is_param in names:
            yield dot + attr, module, attr, is_param


def _raw(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _dtype_name(t: torch.Tensor) -> str:
    name = str(t.dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"cannot store dtype {name}; supported: {sorted(DTYPES)}")
    return name


def _gap_parts(positions: np.ndarray, name: str, coder: str, index_bits: Any) -> tuple[int, int, Coded]:
    bits = match_rule(name, index_bits, None) if isinstance(index_bits, Mapping) else index_bits
    c = get_coder(coder)
    bits = check_index_bits(bits) if bits is not None else best_index_bits(positions, c.estimate_bits)
    gaps = encode_gaps(positions, bits)
    return bits, gaps.size, c.encode(gaps, gap_alphabet(bits))


def encode_tensor(name: str, module: nn.Module, attr: str, is_param: bool,
                  coder: str, index_bits: Any) -> tuple[Record, list[bytes]]:
    value = tensor(module, attr).detach()
    p = parametrization(module, attr)
    dtype = _dtype_name(value)
    if p is None:
        size = value.numel() * value.element_size()
        return Record(name, "dense", dtype, tuple(value.shape), is_param, {"data": size}, value.numel()), [_raw(value)]
    flat_mask = p.mask.detach().to("cpu").reshape(-1).numpy()
    positions = np.flatnonzero(flat_mask)
    bits, entries, gaps = _gap_parts(positions, name, coder, index_bits)
    if isinstance(p, Masked):
        values = _raw(value.reshape(-1)[torch.from_numpy(positions).to(value.device)])
        blobs = [gaps.table, gaps.payload, values]
        kind = "sparse"
        k = 0
    else:
        codebook = original(module, attr).detach()
        k = p.k
        labels = p.indices.detach().to("cpu").reshape(-1).numpy()[positions].astype(np.int64)
        idx = get_coder(coder).encode(labels, k)
        blobs = [_raw(codebook), idx.table, idx.payload, gaps.table, gaps.payload]
        kind = "shared"
    parts = dict(zip(KINDS[kind], map(len, blobs), strict=True))
    return Record(name, kind, dtype, tuple(value.shape), is_param, parts, int(positions.size), k, bits,
                  entries), blobs


def encode_model(model: nn.Module, coder: str, index_bits: int | Mapping[str, int] | None,
                 arch: dict[str, Any] | None) -> bytes:
    get_coder(coder)  # refuse an unknown coder before any work
    rules = Rules(index_bits) if isinstance(index_bits, Mapping) else index_bits
    if isinstance(index_bits, Mapping):
        for v in index_bits.values():
            if v is not None:
                check_index_bits(v)
    elif index_bits is not None:
        check_index_bits(index_bits)
    records, blobs = [], []
    for name, module, attr, is_param in model_tensors(model):
        rec, parts = encode_tensor(name, module, attr, is_param, coder, rules)
        records.append(rec)
        blobs.extend(parts)
    body = b"".join(blobs)
    return pack({"arch": arch, "coder": coder, "body": len(body), "tensors": [r.to_json() for r in records]}, body)


def pack(header: dict[str, Any], body: bytes, packed_header: bytes | None = None) -> bytes:
    """The container around ``header`` (its ``body`` size filled in) and ``body``, checksums
    included. ``packed_header`` replaces the header's zlib form (tests craft hostile ones)."""
    if packed_header is None:
        packed_header = zlib.compress(json.dumps({**header, "body": len(body)}, separators=(",", ":")).encode(), 9)
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(packed_header)) + packed_header
    return prefix + _CRC.pack(zlib.crc32(prefix)) + body + _CRC.pack(zlib.crc32(body))


# -- bytes -> records ----------------------------------------------------------------------

@dataclass(frozen=True)
class Parsed:
    header: dict[str, Any]
    records: tuple[Record, ...]
    body: memoryview
    container_bytes: int  # magic, version, lengths, header, checksums


def parse(data: bytes | memoryview) -> Parsed:
    """Check magic, version, lengths and checksums; raise CompressedFileError on any doubt."""
    view = memoryview(data)
    if len(view) < _PREFIX.size:
        raise CompressedFileError(f"file is truncated: {len(view)} bytes is shorter than a .dcz prefix")
    magic, version, header_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise CompressedFileError("not a .dcz file: bad magic bytes")
    if version > FORMAT_VERSION:
        raise CompressedFileError(
            f"file format version {version} is newer than this dcsweep reads ({FORMAT_VERSION}); upgrade dcsweep")
    if version < 1:
        raise CompressedFileError(f"file format version {version} is not valid")
    head_end = _PREFIX.size + header_len
    if header_len > MAX_HEADER or len(view) < head_end + _CRC.size:
        raise CompressedFileError("file is truncated inside its header")
    (crc,) = _CRC.unpack_from(view, head_end)
    if zlib.crc32(view[:head_end]) != crc:
        raise CompressedFileError("header checksum mismatch: the file is corrupted")
    try:
        inflated_limit = min(MAX_HEADER_JSON, max(1 << 16, MAX_HEADER_INFLATION * header_len))
        header = json.loads(inflate(view[_PREFIX.size:head_end], inflated_limit, "header"))
        records = _records(header)
        body_len = header["body"]
        get_coder(header["coder"])
    except CompressedFileError:
        raise
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CompressedFileError(f"header is not valid: {type(exc).__name__}: {str(exc)[:200]}") from None
    if (isinstance(body_len, bool) or not isinstance(body_len, int)
            or sum(sum(r.parts.values()) for r in records) != body_len):
        raise CompressedFileError("header part sizes do not add up to the body size")
    body_start = head_end + _CRC.size
    expected = body_start + body_len + _CRC.size
    if len(view) < expected:
        raise CompressedFileError(f"file is truncated: {len(view)} bytes of {expected}")
    if len(view) > expected:
        raise CompressedFileError(f"file has {len(view) - expected} unexpected trailing bytes")
    body = view[body_start:body_start + body_len]
    if zlib.crc32(body) != _CRC.unpack_from(view, expected - _CRC.size)[0]:
        raise CompressedFileError("body checksum mismatch: the file is corrupted")
    return Parsed(header, records, body, expected - body_len)


def _excerpt(raw: Any, limit: int = 200) -> str:
    """The start of a value from a file, for an error message: printable, and never an error
    itself (Python refuses to print integers of over 4,300 digits)."""
    try:
        return printable(str(raw), limit)
    except ValueError:
        return f"<a {type(raw).__name__} too large to show>"


def printable(name: str, limit: int = 100) -> str:
    """A name from a file as it may be shown on a terminal: control characters escaped."""
    return name[:limit] if name[:limit].isprintable() else ascii(name[:limit])[1:-1]


def _records(header: Any) -> tuple[Record, ...]:
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise ValueError("the header is not an object with a 'tensors' list")
    if unknown := set(header) - HEADER_KEYS:  # a later format adds keys with a new version
        raise ValueError(f"the header has unknown keys {[_excerpt(k, 40) for k in sorted(unknown)[:5]]}; "
                         f"version {FORMAT_VERSION} has {sorted(HEADER_KEYS)}")
    arch = header.get("arch")
    if arch is not None and not (isinstance(arch, dict) and isinstance(arch.get("name"), str)
                                 and isinstance(arch.get("kwargs", {}), dict)):
        raise ValueError("the architecture record is not an object with a string 'name' and a 'kwargs' object")
    records = tuple(Record.from_json(r) for r in header["tensors"])
    seen: set[str] = set()
    for r in records:
        if r.name in seen:
            raise CompressedFileError(f"tensor {printable(r.name)!r} has two records")
        seen.add(r.name)
    return records


def parse_file(path: str | Path) -> Parsed:
    """``parse`` of a file on disk; errors name the path."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise CompressedFileError(f"{path} is a directory, not a .dcz file") from None
    except OSError as exc:
        raise CompressedFileError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        return parse(data)
    except CompressedFileError as exc:
        raise CompressedFileError(f"{path}: {exc}") from None


def _parts(parsed: Parsed) -> Iterator[tuple[Record, dict[str, bytes]]]:
    offset = 0
    for rec in parsed.records:
        blobs = {}
        for part, size in rec.parts.items():
            blobs[part] = bytes(parsed.body[offset:offset + size])
            offset += size
        yield rec, blobs


@dataclass(frozen=True)
class Decoded:
    """A decoded tensor: ``value`` always; ``mask``/``codebook``/``indices`` when compressed."""

    record: Record
    value: torch.Tensor
    mask: torch.Tensor | None = None
    codebook: torch.Tensor | None = None
    indices: torch.Tensor | None = None


def _tensor(raw: bytes, dtype: str, shape: tuple[int, ...], what: str) -> torch.Tensor:
    d = DTYPES[dtype]
    itemsize = torch.empty((), dtype=d).element_size()
    if len(raw) != math.prod(shape) * itemsize:
        raise ValueError(f"{what} holds {len(raw)} bytes; {math.prod(shape)} x {itemsize} expected")
    if not raw:
        return torch.zeros(shape, dtype=d)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(d).reshape(shape)


def declared_elements(parsed: Parsed) -> int:
    return sum(r.numel for r in parsed.records)


def default_max_elements(parsed: Parsed) -> int:
    return ELEMENTS_PER_BYTE * (parsed.container_bytes + len(parsed.body))


def decode_records(parsed: Parsed, max_elements: int | None = None) -> Iterator[Decoded]:
    """Every tensor, decoded. The file's tensors may total at most ``max_elements`` elements
    (default ELEMENTS_PER_BYTE per byte of file), checked before anything is allocated."""
    limit = default_max_elements(parsed) if max_elements is None else max_elements
    total = declared_elements(parsed)
    if total > limit:
        raise CompressedFileError(
            f"the file declares {total} tensor elements, more than the {limit} allowed for it "
            f"({ELEMENTS_PER_BYTE} per byte of file unless max_elements= or a model says otherwise)")
    coder = get_coder(parsed.header["coder"])
    for rec, blobs in _parts(parsed):
        try:
            yield _decode_one(rec, blobs, coder)
        except ValueError as exc:
            raise CompressedFileError(f"tensor {printable(rec.name)!r}: {exc}") from None


def _decode_one(rec: Record, blobs: dict[str, bytes], coder: Any) -> Decoded:
    if rec.kind == "dense":
        return Decoded(rec, _tensor(blobs["data"], rec.dtype, rec.shape, "dense data"))
    gaps = coder.decode(Coded(blobs["gap_table"], blobs["gaps"]), gap_alphabet(rec.index_bits), rec.entries)
    positions = decode_gaps(gaps, rec.index_bits, rec.numel)
    if positions.size != rec.nonzero:
        raise ValueError(f"{positions.size} positions decoded; header says {rec.nonzero}")
    mask = torch.zeros(rec.numel, dtype=torch.bool)
    pos = torch.from_numpy(positions)
    mask[pos] = True
    value = torch.zeros(rec.numel, dtype=DTYPES[rec.dtype])
    if rec.kind == "sparse":
        value[pos] = _tensor(blobs["values"], rec.dtype, (rec.nonzero,), "kept values")
        return Decoded(rec, value.view(rec.shape), mask.view(rec.shape))
    codebook = _tensor(blobs["codebook"], rec.dtype, (rec.k,), "codebook")
    labels = coder.decode(Coded(blobs["index_table"], blobs["indices"]), rec.k, rec.nonzero)
    indices = torch.full((rec.numel,), rec.k, dtype=torch.int32)
    indices[pos] = torch.from_numpy(labels.astype(np.int32))
    value[pos] = codebook[torch.from_numpy(labels)]
    return Decoded(rec, value.view(rec.shape), mask.view(rec.shape), codebook, indices.view(rec.shape))
