"""Sweeps of any size without Ray: synthetic trials driven through the real MLflow tracking code
(the tracker and its callbacks' calls, in the order a sweep makes them), for the scale test and
``bench/tracking_scale.py``.

Each trial is a real cycle's result with its settings, accuracies and size redrawn: a sweep's
shape (accuracy falls and size shrinks with sparsity and k, with noise), its real .dcz as the
file. The driver's cost per trial is what is measured: run, params, four phases, artifacts, the
MLflow model, the front's tags and the parent's summary.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from dcsweep.runner.cycle import FINAL, PHASES, CycleResult

from .tracking import SweepTracker

SPARSITIES = (0.8, 0.9, 0.95, 0.97, 0.98, 0.99)
KS = (2, 3, 4, 6, 8, 16, 32)


def synthetic_results(template: CycleResult, count: int, seed: int = 0) -> Iterator[CycleResult]:
    """``count`` results shaped like a sweep's, each ``template`` with new settings and figures."""
    if template.encoded is None:
        raise ValueError("the template must be a finished cycle's result (with its encoded file)")
    rng = random.Random(seed)
    dense = template.encoded.dense_bytes
    for _ in range(count):
        s, k = rng.choice(SPARSITIES), rng.choice(KS)
        size = int(dense * (1 - s) * k.bit_length() / 32) + rng.randint(200, 2000)
        val = min(0.99, max(0.1, 0.97 - 3 * (s - 0.8) ** 2 / k ** 0.5 + rng.gauss(0, 0.01)))
        test = min(0.99, max(0.1, val + rng.gauss(0, 0.005)))
        yield replace(template, config={**template.config, "sparsity": s, "k": k},
                      accuracy={p: test for p in PHASES} | {"decoded": test},
                      val_accuracy={**{p: val for p in PHASES}, "dense": 0.97, "decoded": val},
                      encoded=replace(template.encoded, compressed_bytes=size))


def drive(tracker: SweepTracker, results: Iterator[CycleResult], dcz: Path, prefix: str = "t") -> list[float]:
    """Each result as a trial of the sweep ``tracker`` logs (what the callbacks do for a real
    one); returns the driver's seconds per trial."""
    seconds = []
    for number, result in enumerate(results):
        start = time.perf_counter()
        trial_id = f"{prefix}_{number:05d}"
        config = dict(result.config)
        tracker.trial_run(trial_id, config, f"s={config['sparsity']} k={config['k']} {trial_id}")
        for phase in PHASES:
            tracker.log_phase(trial_id, phase, {k: v for k, v in result.metrics(phase).items()
                                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
        tracker.log_phase(trial_id, FINAL, {k: v for k, v in result.metrics(FINAL).items()
                                            if isinstance(v, (int, float)) and not isinstance(v, bool)}, hold=True)
        tracker.finish_trial(trial_id, result, {dcz.name: dcz})
        seconds.append(time.perf_counter() - start)
    return seconds
