"""1-D k-means for weight sharing: ours beside scikit-learn and an exact solver, in one run.

    python bench/kmeans.py                 # 240k and 2.4M weights; 25M for ours (+ peers at k=4)
    python bench/kmeans.py --full          # peers at every size and k (slow: tens of minutes)

Peers: scikit-learn ``KMeans(init=<linear centroids>, n_init=1)`` (what public Deep Compression
code does) and ``ckwrap`` (Ckmeans.1d.dp, exact 1-D k-means). Target on 2.4M weights, k=32:
``optimal`` >= 50x faster than scikit-learn with SSE within 0.1% of the exact solver's,
``linear`` >= 50x faster than scikit-learn at no worse SSE.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from _common import best_time, pruned_weights, sse

from dcsweep.compression import kmeans_1d


def sklearn_linear(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    init = np.linspace(x.min(), x.max(), k).reshape(-1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=k, init=init, n_init=1, random_state=0).fit(x.reshape(-1, 1))
    return km.cluster_centers_.ravel(), km.labels_


def exact(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import ckwrap

    r = ckwrap.ckmeans(x.astype(np.float64), k)
    return r.centers, r.labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[240_000, 2_400_000, 25_000_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 16, 32, 256])
    parser.add_argument("--full", action="store_true", help="run the peers at every size and k")
    args = parser.parse_args()
    print(f"{'n':>10} {'k':>4} {'method':<22} {'time s':>9} {'SSE':>12} {'vs sklearn':>10} {'SSE vs exact':>12}")
    for n in args.sizes:
        x = pruned_weights(n)
        for k in args.ks:
            peers = args.full or n <= 2_400_000 or k == 4
            rows = {}
            for name, fn, repeat in (
                ("ours linear", lambda x=x, k=k: kmeans_1d(x, k, "linear"), 3),
                ("ours optimal", lambda x=x, k=k: kmeans_1d(x, k, "optimal"), 3),
                ("sklearn linear-init", lambda x=x, k=k: sklearn_linear(x, k), 1),
                ("exact (ckwrap)", lambda x=x, k=k: exact(x, k), 1),
            ):
                if name.startswith(("sklearn", "exact")) and not peers:
                    continue
                t, (c, lab) = best_time(fn, repeat)
                rows[name] = (t, sse(x, c, lab))
            ref_t = rows.get("sklearn linear-init", (None,))[0]
            ref_sse = rows.get("exact (ckwrap)", (None, None))[1]
            for name, (t, e) in rows.items():
                speed = f"{ref_t / t:9.1f}x" if ref_t else "         -"
                gap = f"{100 * (e / ref_sse - 1):+11.3f}%" if ref_sse else "           -"
                print(f"{n:>10} {k:>4} {name:<22} {t:>9.4f} {e:>12.5f} {speed} {gap}")
            if n == 2_400_000 and k == 32 and peers:
                _verdict(rows)
        print()


def _verdict(rows: dict[str, tuple[float, float]]) -> None:
    sk_t, sk_e = rows["sklearn linear-init"]
    ex_e = rows["exact (ckwrap)"][1]
    opt_t, opt_e = rows["ours optimal"]
    lin_t, lin_e = rows["ours linear"]
    ok_opt = sk_t / opt_t >= 50 and opt_e <= ex_e * 1.001
    ok_lin = sk_t / lin_t >= 50 and lin_e <= sk_e * (1 + 1e-6)
    print(f"{'':>16}target optimal >=50x sklearn, SSE within 0.1% of exact: "
          f"{sk_t / opt_t:.0f}x, {100 * (opt_e / ex_e - 1):+.4f}% -> {'PASS' if ok_opt else 'FAIL'}")
    print(f"{'':>16}target linear >=50x sklearn at no worse SSE: "
          f"{sk_t / lin_t:.0f}x, SSE {lin_e:.4f} vs {sk_e:.4f} -> {'PASS' if ok_lin else 'FAIL'}")


if __name__ == "__main__":
    main()
