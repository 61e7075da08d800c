"""``fastload cache build | merge | verify | info``: thin shells over the library."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from fastload.cache.manifest import Manifest
from fastload.labels import BACKGROUND, IGNORE


def register(subparsers: argparse._SubParsersAction) -> None:
    cache = subparsers.add_parser("cache", help="build, merge, verify or describe a shard cache")
    sub = cache.add_subparsers(dest="cache_command", required=True, metavar="CACHE_COMMAND")

    build = sub.add_parser(
        "build",
        help="a data set (COCO instances, COCO panoptic, Cityscapes) + images → a sharded cache",
        description="Give one data set: --coco JSON --images DIR, or --panoptic JSON --panoptic-masks PNG_DIR "
        "--images DIR, or --cityscapes ROOT --split train|val|test.",
    )
    source = build.add_argument_group("the data set (one of)")
    source.add_argument("--coco", type=Path, help="COCO instances JSON (with --images)")
    source.add_argument("--panoptic", type=Path, help="COCO panoptic JSON (with --panoptic-masks and --images)")
    source.add_argument("--panoptic-masks", type=Path, metavar="PNG_DIR", help="folder of the panoptic JSON's segment-id PNGs")
    source.add_argument(
        "--cityscapes", type=Path, metavar="ROOT", help="Cityscapes root holding gtFine/ and leftImg8bit/ (with --split train|val|test)"
    )
    build.add_argument(
        "--images", type=Path, help="folder the file_name entries are relative to (Cityscapes: default ROOT)"
    )
    build.add_argument("--out", required=True, type=Path, help="cache folder (new, or a cache to resume)")
    build.add_argument("--config", help="cache config: a YAML path, or the shipped `cache` (configs/cache.yaml); default: built-in")
    build.add_argument("--workers", type=int, default=1, help="worker processes (each builds whole shards)")
    build.add_argument("--on-error", choices=("fail", "skip"), default="fail", help="bad image/annotation: stop, or skip and record")
    build.add_argument("--resume", action="store_true", help="keep shards that are complete and intact, rebuild the rest")
    build.add_argument("--node-rank", type=int, help="this node's rank (default: $RANK under torchrun)")
    build.add_argument("--num-nodes", type=int, help="number of nodes (default: $WORLD_SIZE under torchrun)")
    build.add_argument(
        "--exif-orientation",
        choices=("apply", "ignore"),
        help="orientation tags: apply (annotations on the displayed picture) or ignore (on the stored grid); "
        "overrides exif_orientation of --config (default: apply)",
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.add_argument(
        "--split",
        action="append",
        metavar="NAME=FRACTION | SPLIT",
        help="NAME=FRACTION holds out a split, e.g. --split val=0.1: writes OUT/train and OUT/val, each image placed "
        "by a hash of (--seed, image id); repeat for more splits. A bare name (train, val, test) is the Cityscapes "
        "split to read, with --cityscapes (default train)",
    )
    build.add_argument("--seed", type=int, help="the seed of --split's per-image draw (default 0)")
    build.set_defaults(func=_build)

    merge = sub.add_parser("merge", help="join the nodes' partial manifests into manifest.json")
    merge.add_argument("cache", type=Path)
    merge.set_defaults(func=_merge)

    verify = sub.add_parser("verify", help="re-hash every shard and decode every sample")
    verify.add_argument("cache", type=Path)
    verify.add_argument("--no-progress", action="store_true")
    verify.set_defaults(func=_verify)

    info = sub.add_parser("info", help="counts, classes and bytes of a cache")
    info.add_argument("cache", type=Path)
    info.set_defaults(func=_info)


def _nodes_from_env(args: argparse.Namespace) -> tuple[int | None, int | None]:
    # torchrun's variables are read here, in the shell, and passed on explicitly
    rank, world = args.node_rank, args.num_nodes
    if rank is None and world is None and "WORLD_SIZE" in os.environ:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ.get("RANK", "0"))
    if world == 1 and rank in (0, None):
        return None, None
    return rank, world


def split_arguments(values: list[str] | None, *, cityscapes: bool) -> tuple[dict[str, float] | None, str | None]:
    """The ``--split`` values: hold-outs (``NAME=FRACTION``, `fastload.build.split.parse_split`) and the Cityscapes
    split (a bare name, only with ``--cityscapes``, at most one); ``(None, None)`` for none."""
    from fastload.build.cityscapes import SPLITS
    from fastload.build.split import parse_split
    from fastload.errors import ConfigError

    values = values or []
    names = [v for v in values if "=" not in v]
    fractions = parse_split([v for v in values if "=" in v]) if len(names) < len(values) else None
    if not names:
        return fractions, None
    if not cityscapes:
        raise ConfigError(
            f"--split {names[0]}: a bare split name picks the Cityscapes split, with --cityscapes ROOT; to hold out "
            f"a fraction of the images write NAME=FRACTION, e.g. --split {names[0]}=0.1"
        )
    if len(names) > 1:
        raise ConfigError(f"--split {' --split '.join(names)}: one Cityscapes split per build (a cache each); build them one by one")
    if names[0] not in SPLITS:
        raise ConfigError(
            f"--split {names[0]}: the Cityscapes splits are {', '.join(SPLITS)}; to hold out a fraction write "
            "NAME=FRACTION, e.g. --split val=0.1"
        )
    return fractions, names[0]


def _build(args: argparse.Namespace) -> int:
    from fastload import build_cache
    from fastload.build.split import split_names
    from fastload.cache.config import as_cache_config
    from fastload.errors import ConfigError

    split, cityscapes_split = split_arguments(args.split, cityscapes=args.cityscapes is not None)
    if args.seed is not None and not split:
        raise ConfigError("--seed is the seed of --split NAME=FRACTION; pass --split NAME=FRACTION too, or drop --seed")
    node_rank, num_nodes = _nodes_from_env(args)
    config = as_cache_config(args.config)
    if args.exif_orientation is not None:
        config = dataclasses.replace(config, exif_orientation=args.exif_orientation)
    build_cache(
        coco=args.coco,
        panoptic=args.panoptic,
        panoptic_masks=args.panoptic_masks,
        cityscapes=args.cityscapes,
        cityscapes_split=cityscapes_split,
        images=args.images,
        out=args.out,
        config=config,
        workers=args.workers,
        on_error=args.on_error,
        resume=args.resume,
        node_rank=node_rank,
        num_nodes=num_nodes,
        progress=not args.no_progress,
        split=split,
        split_seed=args.seed or 0,
    )
    folders = [args.out / name for name in split_names(split)] if split else [args.out]
    for folder in folders:
        if num_nodes is None:
            _print_built(folder)
        else:
            print(f"wrote {folder}'s share; when all {num_nodes} nodes are done run `fastload cache merge {folder}`")
    return 0


def _print_built(folder: Path) -> None:
    from fastload.cache.manifest import MANIFEST_NAME, load_manifest

    manifest = load_manifest(folder)
    split = f" (split {manifest.split.name!r})" if manifest.split else ""
    print(
        f"wrote {folder / MANIFEST_NAME}{split}: {manifest.samples} samples of {manifest.images} images in "
        f"{len(manifest.shards)} shard(s), {len(manifest.skips)} skipped, {len(manifest.normalised)} normalised; "
        f"{len(manifest.thing_train_ids)} thing and {len(manifest.stuff_train_ids)} stuff classes"
    )
    _print_normalised(manifest, folder)
    _print_skips(manifest, folder)


def _print_skips(m: Manifest, root: str | Path, *, limit: int = 10) -> None:
    """The build's summary of what was left out, on stderr: the first ``limit`` skips with their reasons."""
    for skip in m.skips[:limit]:
        print(f"skipped: image {skip.image_id} annotation {skip.annotation_id} ({skip.file_name}): {skip.reason}", file=sys.stderr)
    if len(m.skips) > limit:
        print(f"... and {len(m.skips) - limit} more: `fastload cache info {root}` lists every skip", file=sys.stderr)


