"""`shard_fingerprint`: what a shard's bytes depend on, hashed; a resumed build keeps a shard whose record has it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastload.build.records import ImageRecord, Instance
from fastload.build.rules import resolve_image_path
from fastload.cache.format import SCHEMA_VERSION, dumps_canonical
from fastload.errors import AnnotationError


def _instance_summary(inst: Instance) -> dict[str, Any]:
    rle = inst.rle
    if rle is not None:
        counts = rle["counts"]
        rle = {"size": list(rle["size"]), "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
    return {
        "annotation_id": inst.annotation_id,
        "category_id": inst.category_id,
        "train_id": inst.train_id,
        "iscrowd": bool(inst.iscrowd),
        # NaN separates rings; JSON cannot hold NaN, and the hash needs the exact float bits anyway
        "polygons": [hashlib.sha256(np.ascontiguousarray(p, dtype="<f8").tobytes()).hexdigest() for p in inst.polygons],
        "rle": rle,
    }


def _file_size(image_root: Path, record: ImageRecord) -> int | None:
    try:
        return resolve_image_path(image_root, record).stat().st_size
    except (OSError, AnnotationError):
        return None


def shard_fingerprint(header: dict[str, Any], items: Sequence[tuple[int, ImageRecord]], image_root: Path) -> str:
    """sha256 of what a shard's bytes depend on: config, classes, records, and each image file's size.

    Image *contents* are not hashed (that would cost a full read of the data set on every resume): a file
    replaced by one of exactly the same size is not noticed; a fixed, added or removed file is.
    """
    payload = {
        "schema_version": SCHEMA_VERSION,
        "fastload_version": header["fastload_version"],
        "config": header["config"],
        "categories": header["categories"],
        "images": [
            {
                "position": position,
                "image_id": rec.image_id,
                "file_name": rec.file_name,
                "height": rec.height,
                "width": rec.width,
                "file_bytes": _file_size(image_root, rec),
                "instances": [_instance_summary(inst) for inst in rec.instances],
            }
            for position, rec in items
        ],
    }
    return hashlib.sha256(dumps_canonical(payload)).hexdigest()
