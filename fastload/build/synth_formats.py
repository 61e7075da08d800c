"""Synthetic data sets in the exact layouts users hold: COCO panoptic and Cityscapes, from the same random scenes.

A scene (`synth_scene`, a pure function of ``(seed, index, size)``) is a street-like picture's objects in drawing
order, later on top: a ``sky`` band, a ``building`` band whose roof line cuts into the sky, a void gap (no object:
Cityscapes' ``unlabeled``, panoptic void), a ``sidewalk`` strip, a ``road`` band, then things (``person``,
``rider``, ``car``, ``bicycle``: random star-shaped polygons with integer vertices, half of them pulled onto an
earlier one so that overlaps are common, some crossing the border), often a crowd (``cargroup``), a ``license
plate`` on a car (a label Cityscapes never draws) and an ``ego vehicle`` (void) along the bottom.

`write_cityscapes` writes the scene's polygons as they are (``gtFine/{split}/{city}/*_gtFine_polygons.json``,
pictures as ``leftImg8bit/{split}/{city}/*_leftImg8bit.png``). `write_panoptic` paints them, in the same order,
into a segment-id PNG as Cityscapes' scripts paint (PIL's ``ImageDraw.polygon``: the way Cityscapes' own
panoptic PNGs come about), one segment per object, crowds as ``iscrowd=1`` segments of ``car``, the license plate
not at all, void labels as id 0; pictures as JPEGs (``images/``), the JSON as ``panoptic.json``, the PNGs under
``panoptic/``. A scene's two data sets therefore hold the same pixels: their readers must agree exactly. `write_synth_format` is what ``fastload synth --format`` calls.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw

from fastload.build.coco_panoptic import load_coco_panoptic
from fastload.build.segment_png import MAX_SEGMENT_ID, segment_ids_to_bgr
from fastload.build.sources import LabelDataset
from fastload.validation import MAX_SIDE, check_int, short_repr

FORMATS: tuple[str, ...] = ("panoptic", "cityscapes")
THING_LABELS = ("person", "rider", "car", "bicycle")
# the panoptic file's categories: sparse ids (train ids follow id order), Cityscapes' names and colours (RGB)
PANOPTIC_CATEGORIES = (
    {"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "bicycle", "isthing": 1, "color": [119, 11, 32]},
    {"id": 3, "name": "car", "isthing": 1, "color": [0, 0, 142]},
    {"id": 5, "name": "rider", "isthing": 1, "color": [255, 0, 0]},
    {"id": 100, "name": "road", "isthing": 0, "color": [128, 64, 128]},
    {"id": 101, "name": "sidewalk", "isthing": 0, "color": [244, 35, 232]},
    {"id": 111, "name": "building", "isthing": 0, "color": [70, 70, 70]},
    {"id": 119, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
)
_PANOPTIC_ID = {c["name"]: c["id"] for c in PANOPTIC_CATEGORIES}
_COLOUR = {c["name"]: c["color"] for c in PANOPTIC_CATEGORIES} | {"ego vehicle": [20, 20, 20], "license plate": [230, 230, 230]}
CITIES = ("aachen", "bochum")
JPEG_QUALITY = 90


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: a Cityscapes label name, its polygon (int64 (K, 2) ``(x, y)``), crowd or not."""

    label: str
    polygon: np.ndarray
    crowd: bool = False

    @property
    def cityscapes_label(self) -> str:
        return f"{self.label}group" if self.crowd else self.label


@dataclass(frozen=True)
class SynthFiles:
    """What a writer wrote, and how to read it.

    image_root : the folder the records' ``file_name``s are relative to
    annotations : panoptic: the JSON file; cityscapes: the root that holds ``gtFine/`` (= ``image_root``)
    png_dir : panoptic: the folder of the segment-id PNGs; cityscapes: None
    """

    format: str
    image_root: Path
    annotations: Path
    png_dir: Path | None

    def load(self, **options: Any) -> LabelDataset:
        """Read the data set back with its format's reader (``options``: that reader's keywords)."""
        if self.format == "panoptic":
            return load_coco_panoptic(self.annotations, self.png_dir, **options)
        from fastload.build.cityscapes import load_cityscapes

        return load_cityscapes(self.annotations, **options)


# ------------------------------------------------------------------------------------------------ scenes


