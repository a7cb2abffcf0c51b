"""Canonical Huffman coding of integer symbols, vectorised with numpy.

Codes are length-limited to 16 bits (alphabets of at most 2**16 symbols) so that decoding is a
lookup in one table of ``2**max_length`` entries. A code with a single symbol spends zero bits:
the count alone tells the decoder everything.

Encoding places every code into 32-bit big-endian words with two ``bincount`` calls (codes of one
word never overlap, so a sum is an OR). Decoding is sequential by nature; here the bit stream is
cut into chunks that are all decoded in lock step, each chunk starting at its first bit as if a
code began there. Huffman codes resynchronise within a few codes, so each chunk is then
re-decoded from where the previous chunk really ended only until it meets a position of its own
speculative decode; from there on both agree. No sync points are stored in the stream.
"""

from __future__ import annotations

import numpy as np

MAX_CODE_LENGTH = 16
MAX_ALPHABET = 1 << MAX_CODE_LENGTH


def _check_symbols(symbols: np.ndarray, alphabet_size: int | None) -> tuple[np.ndarray, int]:
    s = np.asarray(symbols)
    if s.ndim != 1:
        s = s.reshape(-1)
    if s.size and not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"symbols must be integers; got dtype {s.dtype}")
    top = int(s.max()) if s.size else -1
    if s.size and int(s.min()) < 0:
        raise ValueError(f"symbols must be >= 0; got {int(s.min())}")
    size = top + 1 if alphabet_size is None else int(alphabet_size)
    if not 1 <= max(size, 1) <= MAX_ALPHABET or top >= max(size, 1):
        raise ValueError(
            f"symbols must lie in an alphabet of at most {MAX_ALPHABET} symbols; "
            f"got alphabet_size={alphabet_size!r} and largest symbol {top}"
        )
    return s.astype(np.int64, copy=False), max(size, 1)


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal prefix-code length per symbol (0 for symbols that never occur), at most
    ``max_length`` bits: a Huffman code whenever Huffman's own lengths fit, else the best code
    that fits (package-merge, which finds both)."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, dtype=np.uint8)
    present = np.flatnonzero(counts)
    if present.size == 1:
        lengths[present] = 1
    if present.size <= 1:
        return lengths
    if present.size > 1 << max_length:
        raise ValueError(f"{present.size} symbols cannot have codes of at most {max_length} bits")
    lengths[present] = _package_merge(counts[present], max_length)
    return lengths


def _package_merge(counts: np.ndarray, limit: int) -> np.ndarray:
    """Optimal code lengths of at most ``limit`` bits for positive ``counts``: the package-merge
    algorithm (Larmore & Hirschberg 1990) in O(n·limit·log n), vectorised per level.

    Level ``limit`` holds the symbols (leaves) sorted by count; each level above merges the
    leaves with the pairwise sums ("packages") of the level below. The 2n-2 cheapest items of
    the top level are selected; a package selected at one level selects its two items at the
    next. A leaf's code length is the number of levels at which it is selected, and because
    leaves enter every level in the same order, the selected leaves of a level are a prefix
    of them: only the prefix lengths need counting, never the sets. (The heap-built Huffman
    tree this replaces took seconds at 65,536 symbols, and clamping its lengths to the limit
    took minutes.)
    """
    n = counts.size
    order = np.argsort(counts, kind="stable")  # rarest first; ties by symbol
    weights = counts[order].astype(np.int64)
    is_leaf_by_level: list[np.ndarray] = []
    packages = np.zeros(0, dtype=np.int64)
    for _ in range(limit):  # from the deepest level up
        items = np.concatenate((weights, packages))
        leaf = np.concatenate((np.ones(n, dtype=bool), np.zeros(packages.size, dtype=bool)))
        rank = np.argsort(items, kind="stable")  # ties: leaves first
        items, leaf = items[rank], leaf[rank]
        is_leaf_by_level.append(leaf)
        pairs = items.size // 2
        packages = items[: 2 * pairs : 2] + items[1 : 2 * pairs : 2]
    lengths = np.zeros(n, dtype=np.int64)
    take = 2 * n - 2
    for leaf in reversed(is_leaf_by_level):  # from the top level down
        chosen = leaf[:take]
        leaves = int(chosen.sum())
        lengths[:leaves] += 1  # the cheapest leaves: a prefix of the rarest-first order
        take = 2 * (take - leaves)
    out = np.empty(n, dtype=np.int64)
    out[order] = lengths
    return out


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code per symbol (right-aligned in ``lengths[s]`` bits; 0 where length is 0)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    _check_kraft(lengths)
    present = np.flatnonzero(lengths)
    order = present[np.lexsort((present, lengths[present]))]
    ln = lengths[order]
    # In canonical order, a code left-aligned to MAX_CODE_LENGTH bits is the Kraft sum so far.
    left = np.concatenate(([0], np.cumsum(1 << (MAX_CODE_LENGTH - ln))[:-1]))
    codes = np.zeros(lengths.size, dtype=np.uint64)
    codes[order] = (left >> (MAX_CODE_LENGTH - ln)).astype(np.uint64)
    return codes


