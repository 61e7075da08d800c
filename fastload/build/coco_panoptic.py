"""COCO panoptic (JSON + segment-id PNGs) → validated `LabelImage` records whose masks are the PNG's segments.

Format (``panopticapi``; COCO 2017 panoptic, Cityscapes' ``createPanopticImgs``, Mapillary, ADE20K panoptic)
    The JSON has ``images`` (``id``, ``file_name``, ``height``, ``width``), ``categories`` (``id``, ``name``,
    ``isthing`` 0/1) and ``annotations``, one per image: ``image_id``, ``file_name`` (its PNG, under the PNG
    folder) and ``segments_info`` (``id``, ``category_id``, ``iscrowd``; ``area`` and ``bbox`` are not used).
    The PNG is RGB; a pixel belongs to segment ``R + 256·G + 256²·B``; 0 is void. Image ids are integers
    (int64) or strings (Cityscapes' conversion writes ``"aachen_000000_000019"``), which become
    `fastload.build.sources.stable_image_id` of the string.

Masks (`PanopticPng.render`, in the writer's worker)
    Exactly the PNG's segments, nothing drawn. Void (0) → semantic 255; a stuff segment → its train id, instance
    0; a thing segment → its train id and instance ids 1..N in ``segments_info`` order (segments with at least
    one pixel); a crowd segment (``iscrowd=1``, thing or stuff) → semantic 255 (``crowd="ignore"``) or its train id
    (``crowd="class"``), never an instance; a segment of a background category (id 0 or ``_background_``) → 0.
    A listed segment absent from the PNG is fine (no instance). Checked before anything is decoded: the file is a
    PNG, not truncated, its header declares the image's height x width and at most ``max_image_pixels``; after
    decoding (OpenCV, ``IMREAD_UNCHANGED``): 3 channels of uint8 (OpenCV's BGR order read back as RGB), and every
    non-zero id is listed in ``segments_info`` (an unlisted id is an AnnotationError naming the ids).

Load-time validation (``on_error``, as `fastload.build.coco.load_coco`)

========================================  =====================  ==========================================
problem                                   ``"fail"`` (default)   ``"skip"``
========================================  =====================  ==========================================
image: bad id / height / width / name     AnnotationError        image skipped
duplicate image id                        AnnotationError        every image with that id skipped
image with no annotation, or with several AnnotationError        image skipped
annotation: unknown image, bad PNG name,  AnnotationError        image (annotation) skipped
bad segment (id outside 1..2^24-1, not an
integer; unknown category; bad iscrowd),
duplicate segment id
========================================  =====================  ==========================================

Category problems (duplicate id, missing ``isthing``, more than 254 classes) always raise. Skips name the image,
the segment id where there is one (``SkipInfo.annotation_id``) and the reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastload.build.rules import (
    BACKGROUND_CATEGORY,
    OnError,
    OnErrorPolicy,
    RecordProblem,
    as_id,
    as_int,
    parse_image,
    read_coco_json,
    resolve_image_path,
)
from fastload.build.segment_png import MAX_SEGMENT_ID, PNG_FIX, decode_segment_ids
from fastload.build.sources import (
    Crowd,
    ImageLabels,
    LabelCategory,
    LabelDataset,
    LabelImage,
    Thing,
    check_crowd,
    file_size,
    labels_from_regions,
    relative_file_name_problem,
    stable_image_id,
)
from fastload.cache.manifest import INT64_MAX
from fastload.errors import AnnotationError, ImageError
from fastload.labels import IGNORE, MAX_CLASSES


@dataclass(frozen=True)
class Segment:
    """One entry of ``segments_info``: its id in the PNG, its category, train id (0: background category)."""

    segment_id: int
    category_id: int
    train_id: int
    isthing: bool
    iscrowd: bool


@dataclass(frozen=True)
class _Named:
    """What `resolve_image_path` needs of a record: the PNG's name, and the image id its messages name."""

    image_id: int
    file_name: str