def synth_scene(seed: int, index: int, size: tuple[int, int]) -> tuple[SceneObject, ...]:
    """The objects of image ``index``, in drawing order (later on top); a pure function of its arguments."""
    height, width = size
    rng = np.random.default_rng([seed, index, 17])
    objects = [
        SceneObject("sky", _box(0, 0, width - 1, int(0.42 * height))),
        SceneObject("building", _roofline(rng, height, width)),
        SceneObject("sidewalk", _box(0, int(0.6 * height), width - 1, int(0.7 * height))),
        SceneObject("road", _road(rng, height, width)),
    ]
    for _ in range(int(rng.integers(3, 8))):
        things = [o for o in objects if o.label in THING_LABELS]
        near = things[int(rng.integers(len(things)))].polygon.mean(axis=0) if things and rng.random() < 0.5 else None
        objects.append(SceneObject(str(rng.choice(THING_LABELS)), _star(rng, height, width, near)))
    cars = [o for o in objects if o.label == "car"]
    if cars:  # on the first car: Cityscapes never draws it (id -1), the panoptic PNG has the car there
        x0, y0 = cars[0].polygon.min(axis=0)
        x1, y1 = cars[0].polygon.max(axis=0)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        objects.append(SceneObject("license plate", _box(cx - 2, cy - 1, cx + 2, cy + 1)))
    if rng.random() < 0.7:
        objects.append(SceneObject("car", _star(rng, height, width, None, scale=1.6), crowd=True))
    if rng.random() < 0.5:
        top = int(rng.uniform(0.88, 0.95) * height)
        objects.append(SceneObject("ego vehicle", _box(0, top, width - 1, height - 1)))
    return tuple(objects)


def _box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.int64)


def _roofline(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A building band: a stepped roof line reaching into the sky, its bottom at ~55 % of the height."""
    steps = int(rng.integers(3, 7))
    xs = np.linspace(0, width - 1, steps + 1).round().astype(np.int64)
    roofs = rng.uniform(0.2, 0.4, size=steps) * height
    top = []
    for k in range(steps):
        top += [[xs[k], roofs[k]], [xs[k + 1], roofs[k]]]
    bottom = [[width - 1, 0.55 * height], [0, 0.55 * height]]
    return np.round(np.array(top + bottom)).astype(np.int64)


def _road(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A trapezoid from a vanishing band at ~66 % of the height to the bottom corners."""
    y = int(0.66 * height)
    left, right = rng.uniform(0.25, 0.45) * width, rng.uniform(0.55, 0.75) * width
    pts = [[left, y], [right, y], [width - 1, 0.8 * height], [width - 1, height - 1], [0, height - 1], [0, 0.8 * height]]
    return np.round(np.array(pts)).astype(np.int64)


def _star(rng: np.random.Generator, height: int, width: int, near: np.ndarray | None, scale: float = 1.0) -> np.ndarray:
    """A random radial polygon with integer vertices; it may cross the image border."""
    short = min(height, width)
    radius = rng.uniform(0.06, 0.16) * short * scale
    if near is not None:
        centre = near + rng.normal(0, radius, size=2)
    else:
        centre = np.array([rng.uniform(0, width), rng.uniform(0.35 * height, height)])
    k = int(rng.integers(5, 13))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=k))
    radii = radius * rng.uniform(0.4, 1.0, size=k)
    xy = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return np.round(xy).astype(np.int64)


