"""The CPU proxy of the GPU path's bound: `fastload.Loader(device="cpu")` as a share of DALI's own image-only
pipeline, same cache, same threads, rounds alternating.

The ceiling is what DALI does with no Python per sample: ``fn.readers.webdataset`` → CPU image decode →
``warp_affine`` → ``crop_mirror_normalize`` (the image only, no labels, no targets). fastload's loader does more
per sample (two label warps, the targets), so the share measures how much of the machine the loader's design
leaves on the table; on a GPU machine the counterpart is `ceiling.py` (with hsv, as the default config the loaders
run there) against ``fastload bench``. The rates
move with the machine's load; the share is the figure.

    python benchmarks/cpu_proxy.py [--rounds 3] [--threads 2] [--out results.json] [--breakdown]

``--breakdown`` adds, per round, the loader asked for no target key and the loader's DALI graph alone, fed its
input columns from memory: where the loader's share goes.

Data: ``fastload synth --n 480 --size 96 96 --instances 2 6 --seed 0``, built into a temporary cache (or
``--cache DIR``); 64x64 output, batch 48, ``augment="none"``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZE = (64, 64)
BATCH = 48


def make_cache(root: Path) -> Path:
    """The proxy's cache: 480 synthetic 96x96 images, 2-6 instances each, seed 0."""
    from fastload import build_cache
    from fastload.build.synth import synth_coco

    data = root / "data"
    synth_coco(out=data, n=480, size=(96, 96), instances=(2, 6), seed=0)
    build_cache(coco=data / "annotations.json", images=data / "images", out=root / "cache", progress=False)
    return root / "cache"


def pipeline_rate(pipe, per_epoch: int, epochs: int) -> float:
    """Samples/s of a built DALI pipeline over ``epochs`` epochs of ``per_epoch`` batches, after a warm-up epoch."""
    for _ in range(per_epoch):
        pipe.run()
    t0 = time.perf_counter()
    for _ in range(per_epoch * epochs):
        pipe.run()
    return per_epoch * epochs * BATCH / (time.perf_counter() - t0)


