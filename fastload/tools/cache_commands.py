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

    build = sub.add_parser("build", help="COCO JSON + images → a sharded cache")
    build.add_argument("--coco", required=True, type=Path, help="COCO instances JSON")
    build.add_argument("--images", required=True, type=Path, help="folder the file_name entries are relative to")
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
        metavar="NAME=FRACTION",
        help="also hold out a split, e.g. --split val=0.1: writes OUT/train and OUT/val, each image placed by a "
        "hash of (--seed, image id); repeat for more splits",
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


def _build(args: argparse.Namespace) -> int:
    from fastload import build_cache
    from fastload.build.split import parse_split, split_names
    from fastload.cache.config import as_cache_config
    from fastload.errors import ConfigError

    if args.seed is not None and not args.split:
        raise ConfigError("--seed is the seed of --split; pass --split NAME=FRACTION too, or drop --seed")
    split = parse_split(args.split) if args.split else None
    node_rank, num_nodes = _nodes_from_env(args)
    config = as_cache_config(args.config)
    if args.exif_orientation is not None:
        config = dataclasses.replace(config, exif_orientation=args.exif_orientation)
    build_cache(
        coco=args.coco,
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
        f"{len(manifest.shards)} shard(s), {len(manifest.skips)} skipped, {len(manifest.normalised)} normalised"
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
        f"classes ({m.num_classes} with background = train id {BACKGROUND}; {IGNORE} = ignore):",
        f"  {'train_id':>8}  {'coco_id':>7}  {'instances':>9}  name",
    ]
    lines += [f"  {c.train_id:>8}  {c.coco_id:>7}  {c.instances:>9}  {c.name}" for c in m.categories]
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

