"""COCO JSON → validated image and annotation records.

``load_coco`` reads ``images``, ``categories`` and ``annotations`` (``info`` and ``licenses`` may be
missing) and returns a frozen :class:`CocoDataset` whose geometry is safe to rasterise.

Categories
    Sorted by COCO id. A category with id 0 or named ``_background_`` is *background*: it gets no train
    id and its annotations are dropped, each recorded as a `SkipInfo` with reason
    ``background category`` (under both policies — it is a convention, not an error). The other
    categories get contiguous train ids 1..K in COCO-id order; 0 is background and 255 is ignore, so
    K ≤ 254. Category problems (duplicate id, wrong type, an id outside 0..2^63-1, K > 254) always raise: they
    are global. A negative id has no agreed meaning (some tools mean "ignore" by -1), so it is refused with
    the fix rather than trained on as a class.

Images
    ``file_name`` is relative to the image root and may contain subfolders and any Unicode; absolute
    names and names whose ``..`` climbs above the root are refused (:func:`resolve_image_path`, checked
    lexically at load time). Image and annotation ids are integers in -2^63..2^63-1 (the cache keeps them in
    int64 tables). Images without annotations are kept (all background). Integral floats
    (``600.0``) are accepted where an integer is expected. Height and width are at most 2^20 each and
    2^30 pixels together (OpenCV's decoding limits: a larger image could not be cached).

Annotations
    Polygons (one or several parts) or RLE (compressed ``counts`` string or uncompressed list; stored
    compressed, as pycocotools makes it). ``iscrowd=1`` marks an ignore region (255 in the semantic mask),
    never an instance. ``bbox`` is not used and may be missing; ``area`` is informational. Polygon parts
    are judged with shapely and stored as drawn, or repaired and clipped where pycocotools cannot draw them
    (`fastload.build.geometry`); an RLE is checked against the image size (`fastload.build.rle`).

Policies (``on_error``)

====================================  ===================================  ===================================
problem                               ``"fail"`` (default)                 ``"skip"``
====================================  ===================================  ===================================
image: bad id/height/width/file_name  AnnotationError                      image skipped (and its annotations)
duplicate image id                    AnnotationError                      every image with that id skipped
                                                                           (annotations cannot be attributed)
annotation: wrong type, unknown       AnnotationError                      annotation skipped
image/category, bad RLE
duplicate annotation id               AnnotationError                      the later ones skipped
bad polygon part, other parts good    AnnotationError                      the part dropped, the instance kept
                                                                           with its good parts (recorded)
every polygon part bad                AnnotationError                      annotation skipped
====================================  ===================================  ===================================

Every skip is recorded in ``CocoDataset.skips`` with the image id, annotation id, file name and reason.
Error messages name the image id and annotation id and end with the fix: "fix the annotation or pass
--on-error skip".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastload.build.geometry import BadPart, polygon_parts
from fastload.build.records import Category, CocoDataset, ImageRecord, Instance
from fastload.build.rle import RleError, check_rle
from fastload.build.rules import (
    BACKGROUND_CATEGORY,
    OnError,
    OnErrorPolicy,
    RecordProblem,
    as_id,
    as_int,
    parse_image,
    read_coco_json,
)
from fastload.cache.manifest import INT64_MAX, INT64_MIN  # ids: the cache's int64 tables
from fastload.errors import AnnotationError
from fastload.labels import BACKGROUND, IGNORE, MAX_CLASSES
from fastload.validation import is_int

# ------------------------------------------------------------------------------------------ loading


def load_coco(path: str | Path, *, on_error: OnError = "fail") -> CocoDataset:
    """Read and validate a COCO instances JSON file.

    Parameters
    ----------
    path : str or Path
        The COCO JSON file.
    on_error : {"fail", "skip"}
        ``"fail"`` raises at the first bad record; ``"skip"`` leaves it out and records a
        `SkipInfo` (see the module docstring for the table).

    Returns
    -------
    CocoDataset
        Images in file order, categories in COCO-id order (train ids 1..K), skips in the order found.

    Raises
    ------
    AnnotationError
        Unreadable JSON, missing top-level lists, bad categories, or (under ``"fail"``) any bad record.
    """
    policy = OnErrorPolicy(on_error)
    data, source_sha256 = read_coco_json(Path(path), kind="instances")
    categories, background = _parse_categories(data["categories"])
    images = _parse_images(data["images"], policy)
    by_image = _parse_annotations(data["annotations"], _Known(images, categories, background), policy)
    records = tuple(
        ImageRecord(image_id, name, height, width, tuple(by_image.get(image_id, ())))
        for image_id, (name, height, width) in images.items()
    )
    return CocoDataset(records, tuple(categories.values()), tuple(policy.skips), source_sha256)


def _parse_categories(raw: list) -> tuple[dict[int, Category], set[int]]:
    """Category id → Category for the trained ones, and the set of background category ids."""
    seen: dict[int, str] = {}
    for k, cat in enumerate(raw):
        try:
            if not isinstance(cat, dict):
                raise RecordProblem(f"must be an object, got {type(cat).__name__}")
            coco_id = as_int(cat.get("id"), "id")
            name = cat.get("name")
            if not isinstance(name, str):
                raise RecordProblem(f"name must be a string, got {name!r}")
            if not 0 <= coco_id <= INT64_MAX:
                raise RecordProblem(
                    f"category id {coco_id} ({name!r}) is outside 0..2**63-1: COCO category ids are positive "
                    "integers, 0 being the background; renumber it to an unused positive id, in 'categories' and in "
                    "its annotations' category_id (to ignore its regions in training instead, give those "
                    "annotations iscrowd=1)"
                )
        except RecordProblem as bad:
            raise AnnotationError(f"categories[{k}]: {bad}; fix the category list") from None
        if coco_id in seen:
            raise AnnotationError(f"category id {coco_id} appears twice; fix the category list")
        seen[coco_id] = name
    background = {cid for cid, name in seen.items() if cid == 0 or name == BACKGROUND_CATEGORY}
    trained = [cid for cid in sorted(seen) if cid not in background]
    if len(trained) > MAX_CLASSES:
        raise AnnotationError(
            f"{len(trained)} categories, at most {MAX_CLASSES} fit in a uint8 mask ({BACKGROUND} = background, {IGNORE} = ignore)"
        )
    return {cid: Category(cid, seen[cid], k + 1) for k, cid in enumerate(trained)}, background


def _parse_images(raw: list, policy: OnErrorPolicy) -> dict[int, tuple[str, int, int]]:
    """Image id → (file_name, height, width) for the valid images, in file order."""
    parsed: list[tuple[int, str, int, int]] = []
    for k, img in enumerate(raw):
        image_id = img.get("id") if isinstance(img, dict) else None
        file_name = img.get("file_name") if isinstance(img, dict) else None
        try:
            parsed.append(parse_image(img))
        except RecordProblem as bad:
            where = f"image {image_id!r}" if image_id is not None else f"images[{k}]"
            ok_id = _int_or_none(image_id)
            ok_name = file_name if isinstance(file_name, str) else None
            policy.reject(where, str(bad), image_id=ok_id, file_name=ok_name)
    counts = Counter(image_id for image_id, *_ in parsed)
    images: dict[int, tuple[str, int, int]] = {}
    for image_id, name, height, width in parsed:
        if counts[image_id] > 1:
            policy.reject(
                f"image {image_id} (file_name {name!r})",
                f"duplicate image id {image_id} ({counts[image_id]} images share it)",
                image_id=image_id,
                file_name=name,
            )
        else:
            images[image_id] = (name, height, width)
    return images


@dataclass(frozen=True)
class _Known:
    """What annotations are checked against."""

    images: Mapping[int, tuple[str, int, int]]  # image id → (file_name, height, width)
    categories: Mapping[int, Category]
    background: set[int]


class _BackgroundAnnotation(Exception):
    """Internal: the annotation belongs to a background category (dropped, recorded, never an error)."""


def _parse_annotations(raw: list, known: _Known, policy: OnErrorPolicy) -> dict[int, list[Instance]]:
    """Image id → its instances in annotation order."""
    by_image: dict[int, list[Instance]] = {}
    seen_ids: set[int] = set()
    for k, ann in enumerate(raw):
        where, ids = _annotation_names(ann, k, known)
        try:
            instance, dropped = _parse_annotation(ann, known, seen_ids)
        except _BackgroundAnnotation:
            policy.record("background category", **ids)
            continue
        except RecordProblem as bad:
            policy.reject(where, str(bad), **ids)
            continue
        if dropped and policy.fail:
            policy.reject(where, "; ".join(dropped), **ids)  # raises
        for reason in dropped:
            policy.record(f"{reason}; part dropped, the instance keeps its other parts", **ids)
        by_image.setdefault(ids["image_id"], []).append(instance)
    return by_image


def _annotation_names(ann: Any, k: int, known: _Known) -> tuple[str, dict]:
    """How messages name an annotation (``image 7, annotation 42``) and the ids a SkipInfo records."""
    image_id = ann.get("image_id") if isinstance(ann, dict) else None
    ann_id = ann.get("id") if isinstance(ann, dict) else None
    where = f"image {image_id!r}, annotation {ann_id!r}" if ann_id is not None else f"annotations[{k}]"
    ids = {"image_id": _int_or_none(image_id), "annotation_id": _int_or_none(ann_id), "file_name": None}
    if ids["image_id"] in known.images:
        ids["file_name"] = known.images[ids["image_id"]][0]
    return where, ids


def _int_or_none(value: Any) -> int | None:
    """An id as a SkipInfo records it: an int in the id range, else None (the reason still shows the value)."""
    return int(value) if is_int(value) and INT64_MIN <= value <= INT64_MAX else None


def _parse_annotation(ann: Any, known: _Known, seen_ids: set[int]) -> tuple[Instance, list[str]]:
    """The instance, and the reasons of the polygon parts dropped from it (if any)."""
    if not isinstance(ann, dict):
        raise RecordProblem(f"annotation must be an object, got {type(ann).__name__}")
    ann_id = as_id(ann.get("id"), "annotation id", "renumber the annotation")
    if ann_id in seen_ids:
        raise RecordProblem(f"duplicate annotation id {ann_id} (the first one is kept)")
    seen_ids.add(ann_id)
    image_id = as_int(ann.get("image_id"), "image_id")
    if image_id not in known.images:
        raise RecordProblem(f"image_id {image_id} is not in 'images' (or that image was skipped)")
    category_id = as_int(ann.get("category_id"), "category_id")
    if category_id in known.background:
        raise _BackgroundAnnotation
    if category_id not in known.categories:
        raise RecordProblem(f"category_id {category_id} is not in 'categories'")
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1) or isinstance(iscrowd, float):
        raise RecordProblem(f"iscrowd must be 0 or 1, got {iscrowd!r}")
    area = ann.get("area", 0.0)
    if isinstance(area, bool) or not isinstance(area, (int, float)):
        raise RecordProblem(f"area must be a number, got {area!r}")
    _, height, width = known.images[image_id]
    polygons, rle, dropped = _parse_segmentation(ann.get("segmentation"), height, width)
    train_id = known.categories[category_id].train_id
    return Instance(ann_id, category_id, train_id, bool(iscrowd), polygons, rle, float(area)), dropped


def _parse_segmentation(seg: Any, height: int, width: int) -> tuple[tuple[np.ndarray, ...], dict | None, list[str]]:
    try:
        if isinstance(seg, dict):
            return (), check_rle(seg, height, width), []
        if isinstance(seg, list):
            parts, dropped = polygon_parts(seg, height, width)
            return parts, None, dropped
    except (BadPart, RleError) as bad:
        raise RecordProblem(str(bad)) from None
    raise RecordProblem(f"segmentation must be a list of polygons or an RLE object, got {type(seg).__name__}")