def ceiling_rate(cache: Path, threads: int, epochs: int) -> float:
    """Samples/s of DALI's webdataset reader → decode → warp → normalise on the CPU (no Python per sample)."""
    from nvidia.dali import fn, pipeline_def, types

    shards = sorted(str(p) for p in cache.glob("*.tar"))
    index = [s[:-4] + ".idx" for s in shards]

    @pipeline_def(batch_size=BATCH, num_threads=threads, device_id=None, prefetch_queue_depth=2)
    def images_only():
        jpg = fn.readers.webdataset(paths=shards, index_paths=index, ext=["jpg"], random_shuffle=True,
                                    initial_fill=256, name="r", pad_last_batch=True)
        img = fn.decoders.image(jpg, device="cpu", output_type=types.RGB)
        img = fn.warp_affine(img, matrix=[0.66, 0.0, 0.0, 0.0, 0.66, 0.0], size=list(SIZE), fill_value=0)
        return fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="CHW",
                                        mean=[123.7, 116.3, 103.5], std=[58.4, 57.1, 57.4])

    pipe = images_only()
    pipe.build()
    per_epoch = -(-pipe.epoch_size("r") // BATCH)
    rate = pipeline_rate(pipe, per_epoch, epochs)
    del pipe
    return rate


def loader_rate(cache: Path, threads: int, epochs: int) -> float:
    """Samples/s of fastload.Loader(device="cpu") over whole epochs, after one warm-up epoch."""
    import fastload

    with fastload.Loader(cache, batch_size=BATCH, size=SIZE, augment="none", device="cpu", num_threads=threads) as loader:
        for _ in loader:  # warm-up epoch (starts the feed workers)
            pass
        n, t0 = 0, time.perf_counter()
        for _ in range(epochs):
            for batch in loader:
                n += len(batch["index"])
        return n / (time.perf_counter() - t0)


def loader_without_targets_rate(cache: Path, threads: int, epochs: int) -> float:
    """Samples/s of the same loader asked for no target key (``keys=``: nothing is rendered)."""
    import fastload

    keys = ("image", "semantic", "instance", "index")
    with fastload.Loader(cache, batch_size=BATCH, size=SIZE, augment="none", device="cpu", num_threads=threads, keys=keys) as loader:
        for _ in loader:
            pass
        n, t0 = 0, time.perf_counter()
        for _ in range(epochs):
            for *_, index in loader:
                n += len(index)
        return n / (time.perf_counter() - t0)


def graph_rate(cache: Path, threads: int, epochs: int) -> float:
    """Samples/s of the loader's DALI graph alone: its input columns made once by the feed and handed to it again
    from memory (no reads, no feed worker, no targets, no torch tensors)."""
    import numpy as np

    import fastload
    from fastload.augment.config import AugmentConfig
    from fastload.pipeline.dali.feed import FeedJob
    from fastload.pipeline.dali.graph import build_pipeline, shutdown_pipeline
    from fastload.pipeline.dali.spec import GraphSpec
    from fastload.pipeline.plan import BatchPlan

    cfg = AugmentConfig.none()
    spec = GraphSpec.create(out_size=SIZE, augment=cfg, device="cpu")
    opened = fastload.open_cache(cache)
    job = FeedJob(cache=opened, spec=spec, augment=cfg, io_threads=8, max_read_bytes=64 << 20)
    job.open()
    per_epoch = len(opened) // BATCH
    order = np.arange(per_epoch * BATCH, dtype=np.int64)
    columns = [job.run(BatchPlan(order[k * BATCH : (k + 1) * BATCH], seed=0, epoch=0), [])[0] for k in range(per_epoch)]
    job.close()
    served = iter(range(1 << 62))

    def source():
        batch = columns[next(served) % len(columns)]
        return tuple(batch[name] for name in spec.inputs)

    pipe = build_pipeline(spec, source, device_id=None, batch_size=BATCH, num_threads=threads, prefetch=2)
    rate = pipeline_rate(pipe, per_epoch, epochs)
    shutdown_pipeline(pipe)
    return rate


def one(kind: str, cache: Path, threads: int, epochs: int) -> float:
    """One measurement in a fresh interpreter, so that neither run inherits the other's threads or memory."""
    here = str(Path(__file__).parent)
    code = (
        f"import sys; sys.path.insert(0, {here!r}); import cpu_proxy; from pathlib import Path; "
        f"print(cpu_proxy.{kind}_rate(Path({str(cache)!r}), {threads}, {epochs}))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, help="an existing cache (default: the proxy's, built in a temp dir)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4, help="measured epochs per run (10 batches each)")
    parser.add_argument("--out", type=Path, help="write the runs and the share as JSON")
    parser.add_argument(
        "--breakdown", action="store_true",
        help="also measure, in each round, the loader without targets (keys=) and its DALI graph alone, fed from memory",
    )  # fmt: skip
    args = parser.parse_args()
    kinds = ("ceiling", "loader", *(("loader_without_targets", "graph") if args.breakdown else ()))
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or make_cache(Path(tmp))
        runs = []
        for r in range(args.rounds):
            for kind in kinds:
                rate = one(kind, cache, args.threads, args.epochs)
                runs.append({"round": r, "kind": kind, "samples_per_s": rate})
                print(f"round {r}: {kind:22s} {rate:8.0f} samples/s", flush=True)
    rate = {kind: statistics.median(x["samples_per_s"] for x in runs if x["kind"] == kind) for kind in kinds}
    ceiling, loader = rate["ceiling"], rate["loader"]
    by_round = {(x["round"], x["kind"]): x["samples_per_s"] for x in runs}
    shares = [by_round[r, "loader"] / by_round[r, "ceiling"] for r in range(args.rounds)]
    print(f"median: ceiling {ceiling:.0f}, Loader(device='cpu') {loader:.0f} samples/s; share {loader / ceiling:.2f} "
          f"(per round {', '.join(f'{s:.2f}' for s in shares)})")
    for kind in kinds[2:]:
        print(f"median: {kind} {rate[kind]:.0f} samples/s; share {rate[kind] / ceiling:.2f}")
    if args.out:
        args.out.write_text(json.dumps({
            "command": "python benchmarks/cpu_proxy.py " + " ".join(sys.argv[1:]),
            "threads": args.threads, "batch_size": BATCH, "size": SIZE, "runs": runs,
            "ceiling_samples_per_s": ceiling, "loader_samples_per_s": loader, "share": loader / ceiling,
            "share_per_round": shares,
            **{f"{kind}_samples_per_s": rate[kind] for kind in kinds[2:]},
        }, indent=2) + "\n")


if __name__ == "__main__":  # loader workers import this module: keep the run under the guard
    main()
