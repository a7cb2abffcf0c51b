"""The library stays a library: a curated API, and no Ray or MLflow behind it."""

from __future__ import annotations

import subprocess
import sys

import dcsweep.compression as compression

PUBLIC = ["prune_", "MagnitudePrune", "share_weights_", "KMeansShare", "kmeans_1d", "huffman_encode",
          "huffman_decode", "save_compressed", "load_compressed", "size_report", "CompressedFileError"]


def test_public_api_names() -> None:
    assert set(PUBLIC) <= set(compression.__all__)
    assert all(hasattr(compression, name) for name in compression.__all__)


def test_importing_compression_imports_neither_ray_nor_mlflow() -> None:
    code = ("import sys, dcsweep.compression as c; c.size_report; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
