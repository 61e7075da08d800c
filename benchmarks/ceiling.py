"""The image-only ceiling of a machine for a fastload cache: what DALI alone does with no Python per sample.

DALI's own ``fn.readers.webdataset`` (C++ reads of the shards' ``.idx``), the image decoder (nvJPEG with
``--device gpu``), one warp to the output size, hsv, normalise — no labels, no targets, no Python per sample.
fastload's GPU path is reported as a share of it, measured on the same machine, the same cache, in the same run
(``benchmarks/run_gpu.sh``), where the loaders run the default config (hsv included). ``benchmarks/cpu_proxy.py``
is the CPU's counterpart with its own, smaller pipeline (no hsv: the loader there runs ``augment="none"``).

    python benchmarks/ceiling.py CACHE [--threads 16 2] [--device gpu|cpu] [--batch 48] [--size 512 512]

Prints one line and, with ``--out``, writes a JSON row per thread count: samples/s, CPU cores busy, host CPU ms
per sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def ceiling(cache: Path, *, threads: int, device: str, batch: int, size: tuple[int, int], iters: int) -> dict:
    import psutil
    from nvidia.dali import fn, pipeline_def, types

    shards = sorted(str(p) for p in cache.glob("*.tar"))
    index = [s[:-4] + ".idx" for s in shards]

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=0 if device == "gpu" else None, prefetch_queue_depth=2)
    def images_only():
        data = fn.readers.webdataset(
            paths=shards, index_paths=index, ext=["jpg"], random_shuffle=True, initial_fill=256, name="r"
        )
        image = fn.decoders.image(data, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB)
        image = fn.warp_affine(image, matrix=[0.9, 0.1, 10.0, -0.1, 0.9, 20.0], size=list(size), fill_value=0)
        image = fn.hsv(image, hue=10.0, saturation=1.1)
        return fn.crop_mirror_normalize(
            image, dtype=types.FLOAT, output_layout="CHW", mean=[123.7, 116.3, 103.5], std=[58.4, 57.1, 57.4]
        )

    pipe = images_only()
    pipe.build()
    for _ in range(5):
        pipe.run()
    proc = psutil.Process()
    cpu0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
    for _ in range(iters):
        out = pipe.run()
    out[0].as_tensor()  # the last batch is done
    seconds, cpu = time.perf_counter() - t0, sum(proc.cpu_times()[:2]) - cpu0
    del pipe
    samples = iters * batch
    return {
        "threads": threads,
        "device": device,
        "samples_per_s": samples / seconds,
        "cores_busy": cpu / seconds,
        "host_cpu_ms_per_sample": 1e3 * cpu / samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("--threads", type=int, nargs="+", default=[16])
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    for threads in args.threads:
        row = ceiling(args.cache, threads=threads, device=args.device, batch=args.batch, size=tuple(args.size), iters=args.iters)
        rows.append(row)
        print(
            f"image-only ceiling, {threads} threads ({args.device}): {row['samples_per_s']:.0f} samples/s, "
            f"{row['cores_busy']:.2f} CPU cores busy, {row['host_cpu_ms_per_sample']:.3f} ms host CPU per sample"
        )
    if args.out:
        command = "python benchmarks/ceiling.py " + " ".join(sys.argv[1:])
        args.out.write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
