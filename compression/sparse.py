"""Sparse positions as the paper stores them: relative gaps of a fixed index width.

Kept positions (row-major over the tensor) become gaps ``d = position - previous`` (>= 1).
A gap that fits in ``index_bits`` bits is stored as the symbol ``d - 1``; a larger one first
emits filler entries, each the symbol ``2**index_bits`` ("skip 2**index_bits positions, no
weight here"), the paper's filler zero. Because the filler is its own symbol, it needs no
entry in the cluster-index stream and structure never depends on a stored value being zero.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MIN_INDEX_BITS, MAX_INDEX_BITS = 1, 15


def check_index_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not (
        MIN_INDEX_BITS <= bits <= MAX_INDEX_BITS
    ):
        raise ValueError(f"index_bits must be an integer in [{MIN_INDEX_BITS}, {MAX_INDEX_BITS}]; got {bits!r}")
    return int(bits)


def gap_alphabet(bits: int) -> int:
    """Symbols ``0 .. 2**bits - 1`` are gaps, ``2**bits`` is the filler."""
    return (1 << bits) + 1


def encode_gaps(positions: np.ndarray, bits: int) -> np.ndarray:
    """Gap symbols (fillers included) for ascending ``positions``."""
    d: np.ndarray = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1  # zeros skipped
    fill = d >> bits
    if not fill.any():
        return d
    slots = np.cumsum(fill + 1) - 1  # where each real entry lands after its fillers
    symbols = np.full(int(slots[-1]) + 1, 1 << bits, dtype=np.int64)
    symbols[slots] = d & ((1 << bits) - 1)
    return symbols


def decode_gaps(symbols: np.ndarray, bits: int, size: int) -> np.ndarray:
    """Ascending positions from gap symbols; every position must lie in ``[0, size)``."""
    s = np.asarray(symbols, dtype=np.int64)
    filler = s == (1 << bits)
    advance = np.where(filler, 1 << bits, s + 1)
    positions = (np.cumsum(advance) - 1)[~filler]
    if positions.size and positions[-1] >= size:
        raise ValueError(f"sparse positions run past the tensor's {size} elements")
    return positions


def best_index_bits(positions: np.ndarray, estimate_bits: Callable[[np.ndarray], float]) -> int:
    """The index width whose coded gap stream is smallest, judged by ``estimate_bits(counts)``."""
    d: np.ndarray = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1
    if d.size == 0:
        return 4
    values: np.ndarray
    values, freq = np.unique(d, return_counts=True)
    best, best_cost = MIN_INDEX_BITS, np.inf
    for bits in range(MIN_INDEX_BITS, MAX_INDEX_BITS + 1):
        counts = np.bincount(values & ((1 << bits) - 1), weights=freq, minlength=1 << bits)
        counts = np.append(counts, np.dot(values >> bits, freq)).astype(np.int64)
        # The table of a wider alphabet costs too; a byte per present symbol is its order.
        cost = estimate_bits(counts) + 8 * np.count_nonzero(counts)
        if cost < best_cost:
            best, best_cost = bits, cost
        if values.max() >> bits == 0:
            break  # wider widths only grow the alphabet
    return best
