"""What `fastload.build.coco.load_coco` gives the later steps of a build: images, their instances, categories, skips.

Frozen records, checked once at load: the rasteriser (`fastload.build.raster`), the shard writer and the shard
fingerprints read them and never check them again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastload.cache.manifest import SkipInfo


@dataclass(frozen=True)
class Category:
    """A COCO category that is trained on; ``train_id`` is in 1..K."""

    coco_id: int
    name: str
    train_id: int


@dataclass(frozen=True, eq=False)
class Instance:
    """One annotation after validation and repair.

    Attributes
    ----------
    polygons : tuple of float64 (K, 2) arrays
        Parts in ``(x, y)`` image coordinates, as drawn (repaired and clipped only beyond ±2^20 px, where a
        part may list its rings separated by NaN rows, see `fastload.build.geometry.part_rings`). ``()`` when the source was RLE.
    rle : dict or None
        pycocotools RLE (``{"size": [h, w], "counts": bytes}``, compressed) when the source was RLE.
    area : float
        COCO's ``area`` field (informational; the raster area may differ).
    """

    annotation_id: int
    category_id: int
    train_id: int
    iscrowd: bool
    polygons: tuple[np.ndarray, ...]
    rle: dict | None
    area: float


@dataclass(frozen=True)
class ImageRecord:
    """One image and its instances (crowd regions included, in annotation order)."""

    image_id: int
    file_name: str
    height: int
    width: int
    instances: tuple[Instance, ...]


@dataclass(frozen=True)
class CocoDataset:
    images: tuple[ImageRecord, ...]
    categories: tuple[Category, ...]
    skips: tuple[SkipInfo, ...]  # the manifest's own skip records: they go into it as they are
    source_sha256: str  # sha256 of the JSON file, as read (the manifest's source)
