"""Entropy coding: ours (canonical Huffman, ANS) beside dahuffman, on real-shaped streams.

    python bench/coding.py [--n 5000000]

Streams: the cluster indices of a pruned layer shared with k=32 (linear init), i.e. 5-bit
symbols with the skew weight sharing really produces; and the relative position gaps of a layer
with 10% of its weights kept, at 5 bits. Targets: Huffman decode >= 10x dahuffman's; the ANS coder within
0.5% of the empirical (Shannon) entropy.

Then the widest alphabet a file allows: 150,000 near-uniform symbols over 65,536 (k = 65,536),
where Huffman wants 17-bit codes and ours are limited to 16 (package-merge: the optimal limited
code). Target: building the code and encoding take under a second (limiting lengths one step at
a time took 50 s here).
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import best_time, pruned_weights

from dcsweep.compression import huffman_decode, huffman_encode, kmeans_1d
from dcsweep.compression.coding import get_coder
from dcsweep.compression.sparse import encode_gaps


def entropy_bits(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / symbols.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def streams(n: int) -> dict[str, np.ndarray]:
    _, labels = kmeans_1d(pruned_weights(n), 32, "linear")
    rng = np.random.default_rng(1)
    positions = np.flatnonzero(rng.random(n * 10) < 0.1)[:n]  # 10% kept, like the weights
    return {"cluster indices (k=32)": labels.astype(np.int64), "position gaps (5 bits)": encode_gaps(positions, 5)}


def run(name: str, s: np.ndarray, dahuffman_n: int) -> None:
    h = entropy_bits(s)
    print(f"\n{name}: {s.size:,} symbols, entropy {h:.3f} bits/symbol")
    print(f"  {'coder':<12} {'bits/sym':>9} {'vs entropy':>10} {'encode M/s':>11} {'decode M/s':>11}")
    t_enc, (payload, lengths) = best_time(lambda: huffman_encode(s))
    t_dec, out = best_time(lambda: huffman_decode(payload, lengths, s.size))
    assert np.array_equal(out, s)
    ours_dec = s.size / t_dec
    row("huffman", len(payload) * 8 / s.size, h, s.size / t_enc, ours_dec)
    ans = get_coder("ans")
    size = int(s.max()) + 1
    t_enc, coded = best_time(lambda: ans.encode(s, size))
    t_dec, out = best_time(lambda: ans.decode(coded, size, s.size))
    assert np.array_equal(out, s)
    ans_bits = (len(coded.payload) + len(coded.table)) * 8 / s.size
    row("ans", ans_bits, h, s.size / t_enc, s.size / t_dec)
    import dahuffman

    part = s[:dahuffman_n].tolist()  # dahuffman is pure Python: time it on a slice, report M/s
    codec = dahuffman.HuffmanCodec.from_data(part)
    t_enc, data = best_time(lambda: codec.encode(part), 1)
    t_dec, back = best_time(lambda: codec.decode(data), 1)
    assert back == part
    peer_dec = len(part) / t_dec
    row("dahuffman", len(data) * 8 / len(part), entropy_bits(s[:dahuffman_n]), len(part) / t_enc, peer_dec)
    print(f"  target huffman decode >= 10x dahuffman: {ours_dec / peer_dec:.0f}x -> "
          f"{'PASS' if ours_dec >= 10 * peer_dec else 'FAIL'};  target ans within 0.5% of entropy: "
          f"{100 * (ans_bits / h - 1):+.3f}% -> {'PASS' if ans_bits <= 1.005 * h else 'FAIL'}")


def row(name: str, bits: float, h: float, enc: float, dec: float) -> None:
    print(f"  {name:<12} {bits:>9.4f} {100 * (bits / h - 1):>+9.2f}% {enc / 1e6:>11.1f} {dec / 1e6:>11.1f}")


def wide_alphabet(n: int = 150_000, alphabet: int = 65_536) -> None:
    s = np.random.default_rng(0).integers(0, alphabet, n)
    print(f"\nnear-uniform, {n:,} symbols over {alphabet:,}: entropy {entropy_bits(s):.3f} bits/symbol")
    t_enc, (payload, lengths) = best_time(lambda: huffman_encode(s, alphabet))
    t_dec, out = best_time(lambda: huffman_decode(payload, lengths, s.size))
    assert np.array_equal(out, s) and int(lengths.max()) <= 16
    import dahuffman

    part = s.tolist()
    t_peer, (codec, data) = best_time(lambda: (c := dahuffman.HuffmanCodec.from_data(part), c.encode(part)), 1)
    longest = max(bits for bits, _ in codec.get_code_table().values())
    print(f"  huffman (<= 16 bits)  {len(payload) * 8 / n:.4f} bits/sym, code + encode {t_enc:.3f} s, "
          f"decode {t_dec:.3f} s")
    print(f"  dahuffman (unlimited, longest code {longest} bits)  {len(data) * 8 / n:.4f} bits/sym, "
          f"code + encode {t_peer:.3f} s")
    print(f"  target code + encode < 1 s: {t_enc:.3f} s -> {'PASS' if t_enc < 1 else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5_000_000)
    parser.add_argument("--dahuffman-n", type=int, default=1_000_000)
    args = parser.parse_args()
    for name, s in streams(args.n).items():
        run(name, s, min(args.dahuffman_n, s.size))
    wide_alphabet()


if __name__ == "__main__":
    main()