@dataclass(frozen=True, eq=False)
class PanopticPng:
    """The `LabelSource` of a COCO panoptic image: its PNG (``png_dir / png_name``) and its segments."""

    png_dir: Path
    png_name: str
    segments: tuple[Segment, ...]
    crowd: Crowd

    def render(self, image: LabelImage, *, max_image_pixels: int) -> ImageLabels:
        path = resolve_image_path(self.png_dir, _Named(image.image_id, self.png_name))
        where = f"image {image.image_id} (file_name {image.file_name!r}), panoptic PNG {str(path)!r}"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{where}: cannot be read ({exc.strerror or exc}); {PNG_FIX}") from None
        ids = decode_segment_ids(data, image.height, image.width, max_image_pixels=max_image_pixels, where=where)
        keys = np.array([0] + sorted(s.segment_id for s in self.segments), dtype=np.uint32)
        pos = np.minimum(np.searchsorted(keys, ids), keys.size - 1)
        unlisted = keys[pos] != ids
        if unlisted.any():
            raise AnnotationError(f"{where}: {_unlisted(ids[unlisted])}; {PNG_FIX}")
        # region k + 1 = segments[k] (segments_info order), region 0 = void; sorted key position → region
        order = {s.segment_id: k + 1 for k, s in enumerate(self.segments)}
        to_region = np.array([0] + [order[int(key)] for key in keys[1:]], dtype=np.int32)
        semantic = [IGNORE] + [_segment_semantic(s, self.crowd) for s in self.segments]
        things = [None] + [
            Thing(s.segment_id, s.category_id, s.train_id) if s.isthing and not s.iscrowd and s.train_id else None
            for s in self.segments
        ]
        return labels_from_regions(to_region[pos], np.array(semantic, dtype=np.uint8), things)

    def summary(self) -> dict[str, Any]:
        return {
            "format": "coco_panoptic",
            "png": self.png_name,
            "png_bytes": file_size(self.png_dir / self.png_name),
            "segments": [[s.segment_id, s.category_id, s.train_id, s.isthing, s.iscrowd] for s in self.segments],
            "crowd": self.crowd,
        }


def _segment_semantic(segment: Segment, crowd: Crowd) -> int:
    if segment.iscrowd and crowd == "ignore":
        return IGNORE
    return segment.train_id


def _unlisted(ids: np.ndarray) -> str:
    values, counts = np.unique(ids, return_counts=True)
    shown = ", ".join(f"{int(v)} ({int(c)} px)" for v, c in zip(values[:5], counts[:5], strict=True))
    more = f" and {values.size - 5} more" if values.size > 5 else ""
    return (
        f"segment ids {shown}{more} are in the PNG but not in the annotation's segments_info (id = R + 256*G + "
        "256**2*B); list them there, or paint their pixels 0 (void)"
    )


# ------------------------------------------------------------------------------------------------ loading


def load_coco_panoptic(
    json_path: str | Path, png_dir: str | Path, *, on_error: OnError = "fail", crowd: Crowd = "ignore"
) -> LabelDataset:
    """Read and validate a COCO panoptic JSON file; the PNGs are read later, by `LabelImage.labels`.

    Parameters
    ----------
    json_path : the panoptic JSON file
    png_dir : the folder the annotations' PNG ``file_name``s are relative to
    on_error : ``"fail"`` raises at the first bad record, ``"skip"`` leaves it out and records a `SkipInfo`
    crowd : ``"ignore"`` (crowd → 255) or ``"class"`` (crowd → its train id); see `fastload.build.sources`

    Returns
    -------
    LabelDataset
        Images in file order (those with a valid annotation), categories in id order (train ids 1..K).

    Raises
    ------
    AnnotationError
        Unreadable JSON, bad categories, or (under ``"fail"``) any bad record.
    """
    policy = OnErrorPolicy(on_error)
    crowd = check_crowd(crowd)
    data, source_sha256 = read_coco_json(Path(json_path), kind="panoptic")
    categories, background = _parse_categories(data["categories"])
    images = _parse_images(data["images"], policy)
    segments = _parse_annotations(data["annotations"], images, categories, background, policy)
    records = []
    for image_id, (name, height, width) in images.items():
        if image_id not in segments:
            policy.reject(f"image {image_id} (file_name {name!r})", "has no panoptic annotation", image_id=image_id, file_name=name)
            continue
        png_name, segs = segments[image_id]
        records.append(LabelImage(image_id, name, height, width, PanopticPng(Path(png_dir), png_name, segs, crowd)))
    return LabelDataset(tuple(records), tuple(categories.values()), tuple(policy.skips), source_sha256)


