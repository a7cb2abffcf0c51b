"""Entropy coders and sparse gaps: exact round trips on any stream, sizes near the entropy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcsweep.compression import huffman_decode, huffman_encode
from dcsweep.compression.coding import CODERS, get_coder
from dcsweep.compression.huffman import _ChunkDecoder, _decode_table, canonical_codes, code_lengths
from dcsweep.compression.sparse import decode_gaps, encode_gaps, gap_alphabet

streams = st.one_of(
    st.lists(st.integers(0, 40), max_size=600),
    st.lists(st.integers(0, 3), max_size=2000),
    st.lists(st.just(7), max_size=50),
    st.lists(st.integers(0, 65535), max_size=200),
)


@settings(max_examples=200, deadline=None)
@given(streams)
def test_huffman_round_trip(symbols: list[int]) -> None:
    s = np.array(symbols, dtype=np.int64)
    payload, lengths = huffman_encode(s)
    assert np.array_equal(huffman_decode(payload, lengths, s.size), s)
    assert lengths.max(initial=0) <= 16
    if np.unique(s).size == 1:
        assert payload == b""  # one symbol: the count says it all


@settings(max_examples=100, deadline=None)
@given(streams, st.sampled_from(CODERS))
def test_coder_round_trip(symbols: list[int], name: str) -> None:
    s = np.array(symbols, dtype=np.int64)
    size = max(symbols, default=0) + 1
    coder = get_coder(name)
    coded = coder.encode(s, size)
    assert np.array_equal(coder.decode(coded, size, s.size), s)


def test_empty_and_single_symbol() -> None:
    for name in CODERS:
        coder = get_coder(name)
        assert coder.decode(coder.encode(np.zeros(0, dtype=np.int64), 5), 5, 0).size == 0
        coded = coder.encode(np.full(1000, 3), 5)
        assert coded.payload == b"" and coder.decode(coded, 5, 1000).tolist() == [3] * 1000


@pytest.mark.parametrize("chunk_bits", [32, 33, 47, 64, 100, 256])
def test_chunked_decoder_resynchronises(chunk_bits: int) -> None:
    """Tiny chunks force every resync path, including chunks left without meeting their own
    speculative path and the re-decoding of the chunk after them."""
    s = np.random.default_rng(chunk_bits).zipf(1.3, 20_000) % 40
    payload, lengths = huffman_encode(s, 40)
    table, max_len = _decode_table(lengths)
    padded = np.frombuffer(payload + b"\0" * ((-len(payload)) % 4 + 8), dtype=">u4").astype(np.uint64)
    pairs = (padded[:-1] << np.uint64(32)) | padded[1:]
    out = _ChunkDecoder(pairs, table, max_len, len(payload) * 8, chunk_bits=chunk_bits).run(s.size)
    assert np.array_equal(out, s)


@pytest.mark.parametrize("alphabet", [2, 32, 256])
def test_codes_that_never_resynchronise(alphabet: int) -> None:
    """Evenly used symbols get equal-length codes, which never fall back into step once
    misaligned: the decoder must find every chunk's true start another way."""
    s = np.random.default_rng(alphabet).integers(0, alphabet, 300_000)
    payload, lengths = huffman_encode(s, alphabet)
    assert len(set(lengths.tolist())) == 1
    assert np.array_equal(huffman_decode(payload, lengths, s.size), s)


def test_canonical_code_is_prefix_free_and_optimal() -> None:
    counts = np.array([45, 13, 12, 16, 9, 5])
    lengths = code_lengths(counts)
    assert lengths.tolist() == [1, 3, 3, 3, 4, 4]  # the textbook example
    codes = canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths, strict=True)]
    assert not any(a != b and b.startswith(a) for a in words for b in words)


def test_lengths_are_limited_to_16_bits() -> None:
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    lengths = code_lengths(np.array(fib))
    assert lengths.max() == 16 and np.sum(2.0 ** -lengths.astype(float)) <= 1.0
    s = np.repeat(np.arange(30), fib)
    payload, lens = huffman_encode(s)
    assert np.array_equal(huffman_decode(payload, lens, s.size), s)


def test_sizes_near_entropy_on_a_skewed_stream() -> None:
    rng = np.random.default_rng(0)
    p = np.array([0.9, 0.05, 0.03, 0.02])
    s = rng.choice(4, size=200_000, p=p)
    freq = np.bincount(s) / s.size
    entropy_bits = -(freq * np.log2(freq)).sum() * s.size
    huff = len(get_coder("huffman").encode(s, 4).payload) * 8
    ans = len(get_coder("ans").encode(s, 4).payload) * 8
    assert ans <= entropy_bits * 1.005 + 64
    assert huff >= s.size  # Huffman cannot go below one bit per symbol...
    assert ans < 0.7 * huff  # ...which is why the entropy-optimal coder exists


