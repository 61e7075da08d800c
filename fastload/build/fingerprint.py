"""`shard_fingerprint`: what a shard's bytes depend on, hashed; a resumed build keeps a shard whose record has it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastload.build.rules import resolve_image_path
from fastload.build.sources import LabelImage, file_size
from fastload.cache.format import SCHEMA_VERSION
from fastload.cache.jsonio import dumps_canonical
from fastload.errors import AnnotationError


def _file_size(image_root: Path, image: LabelImage) -> int | None:
    try:
        return file_size(resolve_image_path(image_root, image))
    except AnnotationError:
        return None


def shard_fingerprint(header: dict[str, Any], items: Sequence[tuple[int, LabelImage]], image_root: Path) -> str:
    """sha256 of what a shard's bytes depend on: config, classes (things and stuff), each image's record and
    label source (`LabelImage.summary`), and each image file's size.

    Image and label file *contents* are not hashed (that would cost a full read of the data set on every
    resume): a file replaced by one of exactly the same size is not noticed; a fixed, added or removed file is.
    """
    payload = {
        "schema_version": SCHEMA_VERSION,
        "fastload_version": header["fastload_version"],
        "config": header["config"],
        "categories": header["categories"],
        "images": [
            {"position": position, **image.summary(), "file_bytes": _file_size(image_root, image)}
            for position, image in items
        ],
    }
    return hashlib.sha256(dumps_canonical(payload)).hexdigest()
