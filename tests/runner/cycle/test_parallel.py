"""A cycle on two ranks (two processes, gloo, as a 2-worker trial runs): every rank holds the
same model, bit for bit, after every phase; the accuracy is that of one process within float
rounding; rank 0 alone publishes stages and every rank reuses them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dcsweep.runner.cycle import CycleCallbacks, run_cycle
from dcsweep.runner.cycle.parallel import SINGLE, Distributed, current_ranks
from dcsweep.runner.cycle.results import MODEL_FILE
from dcsweep.runner.sweep.stages import StageStore

CONFIG = {"model": "lenet300", "dataset": "digits", "epochs": 2, "prune_steps": 2, "prune_epochs": 1,
          "share_epochs": 1, "sparsity": 0.9, "k": 8, "batch_size": 64, "seed": 3}


class Digests(CycleCallbacks):
    """The sha256 of the .dcz each phase's checkpoint holds on this rank."""

    def __init__(self) -> None:
        self.by_phase: dict[str, str] = {}

    def on_phase_end(self, phase: str, checkpoint_dir: Path | None, result) -> None:
        assert checkpoint_dir is not None
        self.by_phase[phase] = hashlib.sha256((checkpoint_dir / MODEL_FILE).read_bytes()).hexdigest()


def _rank(rank: int, world: int, folder: Path, config: dict, runs: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=(folder / "rendezvous").as_uri(), rank=rank, world_size=world)
    try:
        ranks = current_ranks()
        out = []
        for _ in range(runs):  # the second run finds every stage the first published
            digests = Digests()
            store = StageStore(folder / "store", workdir=folder / f"work-{rank}")
            (folder / f"work-{rank}").mkdir(exist_ok=True)
            result = run_cycle(config, callbacks=digests, stages=store, ranks=ranks,
                               workdir=folder / f"work-{rank}")
            out.append({"digests": digests.by_phase, "result": result.to_json()})
        (folder / f"rank-{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def _on_ranks(tmp_path: Path, world: int, config: dict, runs: int = 1) -> list[list[dict]]:
    mp.spawn(_rank, args=(world, tmp_path, config, runs), nprocs=world, join=True)
    return [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[list[dict]]:
    return _on_ranks(tmp_path_factory.mktemp("ranks"), 2, CONFIG, runs=2)


def test_every_rank_holds_the_same_model_after_every_phase(two_ranks) -> None:
    first, second = two_ranks
    for run in range(2):
        assert set(first[run]["digests"]) == {"dense", "pruned", "shared"}
        assert first[run]["digests"] == second[run]["digests"]
        assert first[run]["result"]["accuracy"] == second[run]["result"]["accuracy"]
        assert first[run]["result"]["compressed_bytes"] == second[run]["result"]["compressed_bytes"]


def test_rank_zero_publishes_and_every_rank_reuses(two_ranks, tmp_path_factory) -> None:
    first, second = two_ranks
    for rank in (first, second):
        assert not any(s["reused"] for s in rank[0]["result"]["stages"].values())
        assert all(s["reused"] for s in rank[1]["result"]["stages"].values())
        assert rank[1]["digests"] == rank[0]["digests"]  # the very weights computed, on each rank


def test_two_ranks_reach_one_process_accuracy(two_ranks, tmp_path: Path) -> None:
    """The same global batches in the same order (every rank draws the order of one process)
    and the gradient of the whole global batch each step: only the order of float additions
    differs, so the accuracies agree to within a few test images (3 of 500), not bit for bit."""
    alone = run_cycle(CONFIG, ranks=SINGLE)
    together = two_ranks[0][0]["result"]
    for phase in ("dense", "pruned", "shared", "decoded"):
        assert abs(together["accuracy"][phase] - alone.accuracy[phase]) <= 3 / 500, phase
    assert together["sparsity"] == pytest.approx(alone.encoded.sparsity, abs=1e-3)


def test_one_process_is_single() -> None:
    assert current_ranks() is SINGLE
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        Distributed()
