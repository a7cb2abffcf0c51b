"""One training step with shared weights against the dense step and the seed's way, in one run.

    python bench/finetune_step.py [--device cuda]

Layers: a 784x300 Linear (LeNet-300-100's first layer, batch 128) and a 3x3 256->256 Conv2d
(VGG's deep layers, batch 32 at 8x8), k=32 clusters. "shared" is dcsweep's codebook
parametrization (gather forward, index_add backward); "seed loop" is the seed's fine-tuning, a
Python loop over clusters with unique(), a mask compare, a gather and a scatter per cluster.
Targets: shared <= 1.5x dense for the Linear and <= 1.1x for the Conv.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from dcsweep.compression import KMeansShare, share_weights_


def step_time(step: Callable[[], None], device: torch.device, iters: int) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_step(model: nn.Module, x: torch.Tensor, seed_loop: bool = False) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        if seed_loop:  # the seed: per cluster, sum member gradients and write the centroid back
            w = model.weight
            with torch.no_grad():
                for value in w.unique():
                    members = w == value
                    w[members] = value - 1e-3 * w.grad[members].sum()
            w.grad = None
        opt.step()

    return step


def bench(name: str, build: Callable[[], nn.Module], x: torch.Tensor, k: int, device: torch.device,
          iters: int, target: float) -> None:
    torch.manual_seed(0)
    dense = build().to(device)
    shared = build().to(device)
    share_weights_(shared, KMeansShare(k=k))
    seed = build().to(device)
    share_weights_(seed, KMeansShare(k=k))
    torch.nn.utils.parametrize.remove_parametrizations(seed, "weight", leave_parametrized=True)
    t_dense = step_time(make_step(dense, x), device, iters)
    t_shared = step_time(make_step(shared, x), device, iters)
    t_seed = step_time(make_step(seed, x, seed_loop=True), device, max(3, iters // 5))
    ratio = t_shared / t_dense
    print(f"{name:<34} dense {1e3 * t_dense:8.2f} ms   shared {1e3 * t_shared:8.2f} ms "
          f"({ratio:.2f}x dense, target <= {target}x: {'PASS' if ratio <= target else 'FAIL'})   "
          f"seed loop {1e3 * t_seed:8.2f} ms ({t_seed / t_shared:.0f}x ours)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for k in (32, 256):
        bench(f"Linear 784x300, batch 128, k={k}", lambda: nn.Linear(784, 300),
              torch.randn(128, 784, device=device), k, device, args.iters, 1.5)
        bench(f"Conv2d 3x3 256->256, 32x8x8, k={k}", lambda: nn.Conv2d(256, 256, 3, padding=1),
              torch.randn(32, 256, 8, 8, device=device), k, device, max(5, args.iters // 5), 1.1)


if __name__ == "__main__":
    main()