def _image_key(value: Any, what: str) -> int:
    """An image id: an int64 integer, or a non-empty string (→ `stable_image_id`)."""
    if isinstance(value, str) and value:
        return stable_image_id(value)
    return as_id(value, what, "renumber the image (its id and its annotation's image_id)")


def _parse_categories(raw: list) -> tuple[dict[int, LabelCategory], set[int]]:
    """Category id → LabelCategory for the trained ones (train ids in id order), and the background ids."""
    seen: dict[int, tuple[str, bool]] = {}
    for k, cat in enumerate(raw):
        try:
            if not isinstance(cat, dict):
                raise RecordProblem(f"must be an object, got {type(cat).__name__}")
            cid, name, isthing = as_int(cat.get("id"), "id"), cat.get("name"), cat.get("isthing")
            if not isinstance(name, str):
                raise RecordProblem(f"name must be a string, got {name!r}")
            if not 0 <= cid <= INT64_MAX:
                raise RecordProblem(f"category id {cid} ({name!r}) is outside 0..2**63-1; renumber it")
            if isthing not in (0, 1) or isinstance(isthing, float):
                raise RecordProblem(f"isthing must be 0 or 1 (category {cid} {name!r}), got {isthing!r}")
        except RecordProblem as bad:
            raise AnnotationError(f"categories[{k}]: {bad}; fix the category list") from None
        if cid in seen:
            raise AnnotationError(f"category id {cid} appears twice; fix the category list")
        seen[cid] = (name, bool(isthing))
    background = {cid for cid, (name, _) in seen.items() if cid == 0 or name == BACKGROUND_CATEGORY}
    trained = [cid for cid in sorted(seen) if cid not in background]
    if len(trained) > MAX_CLASSES:
        raise AnnotationError(f"{len(trained)} categories, at most {MAX_CLASSES} fit in a uint8 mask (255 = ignore)")
    return {cid: LabelCategory(cid, seen[cid][0], k + 1, seen[cid][1]) for k, cid in enumerate(trained)}, background


def _parse_images(raw: list, policy: OnErrorPolicy) -> dict[int, tuple[str, int, int]]:
    """Image id → (file_name, height, width) of the valid images, in file order (`fastload.build.coco`'s checks)."""
    parsed: list[tuple[int, str, int, int]] = []
    for k, img in enumerate(raw):
        raw_id = img.get("id") if isinstance(img, dict) else None
        try:
            if not isinstance(img, dict):
                raise RecordProblem(f"must be an object, got {type(img).__name__}")
            parsed.append(parse_image({**img, "id": _image_key(raw_id, "id")}))
        except RecordProblem as bad:
            policy.reject(f"image {raw_id!r}" if raw_id is not None else f"images[{k}]", str(bad))
    counts = Counter(image_id for image_id, *_ in parsed)
    images: dict[int, tuple[str, int, int]] = {}
    for image_id, name, height, width in parsed:
        if counts[image_id] > 1:
            policy.reject(f"image {image_id} (file_name {name!r})", f"duplicate image id ({counts[image_id]} images share it)",
                          image_id=image_id, file_name=name)  # fmt: skip
        else:
            images[image_id] = (name, height, width)
    return images


