"""``fastload synth``: argparse in, a synthetic data set out, in one of three layouts (``--format``).

``coco`` (the default): `fastload.build.synth.synth_coco`, textured JPEGs with random polygon instances (every
class a thing). ``panoptic`` and ``cityscapes``: `fastload.build.synth_formats.write_synth_format`, street-like
scenes with stuff (road, sidewalk, building, sky), things, crowds and void, in COCO panoptic's and Cityscapes'
exact layouts (the same scenes in both).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FORMATS = ("coco", "panoptic", "cityscapes")
DEFAULT_SIZE = {"coco": (512, 512), "panoptic": (256, 512), "cityscapes": (256, 512)}


def register(subparsers: argparse._SubParsersAction) -> None:
    synth = subparsers.add_parser(
        "synth", help="write a synthetic data set: COCO instances (default), COCO panoptic or Cityscapes"
    )
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--n", required=True, type=int, help="number of images")
    synth.add_argument(
        "--format", choices=FORMATS, default="coco",
        help="coco: textured JPEGs, random polygon instances (default); panoptic / cityscapes: street-like scenes "
        "with stuff, things, crowds and void in that data set's layout",
    )  # fmt: skip
    synth.add_argument(
        "--size", nargs=2, type=int, metavar=("H", "W"), help="image size (default 512 512; panoptic, cityscapes: 256 512)"
    )
    synth.add_argument("--instances", nargs=2, type=int, metavar=("A", "B"), help="coco: instances per image, A..B (default 3 12)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, help="coco: processes (default: up to 2); never changes the output")
    synth.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    size = tuple(args.size) if args.size else DEFAULT_SIZE[args.format]
    try:
        if args.format == "coco":
            return _synth_coco(args, size)
        for flag, value in (("--instances", args.instances), ("--workers", args.workers)):
            if value is not None:
                raise ValueError(f"{flag} applies to --format coco only")
        return _synth_format(args, size)
    except ValueError as exc:
        print(f"fastload synth: error: {exc}", file=sys.stderr)
        return 2


def _synth_coco(args: argparse.Namespace, size: tuple[int, int]) -> int:
    from fastload.build.synth import synth_coco

    instances = tuple(args.instances) if args.instances else (3, 12)
    path = synth_coco(out=args.out, n=args.n, size=size, instances=instances, seed=args.seed, workers=args.workers)
    print(f"wrote {path} ({args.n} images in {path.parent / 'images'})")
    print(f"build a cache: fastload cache build --coco {path} --images {path.parent / 'images'} --out CACHE")
    return 0


def _synth_format(args: argparse.Namespace, size: tuple[int, int]) -> int:
    from fastload.build.synth_formats import write_synth_format

    files = write_synth_format(args.format, out=args.out, n=args.n, size=size, seed=args.seed)
    if args.format == "panoptic":
        print(f"wrote {files.annotations} ({args.n} images in {files.image_root}, segment-id PNGs in {files.png_dir})")
        build = f"--panoptic {files.annotations} --panoptic-masks {files.png_dir} --images {files.image_root}"
    else:
        print(f"wrote {args.n} Cityscapes frames under {files.annotations} (gtFine/train, leftImg8bit/train)")
        build = f"--cityscapes {files.annotations} --split train"
    print(f"build a cache: fastload cache build {build} --out CACHE")
    return 0