def _picture(rng: np.random.Generator, scene: Sequence[SceneObject], height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) BGR: a textured background, each object painted in its class colour, grain."""
    coarse = rng.uniform(40, 200, size=(4, 5, 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for obj in scene:
        colour = np.array(_COLOUR[obj.label][::-1], np.float32) + rng.uniform(-20, 20, size=3).astype(np.float32)
        cv2.fillPoly(image, [obj.polygon.astype(np.int32)], tuple(float(c) for c in colour), lineType=cv2.LINE_8)
    pixels = image.astype(np.int16) + rng.integers(-12, 13, size=image.shape, dtype=np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ writers


def write_cityscapes(*, out: str | Path, n: int, size: tuple[int, int] = (256, 512), seed: int = 0, split: str = "train") -> SynthFiles:
    """Write ``n`` synthetic Cityscapes frames under ``out`` (``gtFine/{split}/...``, ``leftImg8bit/{split}/...``).

    Frame ``k`` is ``{city}_{k:06d}_000019`` in city ``CITIES[k % 2]``; its scene is ``synth_scene(seed, k, size)``.
    """
    height, width = _check(n, size)
    out = Path(out)
    for index in range(n):
        city = CITIES[index % len(CITIES)]
        frame = f"{city}_{index:06d}_000019"
        scene = synth_scene(seed, index, (height, width))
        gt = out / "gtFine" / split / city
        pictures = out / "leftImg8bit" / split / city
        gt.mkdir(parents=True, exist_ok=True)
        pictures.mkdir(parents=True, exist_ok=True)
        objects = [{"label": o.cityscapes_label, "polygon": o.polygon.tolist()} for o in scene]
        document = {"imgHeight": height, "imgWidth": width, "objects": objects}
        (gt / f"{frame}_gtFine_polygons.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        picture = _picture(np.random.default_rng([seed, index, 29]), scene, height, width)
        _write_image(pictures / f"{frame}_leftImg8bit.png", picture)
    return SynthFiles("cityscapes", out, out, None)


def write_panoptic(*, out: str | Path, n: int, size: tuple[int, int] = (256, 512), seed: int = 0) -> SynthFiles:
    """Write ``n`` synthetic COCO panoptic images under ``out`` (``panoptic.json``, ``panoptic/``, ``images/``).

    Image ``k`` has id ``k + 1`` and the scene ``synth_scene(seed, k, size)``, painted with ``cv2.fillPoly``.
    """
    height, width = _check(n, size)
    out = Path(out)
    (out / "panoptic").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(n):
        scene = synth_scene(seed, index, (height, width))
        rng = np.random.default_rng([seed, index, 31])
        ids, segments = _segment_map(rng, scene, height, width)
        name = f"{index:06d}"
        _write_image(out / "panoptic" / f"{name}.png", segment_ids_to_bgr(ids))
        _write_image(out / "images" / f"{name}.jpg", _picture(np.random.default_rng([seed, index, 29]), scene, height, width))
        images.append({"id": index + 1, "file_name": f"{name}.jpg", "height": height, "width": width})
        annotations.append({"image_id": index + 1, "file_name": f"{name}.png", "segments_info": segments})
    categories = [{**c, "supercategory": "thing" if c["isthing"] else "stuff"} for c in PANOPTIC_CATEGORIES]
    document = {"images": images, "annotations": annotations, "categories": categories}
    path = out / "panoptic.json"
    path.write_text(json.dumps(document, separators=(",", ":")) + "\n", encoding="utf-8")
    return SynthFiles("panoptic", out / "images", path, out / "panoptic")


def _segment_map(rng: np.random.Generator, scene: Sequence[SceneObject], height: int, width: int) -> tuple[np.ndarray, list[dict]]:
    """The segment-id map (int32 (H, W)), drawn as Cityscapes' scripts draw (PIL), and ``segments_info``.

    Cityscapes' own panoptic PNGs (``createPanopticImgs``) come from label images that PIL drew: a scene's two
    formats then hold the same pixels, and their readers must agree exactly. Every object of a panoptic category
    gets a segment, in scene order (a hidden one too: a listed segment absent from the PNG).
    """
    objects = [o for o in scene if o.label in _PANOPTIC_ID or o.label == "ego vehicle"]
    segment_ids: list[int] = []
    while len(segment_ids) < len(objects):  # distinct, spread over all three channels
        candidate = int(rng.integers(1, MAX_SEGMENT_ID + 1))
        if candidate not in segment_ids:
            segment_ids.append(candidate)
    canvas = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for obj, segment_id in zip(objects, segment_ids, strict=True):
        value = 0 if obj.label == "ego vehicle" else segment_id  # a void label: void pixels
        draw.polygon([tuple(p) for p in obj.polygon.tolist()], fill=value)
    ids = np.asarray(canvas)
    segments = []
    for obj, segment_id in zip(objects, segment_ids, strict=True):
        if obj.label == "ego vehicle":
            continue
        rows, cols = np.nonzero(ids == segment_id)
        bbox = [int(cols.min()), int(rows.min()), int(cols.max() - cols.min()) + 1, int(rows.max() - rows.min()) + 1] if rows.size else [0, 0, 0, 0]
        segments.append({"id": segment_id, "category_id": _PANOPTIC_ID[obj.label], "iscrowd": int(obj.crowd),
                         "area": int(rows.size), "bbox": bbox})  # fmt: skip
    return ids, segments


def _write_image(path: Path, pixels: np.ndarray) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.suffix == ".jpg" else []
    ok, data = cv2.imencode(path.suffix, pixels, params)
    if not ok:
        raise RuntimeError(f"encoding {path.name} failed")
    path.write_bytes(data.tobytes())


def _check(n: int, size: tuple[int, int]) -> tuple[int, int]:
    """``size`` checked (16 .. `fastload.validation.MAX_SIDE` per side, ``ValueError`` naming it), with ``n >= 0``."""
    check_int("n", n, 0, error=ValueError)
    if not isinstance(size, Sequence) or isinstance(size, str) or len(size) != 2:
        raise ValueError(f"size must be two integers, got {short_repr(size)}")
    height, width = (check_int(f"size[{k}]", v, 16, MAX_SIDE, error=ValueError) for k, v in enumerate(size))
    return height, width


def write_synth_format(fmt: str, *, out: str | Path, n: int, size: tuple[int, int] = (256, 512), seed: int = 0) -> SynthFiles:
    """``fastload synth --format panoptic|cityscapes``: write a data set of that format (see the writers)."""
    if fmt == "panoptic":
        return write_panoptic(out=out, n=n, size=size, seed=seed)
    if fmt == "cityscapes":
        return write_cityscapes(out=out, n=n, size=size, seed=seed)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