def _print_normalised(m: Manifest, root: str | Path, *, limit: int = 10) -> None:
    """The build's summary of the images stored with changed bytes (on stdout: nothing is wrong with them)."""
    for entry in m.normalised[:limit]:
        print(f"normalised: image {entry.image_id} ({entry.file_name}): {entry.what}")
    if len(m.normalised) > limit:
        print(f"... and {len(m.normalised) - limit} more: `fastload cache info {root}` lists every one")


def _merge(args: argparse.Namespace) -> int:
    from fastload.build.merge import merge_cache

    print(f"wrote {merge_cache(args.cache)}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from fastload.cache.verify import verify_cache

    report = verify_cache(args.cache, progress=not args.no_progress)
    for problem in report.problems:
        print(f"BAD {problem}", file=sys.stderr)
    if not report.ok:
        print(
            f"{args.cache}: {len(report.problems)} problem(s) in {report.shards} shards / {report.samples} samples; "
            "rebuild the named shards with `fastload cache build ... --resume`",
            file=sys.stderr,
        )
        return 1
    print(f"{args.cache}: OK ({report.shards} shards, {report.samples} samples)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from fastload.cache.manifest import load_manifest

    print(format_info(load_manifest(args.cache), args.cache))
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # unreachable; keeps type checkers quiet


def _share(pixels: int | None, m: Manifest) -> str:
    """A class's share of the labelled (not ignore) pixels, or "-" for a cache built before pixels were counted."""
    if pixels is None or m.pixels is None:
        return "-"
    return f"{100 * pixels / m.pixels.labelled:.2f}%" if m.pixels.labelled else "0.00%"


def class_table(m: Manifest) -> list[str]:
    """The classes of `format_info`: train id, source id, thing or stuff, instances, share of the labelled pixels
    (the semantic masks' pixels that are not ignore; background is a row of its own), name; then ignore's share
    of all pixels."""
    pixels = m.pixels
    lines = [f"  {'train_id':>8}  {'coco_id':>7}  {'kind':<5}  {'instances':>9}  {'pixels':>7}  name"]
    background = None if pixels is None else pixels.background
    lines.append(f"  {BACKGROUND:>8}  {'-':>7}  {'-':<5}  {'-':>9}  {_share(background, m):>7}  {m.classes[0]}")
    for c in m.categories:
        kind = "thing" if c.isthing else "stuff"
        lines.append(f"  {c.train_id:>8}  {c.coco_id:>7}  {kind:<5}  {c.instances:>9}  {_share(c.pixels, m):>7}  {c.name}")
    if pixels is None:
        lines.append("  pixels: - (a cache built before fastload counted them; rebuild it to see the shares)")
    else:
        ignored = f"{100 * pixels.ignore / pixels.total:.2f}%" if pixels.total else "0.00%"
        lines.append(f"  pixels: shares of the {pixels.labelled} labelled pixels; ignore ({IGNORE}) is {ignored} of all {pixels.total}")
    return lines


def format_info(m: Manifest, root: str | Path = "") -> str:
    """The text of ``fastload cache info``: counts, classes, bytes in total, per member kind, per sample."""
    per = max(m.samples, 1)
    lines = [
        f"cache {root}  (schema {m.schema_version}, fastload {m.fastload_version})",
        f"config: samples_per_shard={m.samples_per_shard} label_compression={m.label_compression} "
        f"label_format={m.label_format} exif_orientation={m.exif_orientation} max_image_pixels={m.max_image_pixels}",
        *(
            [f"split {m.split.name!r} of a build with --split "
             + " ".join(f"{n}={f:g}" for n, f in m.split.fractions) + f" --seed {m.split.seed} (train: the rest)"]
            if m.split
            else []
        ),
        f"images {m.images}  samples {m.samples}  instances {m.instances}  skipped {len(m.skips)}  "
        f"normalised {len(m.normalised)}  shards {len(m.shards)}",
        f"classes ({m.num_classes} with background = train id {BACKGROUND}; {IGNORE} = ignore): "
        f"{len(m.thing_train_ids)} things, {len(m.stuff_train_ids)} stuff (built from {m.source_format})",
        *class_table(m),
    ]
    mb = m.member_bytes
    kinds = [("image", mb.image), ("sem", mb.sem), ("ins", mb.ins), ("meta", mb.meta)]
    lines.append(f"bytes: shards {_size(m.total_bytes)} total, {_size(m.total_bytes / per)} per sample")
    for kind, n in kinds:
        share = f"{100 * n / mb.image:5.1f}% of image" if mb.image and kind != "image" else ""
        lines.append(f"  {kind:<6} {_size(n):>10} total  {_size(n / per):>10} per sample  {share}")
    for entry in m.normalised[:20]:
        lines.append(f"normalised: image {entry.image_id} ({entry.file_name}): {entry.what}")
    if len(m.normalised) > 20:
        lines.append(f"... and {len(m.normalised) - 20} more normalised images (see manifest.json)")
    for skip in m.skips[:20]:
        lines.append(f"skip: image {skip.image_id} annotation {skip.annotation_id} ({skip.file_name}): {skip.reason}")
    if len(m.skips) > 20:
        lines.append(f"... and {len(m.skips) - 20} more skips (see manifest.json)")
    return "\n".join(lines)

