"""What trusting nothing in the stage store costs, in one run.

    python bench/stage_store.py                # VGG-16-sized stage, CIFAR-10 arrays, 100,000-file folder
    python bench/stage_store.py --files 10000  # a smaller image folder

1. Verification of a VGG-16-sized dense stage (138M float32 weights, ~550 MB .dcz): the check
   every reuse runs (record, then each file's size and sha256 while it is copied to the trial's
   private folder), beside loading that model from the copy, as a share of the load.
2. The data fingerprint that keys stages: CIFAR-10-sized arrays (60,000 3x32x32 uint8 images)
   and an image folder of N files (one ``stat`` a file, no image read). Targets on this
   machine: under 2 s and under 10 s.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from dcsweep.compression import load_compressed, save_compressed
from dcsweep.runner.cycle.datasets import Data, InMemory, load_dataset
from dcsweep.runner.cycle.fingerprint import fingerprint
from dcsweep.runner.cycle.models import create_model
from dcsweep.runner.cycle.stages import StageRecord, key_of
from dcsweep.runner.sweep.stages import StageStore


def verification(folder: Path) -> None:
    model = create_model("vgg16", (3, 224, 224), 1000)
    work = folder / "work"
    work.mkdir()
    save_compressed(model, work / "model.dcz")
    size = (work / "model.dcz").stat().st_size
    inputs = {"phase": "dense", "bench": "vgg16"}
    record = StageRecord("dense", key_of(inputs), 0.7, 0.7, 3600.0, inputs=inputs)
    store = StageStore(folder / "store")
    store.publish("dense", record.key, work, record)
    shutil.rmtree(work)
    start = time.perf_counter()
    with store.claim("dense", record.key) as found:
        assert found is not None
        verified = time.perf_counter() - start
        start = time.perf_counter()
        load_compressed(found.folder / "model.dcz", model)
        loaded = time.perf_counter() - start
    print(f"verify a {size / 1e6:.0f} MB VGG-16 dense stage (hash while copying): {verified:.2f} s; "
          f"loading it: {loaded:.2f} s; verification = {verified / loaded:.0%} of the load")


def cifar_sized() -> Data:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60_000, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (60_000,), generator=generator)
    norm = ((0.5,) * 3, (0.25,) * 3)
    return Data("cifar-sized", InMemory(images[:45_000], labels[:45_000], *norm), InMemory(
        images[50_000:], labels[50_000:], *norm), (3, 32, 32), 10, InMemory(images[45_000:50_000],
                                                                           labels[45_000:50_000], *norm))


def image_folder(root: Path, files: int) -> Path:
    per_class = max(files // 100, 1)
    for split, count in (("train", per_class), ("val", max(per_class // 10, 1))):
        for c in range(100):
            folder = root / split / f"class{c:03d}"
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"img{i:05d}.jpg").write_bytes(b"")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000, help="images in the folder's train/ part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dcsweep-bench-") as tmp:
        verification(Path(tmp))
    data = cifar_sized()
    start = time.perf_counter()
    fingerprint(data)
    print(f"fingerprint of CIFAR-10-sized arrays (60,000 images): {time.perf_counter() - start:.2f} s (target < 2 s)")
    with tempfile.TemporaryDirectory(prefix="dcsweep-bench-") as tmp:
        root = image_folder(Path(tmp), args.files)
        start = time.perf_counter()
        folder = load_dataset(f"imagefolder:{root}", image_size=32)
        scanned = time.perf_counter() - start
        start = time.perf_counter()
        fingerprint(folder)
        total = len(folder.train) + len(folder.validation) + len(folder.test)
        print(f"fingerprint of an image folder of {total:,} files: {time.perf_counter() - start:.2f} s "
              f"(target < 10 s; torchvision's own scan of it: {scanned:.2f} s)")


if __name__ == "__main__":
    main()
