"""Host CPU per sample of the GPU path's feed: in the training process, and in a feed worker.

The DALI loader on a GPU decodes and augments on the device; what the host does per sample is the feed: read the
sample (one ``pread``, CRC-checked), check its members, draw its parameters, assemble the graph's input columns.
That work runs in the feed workers; the training process sends each batch's plan and receives its columns. This
script measures both sides of the GPU configuration (``GraphSpec(device="gpu")``: the labels stay LZ4 for
nvCOMP) without a GPU, in thread CPU time:

- ``training process``: `InputFeed` handing DALI one batch after another (submit a plan, take the result, the
  columns as NumPy views of shared memory), the pool's worker doing the rest; DALI's own copy of the columns
  (C++, ``feed_input``) is not included;
- ``feed worker``: `FeedJob.run` on a batch (what one worker spends per sample, reads included).

    python benchmarks/host_work.py [--batch 48] [--size 512 512] [--n 240] [--cache DIR] [--graph gpu|cpu]
        [--out-size 512 512] [--augment default]

``--graph cpu`` measures the feed of ``Loader(device="cpu")`` instead (the feed decodes the labels), e.g. on the
CPU proxy's cache: ``--cache CACHE --graph cpu --out-size 64 64 --augment none``.

Data: ``fastload synth --n N --size H W --instances 5 20 --seed 0`` built into a temporary cache (or ``--cache``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_cache(root: Path, n: int, size: tuple[int, int]) -> Path:
    from fastload import build_cache
    from fastload.build.synth import synth_coco

    synth_coco(out=root / "data", n=n, size=size, instances=(5, 20), seed=0)
    build_cache(coco=root / "data/annotations.json", images=root / "data/images", out=root / "cache", progress=False)
    return root / "cache"


def plans(n: int, batch: int, epochs: int):
    from fastload.pipeline.plan import BatchPlan

    rng = np.random.default_rng(0)
    for epoch in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n - batch + 1, batch):
            yield BatchPlan(order[start : start + batch], seed=0, epoch=epoch)


def training_process_ms(cache, spec, cfg, batch: int, epochs: int) -> float:
    """Thread CPU ms per sample in the training process while a feed worker makes the batches."""
    from fastload.pipeline.dali.feed import FeedJob, InputFeed
    from fastload.pipeline.workers import WorkerPool

    job = FeedJob(cache=cache, spec=spec, augment=cfg, io_threads=64, max_read_bytes=64 << 20)
    pool = WorkerPool(job, workers=2, slots=4)
    try:
        feed = InputFeed(pool, plans(len(cache), batch, epochs), spec.inputs)
        samples, cpu, warm = 0, 0.0, 4
        while True:
            start = time.thread_time()
            try:
                feed()
            except StopIteration:
                break
            plan, ticket, _ = feed.pending.popleft()
            pool.release(ticket)  # what the backend does once DALI's outputs of the batch are in hand
            if warm:
                warm -= 1
                continue
            cpu += time.thread_time() - start
            samples += len(plan)
        return 1e3 * cpu / samples
    finally:
        pool.close()


def worker_ms(cache, spec, cfg, batch: int, epochs: int) -> float:
    """CPU ms per sample of a feed worker's `FeedJob.run` (process CPU time: its reader threads included)."""
    from fastload.pipeline.dali.feed import FeedJob

    job = FeedJob(cache=cache, spec=spec, augment=cfg, io_threads=64, max_read_bytes=64 << 20)
    job.open()
    try:
        all_plans = list(plans(len(cache), batch, epochs))
        for plan in all_plans[:4]:
            job.run(plan, [])
        start, samples = time.process_time(), 0
        for k, plan in enumerate(all_plans[4:]):
            job.run(plan, all_plans[5 + k : 7 + k])
            samples += len(plan)
        return 1e3 * (time.process_time() - start) / samples
    finally:
        job.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--graph", choices=("gpu", "cpu"), default="gpu",
        help="the configuration fed: 'gpu' (labels stay LZ4 for nvCOMP) or 'cpu' (the feed decodes them)",
    )  # fmt: skip
    parser.add_argument("--out-size", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--augment", default="default", help="a shipped config's name or a YAML path")
    args = parser.parse_args()

    import fastload
    from fastload.augment.config import load_augment
    from fastload.pipeline.dali.spec import GraphSpec

    cfg = load_augment(args.augment)
    spec = GraphSpec.create(out_size=tuple(args.out_size), augment=cfg, device=args.graph)
    with tempfile.TemporaryDirectory() as tmp:
        cache = fastload.open_cache(args.cache or make_cache(Path(tmp), args.n, tuple(args.size)))
        if args.epochs * (len(cache) // args.batch) <= 4:  # 4 batches warm up each measurement
            parser.error(f"{len(cache)} samples make {len(cache) // args.batch} batches of {args.batch} per epoch: too few "
                         "to measure after 4 warm-up batches; raise --epochs or --n, or lower --batch")
        main_ms = [training_process_ms(cache, spec, cfg, args.batch, args.epochs) for _ in range(args.rounds)]
        feed_ms = [worker_ms(cache, spec, cfg, args.batch, args.epochs) for _ in range(args.rounds)]
    print(
        f"{args.graph.upper()} configuration, batch {args.batch}, "
        f"{args.cache or f'{args.size[0]}x{args.size[1]} synthetic sources'}, "
        f"{args.out_size[0]}x{args.out_size[1]} output, augment {args.augment}, median of {args.rounds}:"
    )
    print(f"  training process: {statistics.median(main_ms):.4f} ms of CPU per sample ({', '.join(f'{v:.4f}' for v in main_ms)})")
    print(f"  feed worker:      {statistics.median(feed_ms):.4f} ms of CPU per sample ({', '.join(f'{v:.4f}' for v in feed_ms)})")


if __name__ == "__main__":  # the feed workers import this module: keep the run under the guard
    main()