def _check_kraft(lengths: np.ndarray) -> None:
    if lengths.size and (lengths.min() < 0 or lengths.max() > MAX_CODE_LENGTH):
        raise ValueError(f"code lengths must be in [0, {MAX_CODE_LENGTH}]; got max {lengths.max()}")
    present = lengths[lengths > 0]
    if np.sum(1 << (MAX_CODE_LENGTH - present)) > 1 << MAX_CODE_LENGTH:
        raise ValueError("code lengths violate Kraft's inequality: not a prefix code")


def huffman_encode(
    symbols: np.ndarray, alphabet_size: int | None = None
) -> tuple[bytes, np.ndarray]:
    """Code ``symbols`` (ints in ``[0, alphabet_size)``); returns ``(payload, code_lengths)``.

    ``huffman_decode(payload, code_lengths, len(symbols))`` gives the symbols back.
    """
    s, size = _check_symbols(symbols, alphabet_size)
    lengths = code_lengths(np.bincount(s, minlength=size))
    return encode_with(s, lengths), lengths


def encode_with(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """Code ``symbols`` with the canonical code of ``lengths`` (every symbol must have a code)."""
    s = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if s.size == 0 or np.count_nonzero(lengths) == 1:
        return b""
    codes = canonical_codes(lengths)
    ln = lengths.astype(np.int64)[s]
    if ln.min() == 0:
        raise ValueError("a symbol without a code length cannot be encoded")
    # In-place arithmetic throughout: at millions of symbols, fresh arrays cost more in page
    # faults than the arithmetic itself.
    start = np.cumsum(ln)
    total = int(start[-1])
    start -= ln
    shift = start & 31
    shift += ln
    np.subtract(64, shift, out=shift)
    placed = codes[s]
    placed <<= shift.view(np.uint64)  # a code of <= 16 bits at bit r of word w fits in w, w+1
    start >>= 5
    nwords = (total + 31) // 32 + 1
    words = np.bincount(start, weights=placed >> np.uint64(32), minlength=nwords)
    placed &= np.uint64(0xFFFFFFFF)
    start += 1
    words += np.bincount(start, weights=placed, minlength=nwords)
    return words.astype(">u4").tobytes()[: (total + 7) // 8]


def _decode_table(lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """Entry per ``max_len``-bit prefix: ``symbol << 5 | length`` (length 0 = no such code)."""
    lengths = lengths.astype(np.int64)
    max_len = int(lengths.max())
    present = np.flatnonzero(lengths)
    order = present[np.lexsort((present, lengths[present]))]
    span = 1 << (max_len - lengths[order])
    entries = np.repeat((order << 5) | lengths[order], span)
    table = np.zeros(1 << max_len, dtype=np.int32)
    table[: entries.size] = entries
    return table, max_len


def huffman_decode(payload: bytes, lengths: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` symbols coded in ``payload`` with the canonical code of ``lengths``.

    Raises ValueError when the payload is too short or holds a bit pattern that is no code.
    """
    lengths = np.asarray(lengths)
    if count < 0:
        raise ValueError(f"count must be >= 0; got {count}")
    _check_kraft(lengths.astype(np.int64))
    present = np.flatnonzero(lengths)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if present.size == 0:
        raise ValueError("an empty code cannot decode any symbol")
    if present.size == 1:
        return np.full(count, present[0], dtype=np.int64)
    # The work and memory of decoding follow the payload's length: bound it by the count first.
    bits = lengths.astype(np.int64)
    fewest, most = (count * int(bits[present].min()) + 7) // 8, (count * int(bits[present].max()) + 7) // 8
    if not fewest <= len(payload) <= most:
        raise ValueError(f"payload holds {len(payload)} bytes; {count} codes take {fewest} to {most}")
    table, max_len = _decode_table(lengths)
    total = len(payload) * 8
    padded = np.frombuffer(bytes(payload) + b"\0" * ((-len(payload)) % 4 + 8), dtype=">u4").astype(np.uint64)
    pairs = (padded[:-1] << np.uint64(32)) | padded[1:]
    symbols = _ChunkDecoder(pairs, table, max_len, total).run(count)
    used = int(bits[symbols].sum())
    if used > total:
        raise ValueError(f"payload ends inside its last code ({used} bits coded, {total} present)")
    if total - used >= 8:
        raise ValueError(f"payload holds {(total - used) // 8} bytes after its last code")
    return symbols


class _ChunkDecoder:
    """Lock-step decoding of fixed-size chunks of the bit stream.

    Fast path: every chunk is decoded from its first bit as if a code began there; chunk c is then
    re-decoded from where chunk c-1 ends only until it meets a position of its own speculative
    decode (variable-length codes resynchronise within a few codes). Codes that never
    resynchronise (near fixed-length ones, e.g. evenly used clusters) take the exact path: the
    exit of every chunk from each of its ``max_len`` possible start offsets, chained from chunk 0,
    gives every chunk's true start; then all chunks decode from there.
    """

    def __init__(self, pairs: np.ndarray, table: np.ndarray, max_len: int, total: int,
                 chunk_bits: int | None = None) -> None:
        self.pairs, self.table, self.max_len, self.total = pairs, table, max_len, total
        # ~8k chunks: enough lanes to amortise numpy's per-call cost, few enough steps.
        self.chunk = max(chunk_bits or max(256, total >> 13), 2 * max_len)
        self.cap = np.int64(total)  # nothing past the payload; also ends every lane

    def peek(self, pos: np.ndarray) -> np.ndarray:
        """Table entry (``symbol << 5 | length``) for the code starting at each bit position."""
        shift = (64 - self.max_len - (pos & 31)).astype(np.uint64)
        window = (self.pairs[pos >> 5] >> shift) & np.uint64((1 << self.max_len) - 1)
        return self.table[window.astype(np.int64)]

    def run(self, count: int) -> np.ndarray:
        starts = np.arange(0, max(self.total, 1), self.chunk, dtype=np.int64)
        ends = np.minimum(starts + self.chunk, self.total)
        spec_pos, spec_entry = self._speculate(starts, ends)
        valid = spec_pos < ends[:, None]
        spec_exit = np.where(valid, spec_pos + np.maximum(spec_entry & 31, 1), starts[:, None]).max(axis=1)
        is_spec = np.zeros(self.total + 64, dtype=bool)
        is_spec[spec_pos[valid]] = True
        synced, sync, fixes = self._resync(starts, ends, spec_exit, is_spec)
        if not synced:
            true_starts = self._true_starts(starts, ends)
            spec_pos, spec_entry = self._speculate(true_starts, ends)
            return self._finish(spec_entry[spec_pos < ends[:, None]], count)
        keep = valid & (spec_pos >= sync[:, None])
        out_pos, out = spec_pos[keep], spec_entry[keep]
        if fixes[0].size:
            order = np.argsort(fixes[0], kind="stable")
            out = np.insert(out, np.searchsorted(out_pos, fixes[0][order]), fixes[1][order])
        return self._finish(out, count)

    @staticmethod
    def _finish(entries: np.ndarray, count: int) -> np.ndarray:
        out = entries[:count]
        if out.size < count:
            raise ValueError(f"payload holds {out.size} symbols; {count} were expected")
        if np.any((out & 31) == 0):
            raise ValueError("payload holds a bit pattern that is not a code")
        return (out >> 5).astype(np.int64)

    def _speculate(self, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decode every chunk from ``starts``, all chunks per numpy call, until all leave."""
        pos = starts.copy()
        positions, entries = [], []
        while not np.all(pos >= ends):
            for _ in range(8):  # check for the end only now and then: it costs a pass too
                entry = self.peek(pos)
                positions.append(pos)
                entries.append(entry)
                # A length-0 entry is no code; step one bit so a wrong guess keeps moving.
                pos = np.minimum(pos + np.maximum(entry & 31, 1), self.cap)
        if not positions:
            empty = np.zeros((starts.size, 0), dtype=np.int64)
            return empty, empty
        return np.stack(positions, axis=1), np.stack(entries, axis=1)

    def _resync(self, starts: np.ndarray, ends: np.ndarray, spec_exit: np.ndarray, is_spec: np.ndarray
                ) -> tuple[bool, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Decode each chunk from the previous chunk's speculative exit until it meets its own
        speculative path (its ``sync`` position). False if some chunk never does: then a true
        start is unknown and the exact path must run."""
        sync = starts.copy()
        cursor = np.r_[0, spec_exit[:-1]].astype(np.int64)
        recs: list[tuple[np.ndarray, np.ndarray]] = []
        active = np.flatnonzero(cursor != starts)
        while active.size:
            p = cursor[active]
            inside = p < ends[active]
            if not inside.all():
                return False, sync, (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
            met = is_spec[p]
            sync[active[met]] = p[met]
            active = active[~met]
            if not active.size:
                break
            entry = self.peek(cursor[active])
            if np.any((entry & 31) == 0):
                raise ValueError("payload holds a bit pattern that is not a code")
            recs.append((cursor[active].copy(), entry))
            cursor[active] += entry & 31
        if not recs:
            return True, sync, (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        pos, entry = (np.concatenate(parts) for parts in zip(*recs, strict=True))
        return True, sync, (pos, entry)

    def _true_starts(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Each chunk's true first code: exits from every possible start offset, chained."""
        k = self.max_len
        lane_start = (starts[None, :] + np.arange(k)[:, None]).reshape(-1)
        lane_end = np.tile(ends, k)
        pos = np.minimum(lane_start, lane_end)
        while True:
            moving = pos < lane_end
            if not moving.any():
                break
            step = np.maximum(self.peek(np.where(moving, pos, 0)) & 31, 1)
            pos = np.where(moving, np.minimum(pos + step, self.cap), pos)
        exits = pos.reshape(k, -1)
        true = np.zeros(starts.size, dtype=np.int64)
        for c in range(1, starts.size):  # a few thousand table lookups
            offset = true[c - 1] - starts[c - 1]
            if not 0 <= offset < k:
                raise ValueError("payload holds a bit pattern that is not a code")
            true[c] = exits[offset, c - 1]
        return true