def _parse_annotations(raw: list, images: dict, categories: dict, background: set, policy: OnErrorPolicy) -> dict:
    """Image id → (PNG name, segments) of the images with exactly one annotation, a valid one."""
    entries: dict[int, list] = {}
    for k, ann in enumerate(raw):
        raw_id = ann.get("image_id") if isinstance(ann, dict) else None
        try:
            image_id: int | None = _image_key(raw_id, "image_id")
        except RecordProblem:
            image_id = None
        try:
            entry = _parse_annotation(ann, image_id, images, categories, background)
        except RecordProblem as bad:
            where = f"annotation of image {raw_id!r}" if raw_id is not None else f"annotations[{k}]"
            name = images[image_id][0] if image_id in images else None
            policy.reject(where, str(bad), image_id=image_id, annotation_id=getattr(bad, "segment_id", None), file_name=name)
            entry = None  # still counted: an image with a bad and a good annotation is ambiguous
        if image_id in images:
            entries.setdefault(image_id, []).append(entry)
    out: dict[int, tuple[str, tuple[Segment, ...]]] = {}
    for image_id, found in entries.items():
        name = images[image_id][0]
        if len(found) > 1:
            policy.reject(f"image {image_id} (file_name {name!r})", f"{len(found)} panoptic annotations for one image",
                          image_id=image_id, file_name=name)  # fmt: skip
        elif found[0] is not None:
            out[image_id] = found[0]
    return out


def _parse_annotation(ann: Any, image_id: int | None, images: dict, categories: dict, background: set) -> tuple[str, tuple[Segment, ...]]:
    if not isinstance(ann, dict):
        raise RecordProblem(f"must be an object, got {type(ann).__name__}")
    if image_id not in images:
        raise RecordProblem(f"image_id {ann.get('image_id')!r} is not in 'images' (or that image was skipped)")
    png = ann.get("file_name")
    problem = relative_file_name_problem(png)
    if problem:
        raise RecordProblem(f"PNG file_name {png!r}: {problem}; PNG names must be relative to the PNG folder")
    return png, _parse_segments(ann.get("segments_info"), categories, background)


class _BadSegment(RecordProblem):
    def __init__(self, reason: str, segment_id: int | None):
        super().__init__(reason)
        self.segment_id = segment_id


def _parse_segments(raw: Any, categories: dict, background: set) -> tuple[Segment, ...]:
    if not isinstance(raw, list):
        raise RecordProblem(f"segments_info must be a list, got {type(raw).__name__}")
    segments: list[Segment] = []
    seen: set[int] = set()
    for k, seg in enumerate(raw):
        raw_id = seg.get("id") if isinstance(seg, dict) else None
        segment_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) and 0 <= raw_id <= INT64_MAX else None
        try:
            if not isinstance(seg, dict):
                raise RecordProblem(f"must be an object, got {type(seg).__name__}")
            sid = as_int(raw_id, "id")
            if not 1 <= sid <= MAX_SEGMENT_ID:
                raise RecordProblem(f"id {sid} is outside 1..{MAX_SEGMENT_ID} (R + 256*G + 256**2*B of an RGB pixel; 0 is void)")
            if sid in seen:
                raise RecordProblem(f"duplicate segment id {sid}")
            seen.add(sid)
            cid = as_int(seg.get("category_id"), "category_id")
            if cid not in categories and cid not in background:
                raise RecordProblem(f"category_id {cid} is not in 'categories'")
            iscrowd = seg.get("iscrowd", 0)
            if iscrowd not in (0, 1) or isinstance(iscrowd, float):
                raise RecordProblem(f"iscrowd must be 0 or 1, got {iscrowd!r}")
        except RecordProblem as bad:
            raise _BadSegment(f"segments_info[{k}] (segment {raw_id!r}): {bad}", segment_id) from None
        cat = categories.get(cid)
        segments.append(Segment(sid, cid, cat.train_id if cat else 0, bool(cat and cat.isthing), bool(iscrowd)))
    return tuple(segments)

