"""Entropy coders selectable per .dcz file, each with a compact serialised table.

``huffman``: the paper's canonical Huffman code (:mod:`.huffman`); its table is the code length
of every symbol. ``ans``: range Asymmetric Numeral Systems from the ``constriction`` package, which
reaches the empirical entropy where Huffman cannot go below one bit per symbol (long runs of
equal gaps, one dominant cluster); its table is the exact count of every symbol, so encoder and
decoder build the same model. A stream with one distinct symbol costs no payload in either.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .huffman import MAX_ALPHABET, code_lengths, encode_with, huffman_decode

CODERS = ("huffman", "ans")


@dataclass(frozen=True)
class Coded:
    """One coded stream: the coder's table and the payload, both as bytes."""

    table: bytes
    payload: bytes


class Coder(Protocol):
    name: str

    def encode(self, symbols: np.ndarray, alphabet_size: int) -> Coded: ...

    def decode(self, coded: Coded, alphabet_size: int, count: int) -> np.ndarray: ...

    def estimate_bits(self, counts: np.ndarray) -> float: ...


# -- table serialisation --------------------------------------------------------------------

def _pack_table(raw: bytes) -> bytes:
    """One flag byte, then the raw table or its zlib form, whichever is shorter."""
    packed = zlib.compress(raw, 9)
    return b"\x01" + packed if len(packed) < len(raw) else b"\x00" + raw


def _unpack_table(table: bytes, limit: int) -> bytes:
    """The raw table, at most ``limit`` bytes however well its zlib form claims to inflate."""
    if not table:
        raise ValueError("coder table is empty")
    if table[0] == 0:
        return table[1:]
    if table[0] == 1:
        return inflate(table[1:], limit, "coder table")
    raise ValueError(f"coder table flag must be 0 or 1; got {table[0]}")


def inflate(data: bytes | memoryview, limit: int, what: str) -> bytes:
    """zlib-inflate ``data`` to at most ``limit`` bytes: a bomb stops at the limit."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit)
    except zlib.error as exc:
        raise ValueError(f"{what} does not inflate: {exc}") from None
    if d.unconsumed_tail:
        raise ValueError(f"{what} inflates past its limit of {limit} bytes")
    if not d.eof or d.unused_data:
        raise ValueError(f"{what} is not one whole zlib stream")
    return out


def _varints(values: np.ndarray) -> bytes:
    out = bytearray()
    for v in values.tolist():
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


_MAX_VARINT = 9  # bytes of one count: 63 bits, so every count fits an int64


def _read_varints(data: bytes, count: int) -> np.ndarray:
    values = np.zeros(count, dtype=np.int64)
    i = 0
    for n in range(count):
        v = shift = 0
        while True:
            if i >= len(data) or shift >= 7 * _MAX_VARINT:
                raise ValueError("coder table ends inside a number")
            byte = data[i]
            i += 1
            v |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        values[n] = v
    if i != len(data):
        raise ValueError(f"coder table has {len(data) - i} trailing bytes")
    return values


def _counts(symbols: np.ndarray, alphabet_size: int) -> np.ndarray:
    if not 1 <= alphabet_size <= MAX_ALPHABET:
        raise ValueError(f"alphabet_size must be in [1, {MAX_ALPHABET}]; got {alphabet_size}")
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet_size):
        raise ValueError(f"symbols must lie in [0, {alphabet_size}); got [{symbols.min()}, {symbols.max()}]")
    return np.bincount(symbols, minlength=alphabet_size)


# -- coders ---------------------------------------------------------------------------------

class HuffmanCoder:
    name = "huffman"

    def encode(self, symbols: np.ndarray, alphabet_size: int) -> Coded:
        counts = _counts(symbols, alphabet_size)
        lengths = code_lengths(counts)
        # One byte per symbol (lengths reach 16, one past a nibble); zlib squeezes the long
        # zero runs of sparse alphabets such as wide position gaps.
        return Coded(_pack_table(lengths.astype(np.uint8).tobytes()), encode_with(symbols, lengths))

    def decode(self, coded: Coded, alphabet_size: int, count: int) -> np.ndarray:
        lengths = np.frombuffer(_unpack_table(coded.table, alphabet_size), dtype=np.uint8)
        if lengths.size != alphabet_size:
            raise ValueError(f"Huffman table has {lengths.size} lengths; alphabet has {alphabet_size}")
        if count and np.count_nonzero(lengths) == 1 and coded.payload:
            raise ValueError("a one-symbol Huffman stream has no payload")
        return huffman_decode(coded.payload, lengths, count)

    def estimate_bits(self, counts: np.ndarray) -> float:
        lengths = code_lengths(counts)
        if np.count_nonzero(lengths) <= 1:
            return 0.0
        return float(np.dot(counts, lengths.astype(np.int64)))


class AnsCoder:
    name = "ans"

    @staticmethod
    def _model(counts: np.ndarray) -> Any:  # constriction ships no type information
        import constriction

        present = counts[counts > 0].astype(np.float64)
        return constriction.stream.model.Categorical(present / present.sum(), perfect=False)

    def encode(self, symbols: np.ndarray, alphabet_size: int) -> Coded:
        counts = _counts(symbols, alphabet_size)
        table = _pack_table(_varints(counts))
        if np.count_nonzero(counts) <= 1:
            return Coded(table, b"")
        import constriction

        # Code ranks among the symbols that occur: constriction gives every symbol of the model's
        # alphabet some probability, so absent ones would cost bits for nothing.
        rank = np.cumsum(counts > 0) - 1
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(rank[symbols].astype(np.int32), self._model(counts))
        return Coded(table, coder.get_compressed().astype("<u4").tobytes())

    def decode(self, coded: Coded, alphabet_size: int, count: int) -> np.ndarray:
        counts = _read_varints(_unpack_table(coded.table, _MAX_VARINT * alphabet_size), alphabet_size)
        present = np.flatnonzero(counts)
        total = sum(counts.tolist())  # Python ints: int64 sums of hostile counts could wrap
        if total != count:
            raise ValueError(f"ANS table counts {total} symbols; {count} were expected")
        if present.size <= 1:
            if coded.payload:
                raise ValueError("a one-symbol ANS stream has no payload")
            return np.full(count, present[0] if present.size else 0, dtype=np.int64)
        if len(coded.payload) % 4:
            raise ValueError(f"ANS payload must be whole 32-bit words; got {len(coded.payload)} bytes")
        import constriction

        words = np.frombuffer(coded.payload, dtype="<u4").astype(np.uint32)
        coder = constriction.stream.stack.AnsCoder(words)
        ranks = coder.decode(self._model(counts), count)
        if not coder.is_empty():
            raise ValueError("ANS payload holds more than the expected symbols")
        return present[ranks.astype(np.int64)]

    def estimate_bits(self, counts: np.ndarray) -> float:
        c = counts[counts > 0].astype(np.float64)
        if c.size <= 1:
            return 0.0
        return float(-(c * np.log2(c / c.sum())).sum()) + 32.0


_CODERS: dict[str, Coder] = {"huffman": HuffmanCoder(), "ans": AnsCoder()}


def get_coder(name: str) -> Coder:
    try:
        return _CODERS[name]
    except KeyError:
        raise ValueError(f"coder must be one of {list(CODERS)}; got {name!r}") from None
