"""The trial's own decisions that need no Ray cluster to check."""

from __future__ import annotations

import pytest

from dcsweep.runner.adapters.trainable import trial_device


@pytest.mark.parametrize(("device", "gpu_ids", "expected"), [
    ("auto", [], "cpu"),  # Ray gave no GPU: never take one another trial holds
    ("auto", ["0"], None),  # Ray's CUDA_VISIBLE_DEVICES already names the trial's GPU
    ("cuda", [], None),  # an explicit device is the user's to choose
    ("cpu", ["0"], None),
])
def test_a_trial_takes_a_gpu_only_when_ray_gave_it_one(device: str, gpu_ids: list[str], expected: str | None
                                                        ) -> None:
    assert trial_device({"device": device}, gpu_ids) == expected