def test_corrupt_payloads_raise_value_error() -> None:
    s = np.random.default_rng(0).integers(0, 9, 5000)
    payload, lengths = huffman_encode(s, 9)
    with pytest.raises(ValueError, match="1003 bytes; 5000 codes take 1875 to 2500"):
        huffman_decode(payload[: len(payload) // 2], lengths, s.size)  # refused before decoding
    with pytest.raises(ValueError, match="symbols; 5000 were expected|ends inside its last code"):
        huffman_decode(payload[:-2], lengths, s.size)
    incomplete = np.array([1, 2, 0, 0], dtype=np.uint8)  # "11" is no code
    with pytest.raises(ValueError, match="not a code"):
        huffman_decode(b"\xff", incomplete, 4)
    with pytest.raises(ValueError, match="Kraft"):
        huffman_decode(b"\x00", np.array([1, 1, 1], dtype=np.uint8), 1)
    ans = get_coder("ans")
    coded = ans.encode(s, 9)
    with pytest.raises(ValueError):
        ans.decode(coded, 9, s.size + 1)
    with pytest.raises(ValueError, match="coder must be one of"):
        get_coder("zip")


def test_a_payload_must_end_with_its_last_code() -> None:
    lengths = np.array([1, 2, 2])  # codes 0, 10, 11
    assert huffman_decode(b"\x7e", lengths, 5).tolist() == [0, 2, 2, 2, 0]  # 0 11 11 11 0
    assert huffman_decode(b"\x7e", lengths, 4).tolist() == [0, 2, 2, 2]  # and a bit of padding
    with pytest.raises(ValueError, match="ends inside its last code"):  # the fifth code needs a ninth bit
        huffman_decode(b"\x7f", lengths, 5)
    with pytest.raises(ValueError, match="1 bytes after its last code"):
        huffman_decode(b"\x7e\x00", lengths, 5)
    with pytest.raises(ValueError, match="1000 bytes; 1 codes take 1 to 1"):  # 8,000 bits for one code
        huffman_decode(b"\x00" * 1000, lengths, 1)
    with pytest.raises(ValueError, match="0 bytes; 5 codes take 1 to 2"):
        huffman_decode(b"", lengths, 5)


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(0, 5000), max_size=300), st.integers(1, 15))
def test_gap_round_trip_with_fillers(positions: set[int], bits: int) -> None:
    p = np.array(sorted(positions), dtype=np.int64)
    symbols = encode_gaps(p, bits)
    assert symbols.max(initial=0) < gap_alphabet(bits)
    assert np.array_equal(decode_gaps(symbols, bits, 5001), p)


def test_gaps_follow_the_paper() -> None:
    # The paper's figure 2 idea: 3-bit gaps; a jump of more than 8 needs a filler.
    symbols = encode_gaps(np.array([1, 4, 15]), 3)
    assert symbols.tolist() == [1, 2, 8, 2]  # zeros skipped: 1, 2, then a filler (8) and 2
    with pytest.raises(ValueError, match="run past"):
        decode_gaps(symbols, 3, 10)


def _optimal_cost(counts: np.ndarray, limit: int) -> int:
    """The cheapest code of at most ``limit`` bits, by trying every length assignment (tiny
    alphabets only): the reference the length limiter must meet."""
    best = None
    for lengths in itertools.product(range(1, limit + 1), repeat=counts.size):
        if sum(2.0 ** -ln for ln in lengths) <= 1.0:
            cost = int(np.dot(counts, lengths))
            best = cost if best is None else min(best, cost)
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(40))
def test_length_limited_codes_are_optimal(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 7))
    counts = (rng.pareto(0.7, n) * 20).astype(np.int64) + 1  # skewed: Huffman wants long codes
    limit = int(rng.integers(int(np.ceil(np.log2(n))), 5))
    lengths = code_lengths(counts, limit).astype(np.int64)
    assert lengths.max() <= limit and np.sum(2.0 ** -lengths) <= 1.0
    assert int(np.dot(counts, lengths)) == _optimal_cost(counts, limit)


def test_a_full_near_uniform_alphabet_codes_quickly_and_exactly() -> None:
    """200,000 near-uniform symbols over 65,536: Huffman wants 17-bit codes, the limit is 16.
    Clamping lengths one step at a time took minutes here; package-merge takes milliseconds."""
    s = np.random.default_rng(0).integers(0, 65536, 200_000)
    payload, lengths = huffman_encode(s, 65536)
    assert int(lengths.max()) == 16
    assert np.array_equal(huffman_decode(payload, lengths, s.size), s)
    counts = np.bincount(s, minlength=65536)
    present = counts > 0
    assert np.sum(2.0 ** -lengths[present].astype(np.int64)) == 1.0  # a complete code: no bit wasted
