"""``manifest.json`` and the per-shard completion records: their schema, assembly, parsing and atomic writes.

A build writes, for each shard, ``shard-XXXXX.done.json`` last (after the tar and both indexes are in place),
and ``manifest.json`` after every shard is done. The manifest is a pure function of the build header (config,
categories, COCO-level skips) and the completion records, so a single build and a multi-node build merged
with ``fastload cache merge`` give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastload.cache.format import HEAT_SCALE, SCHEMA_VERSION, dumps_canonical, shard_stem
from fastload.errors import CacheError

MANIFEST_NAME = "manifest.json"
BYTE_KINDS = ("image", "sem", "ins", "off", "heat", "meta")


def part_name(node_rank: int, num_nodes: int) -> str:
    """File name of a node's partial manifest."""
    return f"manifest.part-{node_rank:05d}-of-{num_nodes:05d}.json"


def done_name(shard: int) -> str:
    return f"{shard_stem(shard)}.done.json"


# ----------------------------------------------------------------------------------------------- file helpers


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` so that it either has the full new content or does not change (tmp, fsync, replace)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def pretty_json(value: Any) -> bytes:
    """Deterministic, human-readable JSON for the files people open (manifest, records)."""
    return (json.dumps(json.loads(dumps_canonical(value)), indent=1, sort_keys=True) + "\n").encode("utf-8")


def read_json(path: Path, *, what: str) -> Any:
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"{what} {path} is unreadable or not JSON ({exc}); rebuild with --resume") from exc


def sha256_file(path: Path, *, chunk: int = 1 << 22) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            sha.update(block)
    return sha.hexdigest()


# ----------------------------------------------------------------------------------------------- assembly


def assemble_manifest(header: Mapping[str, Any], records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The manifest (as a JSON-ready dict) from the build header and every shard's completion record.

    ``header`` holds ``fastload_version``, ``config``, ``categories`` (coco_id, train_id, name),
    ``coco_sha256``, ``images`` (validated COCO images), ``num_shards`` and ``coco_skips``.
    """
    records = sorted(records, key=lambda r: r["shard"])
    found = [r["shard"] for r in records]
    if found != list(range(header["num_shards"])):
        missing = sorted(set(range(header["num_shards"])) - set(found))
        raise CacheError(f"cannot write the manifest: shard(s) {missing[:10]} have no completion record")
    per_class: dict[str, int] = {}
    member_bytes = dict.fromkeys(BYTE_KINDS, 0)
    skips = [dict(s) for s in header["coco_skips"]]
    shards = []
    for rec in records:
        for train_id, count in rec["instances_per_class"].items():
            per_class[train_id] = per_class.get(train_id, 0) + count
        for kind in BYTE_KINDS:
            member_bytes[kind] += rec["member_bytes"][kind]
        skips.extend(rec["skips"])
        if rec["samples"]:
            files = rec["files"]
            shards.append(
                {
                    "index": rec["shard"],
                    "file": files["tar"]["name"],
                    "samples": rec["samples"],
                    "bytes": files["tar"]["bytes"],
                    "sha256": files["tar"]["sha256"],
                    "index_file": files["json"]["name"],
                    "index_sha256": files["json"]["sha256"],
                    "dali_index": files["idx"]["name"],
                    "dali_index_sha256": files["idx"]["sha256"],
                }
            )
    categories = [
        {**c, "instances": per_class.get(str(c["train_id"]), 0)}
        for c in sorted(header["categories"], key=lambda c: c["train_id"])
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "fastload_version": header["fastload_version"],
        "config": {**header["config"], "heat_scale": HEAT_SCALE},
        "categories": categories,
        "num_classes": len(categories) + 1,
        "source": {"coco_sha256": header["coco_sha256"]},
        "counts": {
            "images": header["images"],
            "samples": sum(r["samples"] for r in records),
            "instances": sum(r["instances"] for r in records),
            "skipped": len(skips),
            "offset_clipped_pixels": sum(r["offset_clipped_pixels"] for r in records),
        },
        "skips": skips,
        "shards": shards,
        "bytes": {
            "total": sum(s["bytes"] for s in shards),
            "members": member_bytes,
        },
    }


# ----------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class CategoryInfo:
    coco_id: int
    train_id: int  # 1..K (0 is background, 255 ignore)
    name: str
    instances: int  # instances of this class stored in the cache


@dataclass(frozen=True)
class ShardInfo:
    index: int  # shard number k: holds images [k*S, (k+1)*S)
    file: str  # "shard-00000.tar"
    samples: int
    bytes: int
    sha256: str
    index_file: str  # our JSON index, "shard-00000.json"
    index_sha256: str
    dali_index: str  # DALI's index, "shard-00000.idx"
    dali_index_sha256: str


@dataclass(frozen=True)
class SkipInfo:
    image_id: int | None
    annotation_id: int | None
    file_name: str | None
    reason: str


@dataclass(frozen=True)
class MemberBytes:
    image: int
    sem: int
    ins: int
    off: int
    heat: int
    meta: int


@dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.json``. Target maps are ``(ceil(H/stride), ceil(W/stride))``; see docs/design.md."""

    schema_version: int
    fastload_version: str
    sigma: float
    stride: int
    samples_per_shard: int
    png_compression: int
    offset_scale: int
    heat_scale: int
    categories: tuple[CategoryInfo, ...]
    num_classes: int  # K + 1: train ids 0 (background) .. K; 255 = ignore is not a class
    coco_sha256: str
    images: int  # validated COCO images (sample positions), skipped ones included
    samples: int
    instances: int
    offset_clipped_pixels: int
    skips: tuple[SkipInfo, ...]
    shards: tuple[ShardInfo, ...]
    total_bytes: int
    member_bytes: MemberBytes


def parse_manifest(data: Any, *, where: str) -> Manifest:
    """Validate a manifest dict (schema version first) and turn it into a `Manifest`."""
    if not isinstance(data, dict) or not isinstance(data.get("schema_version"), int):
        raise CacheError(f"{where}: not a fastload cache manifest (no integer schema_version)")
    version = data["schema_version"]
    if version > SCHEMA_VERSION:
        raise CacheError(
            f"{where}: cache schema_version {version} was written by a newer fastload "
            f"({data.get('fastload_version', '?')}); this one reads schema_version <= {SCHEMA_VERSION}: "
            "upgrade fastload"
        )
    if version < 1:
        raise CacheError(f"{where}: invalid schema_version {version}")
    try:
        cfg, counts = data["config"], data["counts"]
        return Manifest(
            schema_version=version,
            fastload_version=str(data["fastload_version"]),
            sigma=float(cfg["sigma"]),
            stride=int(cfg["stride"]),
            samples_per_shard=int(cfg["samples_per_shard"]),
            png_compression=int(cfg["png_compression"]),
            offset_scale=int(cfg["offset_scale"]),
            heat_scale=int(cfg["heat_scale"]),
            categories=tuple(CategoryInfo(**c) for c in data["categories"]),
            num_classes=int(data["num_classes"]),
            coco_sha256=str(data["source"]["coco_sha256"]),
            images=int(counts["images"]),
            samples=int(counts["samples"]),
            instances=int(counts["instances"]),
            offset_clipped_pixels=int(counts["offset_clipped_pixels"]),
            skips=tuple(SkipInfo(**s) for s in data["skips"]),
            shards=tuple(ShardInfo(**s) for s in data["shards"]),
            total_bytes=int(data["bytes"]["total"]),
            member_bytes=MemberBytes(**data["bytes"]["members"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheError(f"{where}: malformed manifest ({type(exc).__name__}: {exc}); rebuild the cache") from exc


def load_manifest(cache_dir: str | Path) -> Manifest:
    """Read and validate ``CACHE/manifest.json``; a missing one means the build did not finish."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise CacheError(f"cache directory {str(cache_dir)!r} does not exist; build it with `fastload cache build`")
    path = cache_dir / MANIFEST_NAME
    try:
        data = read_json(path, what="manifest")
    except FileNotFoundError:
        parts = sorted(p.name for p in cache_dir.glob("manifest.part-*.json"))
        hint = (
            f"found partial manifests {parts[:4]}: run `fastload cache merge {cache_dir}` once every node is done"
            if parts
            else f"the build did not finish: run `fastload cache build ... --out {cache_dir} --resume`"
        )
        raise CacheError(f"{path} is missing; {hint}") from None
    return parse_manifest(data, where=str(path))
