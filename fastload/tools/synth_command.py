"""``fastload synth``: argparse in, the synthetic COCO generator (`fastload.build.synth.synth_coco`) out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    synth = subparsers.add_parser("synth", help="write a synthetic COCO dataset (textured JPEGs, random polygons)")
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--n", required=True, type=int, help="number of images")
    synth.add_argument("--size", nargs=2, type=int, default=(512, 512), metavar=("H", "W"))
    synth.add_argument("--instances", nargs=2, type=int, default=(3, 12), metavar=("A", "B"), help="instances per image, A..B")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, help="processes (default: up to 2); never changes the output")
    synth.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from fastload.build.synth import synth_coco

    try:
        path = synth_coco(
            out=args.out, n=args.n, size=tuple(args.size), instances=tuple(args.instances), seed=args.seed, workers=args.workers
        )
    except ValueError as exc:
        print(f"fastload synth: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({args.n} images in {path.parent / 'images'})")
    return 0
