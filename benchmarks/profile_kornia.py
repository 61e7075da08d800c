"""Where the Kornia peer's time goes: each op of its ``AugmentationSequential`` timed alone, on the device.

The ``kornia`` peer (`fastload.tools.bench.peers.kornia_peer`) made 58 samples/s on an H200 (batch 48, 512x512), 97 %
of its loop waiting for data. This times the peer's sequence as it runs (its own probabilities, image and both
masks), then each of its Kornia ops alone on the image with p = 1 (so that a rare op's cost shows), and the
targets as the peer renders them, on a batch of that shape, synchronising the device around each (CUDA events
on a GPU), so the op that costs it is named before anything is changed.

    python benchmarks/profile_kornia.py [--device cuda] [--batch 48] [--size 512 512] [--repeat 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def timed(fn, device: torch.device, repeat: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()

    from fastload.augment.config import load_augment
    from fastload.pipeline.batch import render_batch_targets
    from fastload.tools.bench.peers.kornia_peer import build_sequential

    device = torch.device(args.device)
    cfg = load_augment("default")
    torch.manual_seed(0)
    b, (h, w) = args.batch, args.size
    image = torch.rand(b, 3, h, w, device=device)
    semantic = torch.randint(0, 4, (b, 1, h, w), device=device).float()
    instance = torch.randint(0, 21, (b, 1, h, w), device=device).float()
    rows = []
    with torch.no_grad():
        as_configured = build_sequential(cfg).to(device)  # the peer's own probabilities
        rows.append({"op": "the peer's sequence (image + 2 masks)", "ms": timed(lambda: as_configured(image, semantic, instance), device, args.repeat)})
        for k, op in enumerate(build_sequential(cfg).to(device).children()):
            # each op applied to every sample (p = 1), so that its cost is not hidden by its probability
            op.p, op.p_batch = 1.0, 1.0
            rows.append({"op": f"{k}: {type(op).__name__} (p = 1, image)", "ms": timed(lambda op=op: op(image), device, args.repeat)})
        ids, labels = instance[:, 0].to(torch.int32), semantic[:, 0].to(torch.int64)
        rows.append({
            "op": "targets and weights (render_batch_targets, max_id 20)",
            "ms": timed(lambda: render_batch_targets(labels, ids, cfg.targets, max_id=20), device, args.repeat),
        })  # fmt: skip
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"Kornia peer ops, batch {b}, {h}x{w}, {name}, median of {args.repeat}:")
    for row in rows:
        print(f"  {row['op']:56s} {row['ms']:9.2f} ms")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"command": "python benchmarks/profile_kornia.py " + " ".join(sys.argv[1:]), "device": name, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
