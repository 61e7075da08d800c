"""COCO instances (`fastload.build.coco.load_coco`) as a `LabelDataset`: the COCO path in the common label type.

Things and stuff
    A COCO instances file does not say which categories are stuff, so the build config says it (``things:``,
    category ids or names; `from_coco`'s ``things``); by default every category is a thing. The masks are
    `fastload.build.raster.rasterize_image`'s (pycocotools' pixels, crowd regions 255, smaller region on top,
    whatever its class); then the regions of stuff categories leave the instance mask (instance 0, the things
    renumbered 1..N in annotation order) and stay in the semantic mask. With every category a thing nothing
    changes: a cache built through `LabelImage.labels` holds what the COCO path stored before, byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastload.build.raster import rasterize_image
from fastload.build.records import Category, CocoDataset, ImageRecord, Instance
from fastload.build.sources import ImageLabels, LabelCategory, LabelDataset, LabelImage, Thing
from fastload.errors import ConfigError


@dataclass(frozen=True, eq=False)
class CocoInstances:
    """The `LabelSource` of a COCO instances image: its validated instances (polygons or RLE).

    stuff : the train ids of the stuff categories (their regions are semantic only), ascending
    """

    instances: tuple[Instance, ...]
    stuff: tuple[int, ...] = ()

    def render(self, image: LabelImage, *, max_image_pixels: int) -> ImageLabels:
        record = ImageRecord(image.image_id, image.file_name, image.height, image.width, self.instances)
        raster = rasterize_image(record)
        instance, kept = raster.instance, raster.instances
        if self.stuff:
            keep = [k for k, inst in enumerate(kept) if inst.train_id not in self.stuff]
            lut = np.zeros(len(kept) + 1, dtype=np.int32)
            lut[np.asarray(keep, dtype=np.intp) + 1] = np.arange(1, len(keep) + 1, dtype=np.int32)
            instance, kept = lut[instance], tuple(kept[k] for k in keep)
        things = tuple(Thing(i.annotation_id, i.category_id, i.train_id) for i in kept)
        return ImageLabels(raster.semantic, instance, things)

    def summary(self) -> dict[str, Any]:
        rows = []
        for inst in self.instances:
            digest = hashlib.sha256()
            for part in inst.polygons:
                digest.update(np.ascontiguousarray(part, dtype="<f8").tobytes() + b"|")
            rle = inst.rle["counts"] if inst.rle is not None else b""
            digest.update(rle if isinstance(rle, bytes) else str(rle).encode())
            rows.append([inst.annotation_id, inst.category_id, inst.train_id, inst.iscrowd, digest.hexdigest()])
        return {"format": "coco_instances", "instances": rows, "stuff": list(self.stuff)}


def thing_flags(categories: Sequence[Category], things: Sequence[int | str] | None) -> tuple[bool, ...]:
    """Per category (in the given order): is it a thing? ``things`` lists category ids and names; None = all.

    Raises
    ------
    ConfigError
        An id or a name in ``things`` that is no category (named, with the categories there are).
    """
    if things is None:
        return tuple(True for _ in categories)
    ids = {c.coco_id for c in categories}
    names = {c.name for c in categories}
    unknown = [t for t in things if (t not in ids if isinstance(t, int) else t not in names)]
    if unknown:
        known = ", ".join(f"{c.coco_id} {c.name!r}" for c in categories[:12])
        more = f" and {len(categories) - 12} more" if len(categories) > 12 else ""
        raise ConfigError(
            f"things: {', '.join(repr(t) for t in unknown)} is no category of the COCO file (background categories "
            f"have none either); the categories are {known}{more}; list category ids or names from these"
        )
    wanted = set(things)
    return tuple(c.coco_id in wanted or c.name in wanted for c in categories)


def from_coco(dataset: CocoDataset, *, things: Sequence[int | str] | None = None) -> LabelDataset:
    """The same images, categories and skips as a `LabelDataset`; ``things`` as `thing_flags` takes it."""
    flags = thing_flags(dataset.categories, things)
    categories = tuple(LabelCategory(c.coco_id, c.name, c.train_id, f) for c, f in zip(dataset.categories, flags, strict=True))
    stuff = tuple(c.train_id for c in categories if not c.isthing)
    images = tuple(
        LabelImage(r.image_id, r.file_name, r.height, r.width, CocoInstances(r.instances, stuff)) for r in dataset.images
    )
    return LabelDataset(images, categories, dataset.skips, dataset.source_sha256)
