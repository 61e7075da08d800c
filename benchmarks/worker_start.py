"""What starting a CpuLoader's forkserver workers costs: the first batch of the first epoch (the fork server and
the workers start, the server imports torch once) against the first batch of the next epoch (persistent workers).

    python benchmarks/worker_start.py [--workers 2]

Data: the sample photos fastload ships, built into a temporary cache; 64x64 output, no augmentation, batch 1.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import fastload


def first_batch_ms(loader) -> float:
    t = time.perf_counter()
    it = iter(loader)
    next(it)
    elapsed = time.perf_counter() - t
    for _ in it:  # finish the epoch, so that the next pass is a new epoch
        pass
    return elapsed * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = fastload.sample_data()
        cache = Path(tmp) / "cache"
        fastload.build_cache(coco=data / "annotations.json", images=data / "images", out=cache, progress=False)
        loader = fastload.CpuLoader(cache, batch_size=1, size=(64, 64), augment="none", num_threads=args.workers, device="cpu")
        try:
            first, again = first_batch_ms(loader), first_batch_ms(loader)
        finally:
            loader.close()
    print(f"{args.workers} workers: first batch of the first epoch {first:.0f} ms (starts the fork server and the "
          f"workers), first batch of the next epoch {again:.0f} ms")


if __name__ == "__main__":  # workers import this module: keep the run under the guard
    main()
