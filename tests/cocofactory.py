"""Tiny synthetic COCO files for tests: write exactly the JSON you mean, plus small images.

    coco = CocoFactory(tmp_path)
    cat = coco.category(17, "cup")
    img = coco.image("sub/ü.png", height=40, width=30)
    coco.polygon(img, cat, [(2, 2), (20, 2), (20, 30)])
    path = coco.write()                 # tmp_path / "annotations.json"; images under coco.image_root

Everything the factory adds stays editable (``coco.images``, ``coco.annotations`` are plain lists of
dicts), so a test breaks exactly one field on purpose before ``write()``. :func:`unseen_coco` builds the
"COCO file you have not seen" (sparse category ids, crowd RLE both ways, multi-part polygons, portrait
image, subfolders, Unicode, a ``_background_`` category, an image without annotations).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

Points = Sequence[tuple[float, float]] | Sequence[float]


@dataclass
class CocoFactory:
    """A COCO instances file under construction, rooted at ``root``."""

    root: Path
    images: list[dict] = field(default_factory=list)
    categories: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"info": {...}, "licenses": []}

    @property
    def image_root(self) -> Path:
        return Path(self.root) / "images"

    def category(self, coco_id: int, name: str | None = None) -> int:
        self.categories.append({"id": coco_id, "name": name or f"class{coco_id}", "supercategory": "thing"})
        return coco_id

    def image(
        self,
        file_name: str | None = None,
        *,
        height: int = 32,
        width: int = 48,
        image_id: int | None = None,
        write_pixels: bool = True,
    ) -> int:
        """Add an image record (and a small PNG/JPEG with those pixels unless ``write_pixels=False``)."""
        image_id = len(self.images) + 1 if image_id is None else image_id
        file_name = file_name or f"{image_id}.png"
        self.images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        if write_pixels:
            write_image(self.image_root / file_name, height, width, seed=image_id)
        return image_id

    def polygon(
        self, image_id: int, category_id: int, *parts: Points, iscrowd: int = 0, ann_id: int | None = None
    ) -> int:
        """Add a polygon annotation; each part is ``[(x, y), ...]`` or a flat ``[x1, y1, ...]`` list."""
        segmentation = [np.asarray(part, dtype=np.float64).reshape(-1).tolist() for part in parts]
        return self._annotation(image_id, category_id, segmentation, iscrowd, ann_id)

    def rle(
        self,
        image_id: int,
        category_id: int,
        mask: np.ndarray,
        *,
        compressed: bool = True,
        iscrowd: int = 1,
        ann_id: int | None = None,
    ) -> int:
        """Add an RLE annotation of a bool (H, W) mask, compressed (``counts`` string) or not (list)."""
        segmentation = compressed_rle(mask) if compressed else uncompressed_rle(mask)
        return self._annotation(image_id, category_id, segmentation, iscrowd, ann_id)

    def write(self, name: str = "annotations.json") -> Path:
        path = Path(self.root) / name
        data = {**self.extra, "images": self.images, "categories": self.categories}
        data["annotations"] = self.annotations
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return path

    def _annotation(self, image_id, category_id, segmentation, iscrowd, ann_id) -> int:
        ann_id = len(self.annotations) + 1 if ann_id is None else ann_id
        self.annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": segmentation,
                "iscrowd": iscrowd,
                "area": 0.0,
            }
        )
        return ann_id


def write_image(path: Path, height: int, width: int, *, seed: int = 0) -> None:
    """A small deterministic colour image; the extension picks the format. Unicode paths work."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(path.suffix or ".png", pixels)
    if not ok:
        raise ValueError(f"OpenCV cannot encode {path.suffix!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded.tobytes())  # cv2.imwrite mangles non-ASCII paths on some platforms


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a bool (H, W) mask: column-major run lengths, starting with zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict:
    """COCO's compressed RLE (``counts`` string), as pycocotools writes it."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}


def disk(height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    """bool (H, W): pixel centres within ``radius`` of ``(cy, cx)`` (continuous coordinates)."""
    rows, cols = np.mgrid[:height, :width] + 0.5
    return (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2


def unseen_coco(root: Path) -> CocoFactory:
    """A COCO file unlike the sample data; returns the factory after writing ``root/annotations.json``.

    Categories 3 "cat", 17 "dog", 90 "toaster" (train ids 1, 2, 3) and 5 "_background_". Images:
    1 ``train/a.png`` landscape 40x60 (two polygons, one of two parts, and a compressed crowd RLE);
    2 ``train/b/portrait.jpg`` portrait 64x36 (one polygon, an uncompressed crowd RLE, a background
    annotation); 3 ``ünïcødé/图像.png`` with a polygon; 4 ``empty.png`` without annotations.
    """
    coco = CocoFactory(Path(root))
    for coco_id, name in ((90, "toaster"), (3, "cat"), (5, "_background_"), (17, "dog")):
        coco.category(coco_id, name)
    a = coco.image("train/a.png", height=40, width=60)
    coco.polygon(a, 3, [(4, 4), (24, 4), (24, 20), (4, 20)])
    coco.polygon(a, 17, [(30, 5), (40, 5), (35, 15)], [(44, 20), (56, 20), (56, 34), (44, 34)])
    coco.rle(a, 90, disk(40, 60, 30, 15, 6), compressed=True)
    b = coco.image("train/b/portrait.jpg", height=64, width=36)
    coco.polygon(b, 90, [(5, 10), (30, 12), (28, 50), (8, 44)])
    coco.rle(b, 3, disk(64, 36, 56, 18, 5), compressed=False)
    coco.polygon(b, 5, [(0, 0), (10, 0), (10, 10)])
    c = coco.image("ünïcødé/图像.png", height=30, width=30)
    coco.polygon(c, 17, [(3, 3), (27, 5), (15, 26)])
    coco.image("empty.png", height=20, width=20)
    coco.write()
    return coco
