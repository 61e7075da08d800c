"""The CPU proxy of the GPU path's bound: `fastload.Loader(device="cpu")` as a share of DALI's own image-only
pipeline, same cache, same threads, rounds alternating.

The ceiling is what DALI does with no Python per sample: ``fn.readers.webdataset`` → CPU image decode →
``warp_affine`` → ``crop_mirror_normalize`` (the image only, no labels, no targets). fastload's loader does more
per sample (two label warps, the targets), so the share measures how much of the machine the loader's design
leaves on the table; on a GPU machine the counterpart is `ceiling.py` (with hsv, as the default config the loaders
run there) against ``fastload bench``. The rates
move with the machine's load; the share is the figure.

    python benchmarks/cpu_proxy.py [--rounds 3] [--threads 2] [--out results.json]

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
    for _ in range(per_epoch):  # warm-up epoch
        pipe.run()
    t0 = time.perf_counter()
    for _ in range(per_epoch * epochs):
        pipe.run()
    rate = per_epoch * epochs * BATCH / (time.perf_counter() - t0)
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or make_cache(Path(tmp))
        runs = []
        for r in range(args.rounds):
            for kind in ("ceiling", "loader"):
                rate = one(kind, cache, args.threads, args.epochs)
                runs.append({"round": r, "kind": kind, "samples_per_s": rate})
                print(f"round {r}: {kind:8s} {rate:8.0f} samples/s", flush=True)
    ceiling = statistics.median(x["samples_per_s"] for x in runs if x["kind"] == "ceiling")
    loader = statistics.median(x["samples_per_s"] for x in runs if x["kind"] == "loader")
    shares = [lo["samples_per_s"] / ce["samples_per_s"] for lo, ce in zip(runs[1::2], runs[0::2], strict=True)]
    print(f"median: ceiling {ceiling:.0f}, Loader(device='cpu') {loader:.0f} samples/s; share {loader / ceiling:.2f} "
          f"(per round {', '.join(f'{s:.2f}' for s in shares)})")
    if args.out:
        args.out.write_text(json.dumps({
            "command": "python benchmarks/cpu_proxy.py " + " ".join(sys.argv[1:]),
            "threads": args.threads, "batch_size": BATCH, "size": SIZE, "runs": runs,
            "ceiling_samples_per_s": ceiling, "loader_samples_per_s": loader, "share": loader / ceiling,
            "share_per_round": shares,
        }, indent=2) + "\n")


if __name__ == "__main__":  # loader workers import this module: keep the run under the guard
    main()
