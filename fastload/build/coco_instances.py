"""COCO instances (`fastload.build.coco.load_coco`) as a `LabelDataset`: the existing path in the common label type.

Every COCO category is a thing (instances JSON has no stuff), background stays 0; the masks are
`fastload.build.raster.rasterize_image`'s (pycocotools' pixels, crowd regions 255, smaller instance on top), so a
cache built through `LabelImage.labels` holds what the COCO path stores today, table rows with ``iscrowd``
added.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastload.build.raster import rasterize_image
from fastload.build.records import CocoDataset, ImageRecord, Instance
from fastload.build.sources import ImageLabels, LabelCategory, LabelDataset, LabelImage, Thing


@dataclass(frozen=True, eq=False)
class CocoInstances:
    """The `LabelSource` of a COCO instances image: its validated instances (polygons or RLE)."""

    instances: tuple[Instance, ...]

    def render(self, image: LabelImage, *, max_image_pixels: int) -> ImageLabels:
        record = ImageRecord(image.image_id, image.file_name, image.height, image.width, self.instances)
        raster = rasterize_image(record)
        things = tuple(Thing(i.annotation_id, i.category_id, i.train_id) for i in raster.instances)
        return ImageLabels(raster.semantic, raster.instance, things)

    def summary(self) -> dict[str, Any]:
        rows = []
        for inst in self.instances:
            digest = hashlib.sha256()
            for part in inst.polygons:
                digest.update(np.ascontiguousarray(part, dtype="<f8").tobytes() + b"|")
            rle = inst.rle["counts"] if inst.rle is not None else b""
            digest.update(rle if isinstance(rle, bytes) else str(rle).encode())
            rows.append([inst.annotation_id, inst.category_id, inst.train_id, inst.iscrowd, digest.hexdigest()])
        return {"format": "coco_instances", "instances": rows}


def from_coco(dataset: CocoDataset) -> LabelDataset:
    """The same images, categories (all things) and skips, as a `LabelDataset`."""
    images = tuple(
        LabelImage(r.image_id, r.file_name, r.height, r.width, CocoInstances(r.instances)) for r in dataset.images
    )
    categories = tuple(LabelCategory(c.coco_id, c.name, c.train_id, True) for c in dataset.categories)
    return LabelDataset(images, categories, dataset.skips)
