"""Writing a cache's manifest: completion records and partial manifests by name, atomic writes, and the
manifest assembled from the build header and every shard's completion record.

A build writes, for each shard, ``shard-XXXXX.done.json`` last (after the tar and both indexes are in place),
and ``manifest.json`` after every shard is done. The manifest is a pure function of the build header (config,
categories, COCO-level skips) and the completion records, so a single build and a multi-node build merged
with ``fastload cache merge`` give the same bytes. Its schema and its readers: `fastload.cache.manifest`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from itertools import islice
from pathlib import Path
from typing import Any

from fastload.cache.format import SCHEMA_VERSION, shard_stem
from fastload.cache.jsonio import dumps_canonical
from fastload.cache.manifest import BYTE_KINDS, LABEL_FORMAT
from fastload.errors import CacheError
from fastload.labels import IGNORE


def part_name(node_rank: int, num_nodes: int) -> str:
    """File name of a node's partial manifest."""
    return f"manifest.part-{node_rank:05d}-of-{num_nodes:05d}.json"


def done_name(shard: int) -> str:
    return f"{shard_stem(shard)}.done.json"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` so that it either has the full new content or does not change (tmp, fsync, replace)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no half-written .tmp left holding space
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def pretty_json(value: Any) -> bytes:
    """Deterministic, human-readable JSON for the files people open (manifest, records)."""
    return (json.dumps(json.loads(dumps_canonical(value)), indent=1, sort_keys=True) + "\n").encode("utf-8")




def assemble_manifest(header: Mapping[str, Any], records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The manifest (as a JSON-ready dict) from the build header and every shard's completion record.

    ``header`` holds ``fastload_version``, ``config``, ``categories`` (coco_id, train_id, name, isthing),
    ``source`` (format, coco_sha256: the annotations' sha256, and the Cityscapes split), ``images`` (validated
    images), ``num_shards``, ``coco_skips`` (the reader's skips) and, in a split build, ``split`` (name, fractions,
    seed). A header or records of a build from before things, stuff and pixel counts were recorded (a multi-node
    build merged after an upgrade) give a manifest without them, which reads as before (all things).
    """
    records = sorted(records, key=lambda r: r["shard"])
    found = [r["shard"] for r in records]
    num_shards = header["num_shards"]
    if len(found) != len(range(num_shards)) or found != list(range(num_shards)):  # lengths first: no huge list
        have = set(found)
        missing = list(islice((k for k in range(num_shards) if k not in have), 10))
        raise CacheError(f"cannot write the manifest: shard(s) {missing} have no completion record")
    per_class: dict[str, int] = {}
    pixels: dict[str, int] | None = {} if all("pixels_per_class" in r for r in records) else None
    member_bytes = dict.fromkeys(BYTE_KINDS, 0)
    skips = [dict(s) for s in header["coco_skips"]]
    normalised: list[dict[str, Any]] = []
    shards = []
    for rec in records:
        for train_id, count in rec["instances_per_class"].items():
            per_class[train_id] = per_class.get(train_id, 0) + count
        for value, count in rec.get("pixels_per_class", {}).items():
            if pixels is not None:
                pixels[value] = pixels.get(value, 0) + count
        for kind in BYTE_KINDS:
            member_bytes[kind] += rec["member_bytes"][kind]
        skips.extend(rec["skips"])
        normalised.extend(rec["normalised"])
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
        | ({} if pixels is None else {"pixels": pixels.get(str(c["train_id"]), 0)})
        for c in sorted(header["categories"], key=lambda c: c["train_id"])
    ]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "fastload_version": header["fastload_version"],
        "config": {**header["config"], "label_format": LABEL_FORMAT},
        "categories": categories,
        "num_classes": len(categories) + 1,
        "source": header["source"] if "source" in header else {"coco_sha256": header["coco_sha256"]},
        "counts": {
            "images": header["images"],
            "samples": sum(r["samples"] for r in records),
            "instances": sum(r["instances"] for r in records),
            "skipped": len(skips),
            "normalised": len(normalised),
        },
        "skips": skips,
        "normalised": normalised,
        "shards": shards,
        "bytes": {
            "total": sum(s["bytes"] for s in shards),
            "members": member_bytes,
        },
    }
    if pixels is not None:  # the semantic masks' pixels: all of them, background (0), ignore (255)
        total = sum(pixels.values())
        manifest["pixels"] = {"total": total, "background": pixels.get("0", 0), "ignore": pixels.get(str(IGNORE), 0)}
    if header.get("split") is not None:  # only in split builds: a plain build's manifest is what it always was
        manifest["split"] = header["split"]
    return manifest


# ----------------------------------------------------------------------------------------------- parsing
