#!/usr/bin/env bash
# Issue 11's GPU check, one prepared script: the vgg19bn-cifar10 smoke space and the default
# sweep (lenet300-digits), each with and without shared stages (bench/sweep_sharing.py), on a
# machine with a CUDA device.
#
#   bench/gpu_sweeps.sh [PART ...]     # results and nvidia-smi samples go to $OUT
#
# Parts: vgg (the smoke space: its two trials, one pruned stage between them), default (the
# 42-trial default sweep) and vgg-grid (the smoke settings over the space's whole 2 x 4 grid:
# two pruned stages, each shared by four trials). No part named: vgg and default.
#
# Such a machine has no network: CIFAR-10 cannot be fetched there, so a synthetic set in
# CIFAR-10's binary on-disk format and of its real size (50,000 + 10,000 images, a learnable bar
# per class) stands in. Timings are what it measures; its accuracies mean nothing.
# DCSWEEP_SITE may name a tarball of the Python dependencies to unpack first (a machine
# without a package index); DCSWEEP_INSTALL=1 installs this checkout without its dependencies.
set -euo pipefail
parts=" ${*:-vgg default} "
OUT=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

if [[ -n "${DCSWEEP_SITE:-}" && ! -d /tmp/site/ray ]]; then
    mkdir -p /tmp/site && tar -xJf "$DCSWEEP_SITE" -C /tmp/site
fi
if [[ -d /tmp/site ]]; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    # an older typing_extensions than pydantic needs: the tarball's own, kept apart
    python3 -c "import pydantic" 2>/dev/null || export PYTHONPATH=/tmp/site/_fallback:$PYTHONPATH
fi
if [[ "${DCSWEEP_INSTALL:-0}" == 1 ]] && ! command -v dcsweep >/dev/null; then
    python3 -m pip install -q --no-deps --no-index --no-build-isolation .
fi
python3 -c "import torch, ray, mlflow, dcsweep.runner.cli; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '', 'ray', ray.__version__, 'mlflow', mlflow.__version__)"
echo "cpus: $(nproc)"

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 2 >"$OUT/smi.csv" 2>&1 &
smi=$!
trap 'kill $smi 2>/dev/null || true' EXIT

root=/tmp/cifar10-synthetic
if [[ $parts == *" vgg"* && ! -d $root ]]; then
    python3 - "$root" <<'EOF'
import sys
from pathlib import Path
import numpy as np
folder = Path(sys.argv[1]) / "cifar-10-batches-bin"
folder.mkdir(parents=True, exist_ok=True)
for i, name in enumerate([f"data_batch_{j}.bin" for j in range(1, 6)] + ["test_batch.bin"]):
    rng = np.random.default_rng(i)
    labels = np.arange(10_000) % 10
    images = rng.integers(0, 60, (10_000, 3, 32, 32), dtype=np.uint8)
    for c in range(10):  # a learnable bar per class
        images[labels == c, c % 3, :, : 3 + c] = 250
    records = np.concatenate((labels[:, None].astype(np.uint8), images.reshape(10_000, -1)), 1)
    (folder / name).write_bytes(records.tobytes())
print("synthetic CIFAR-10 written to", folder)
EOF
fi
if [[ $parts == *" vgg "* ]]; then
    python3 bench/sweep_sharing.py --space vgg19bn-cifar10 --smoke-test --set "data_root=$root" \
        --modes shared,unshared 2>&1 | tee "$OUT/vgg19bn-cifar10-smoke.txt" || echo "FAILED: vgg19bn-cifar10-smoke"
fi
if [[ $parts == *" default "* ]]; then
    python3 bench/sweep_sharing.py --modes shared,unshared 2>&1 | tee "$OUT/lenet300-digits.txt" || echo "FAILED: lenet300-digits"
fi
if [[ $parts == *" vgg-grid "* ]]; then
    python3 bench/sweep_sharing.py --space vgg19bn-cifar10 --set "data_root=$root" --set epochs=1 \
        --set prune_steps=1 --set prune_epochs=1 --set share_epochs=1 --set batch_size=32 \
        --modes shared,unshared 2>&1 | tee "$OUT/vgg19bn-cifar10-grid.txt" || echo "FAILED: vgg19bn-cifar10-grid"
fi
