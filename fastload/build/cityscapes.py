"""Cityscapes (``gtFine`` polygon JSON + ``leftImg8bit`` PNGs) → validated `LabelImage` records.

Layout
    ``root/gtFine/{split}/{city}/{frame}_gtFine_polygons.json`` (``imgHeight``, ``imgWidth``, ``objects``:
    ``[{label, polygon: [[x, y], ...], deleted?}]``), the picture at ``root/leftImg8bit/{split}/{city}/
    {frame}_leftImg8bit.png``: the records' ``file_name``s are relative to ``root``. Frames are taken in sorted
    (city, file name) order; a frame's image id is `fastload.build.sources.stable_image_id` of ``{frame}``
    (``aachen_000000_000019``), the same id a COCO panoptic file made by Cityscapes' ``createPanopticImgs``
    gets from its string image id.

Labels: Cityscapes' own table (``cityscapesscripts.helpers.labels.labels``, or ``labels=``)
    A label ``name`` that is not in the table but ends in ``group`` (``cargroup``) is a crowd of its base label
    (``car``), as Cityscapes' scripts read it; an unknown label is an error. Train ids: Cityscapes' trainIds
    0..18 become fastload train ids 1..19 (each distinct trainId in 0..254 gets its rank + 1: ``trainId + 1`` for
    the standard table), named after the first label that has it (road, sidewalk, ..., bicycle); trainId 255
    (void, unlabelled, and the classes not evaluated: parking, caravan, ...) stays 255 = ignore. Cityscapes labels
    every pixel or calls it void, so train id 0 (fastload's background) occurs in no pixel: a model trained on
    the cache has one logit (0) that no pixel asks for, and Cityscapes trainId = fastload train id - 1. *Things*
    are the classes whose label ``hasInstances`` (person, rider, car, truck, bus, train, motorcycle, bicycle);
    the other 11 are stuff.

Masks: exactly ``json2labelImg`` / ``json2instanceImg`` (``cityscapesscripts.preparation``)
    The objects are drawn in file order, later on top, each with PIL's ``ImageDraw.polygon(points, fill=...)``
    on a canvas of the JSON's size, as those scripts draw them (so the pixel rule is PIL's, whatever Pillow is
    installed, for both); deleted objects and labels with a negative id or trainId (license plate) are not drawn.
    A canvas pixel that no object covers is ``unlabeled`` (255). Semantic = the train id of the object on top
    (255 for void labels); instance ids 1..N go to the thing objects, not groups, with at least one visible pixel,
    in file order. A group (crowd) is never an instance; its semantic is 255 under ``crowd="ignore"`` (fastload's
    crowd rule, the default) and its base class under ``crowd="class"`` (what ``json2labelImg`` writes: with it
    the semantic mask equals ``json2labelImg``'s trainId image, fastload ids = trainIds + 1, pixel for pixel).

Validation (``on_error``)

===========================================  ====================  ==========================================
problem                                      ``"fail"`` (default)  ``"skip"``
===========================================  ====================  ==========================================
file: not JSON, bad imgHeight / imgWidth,    AnnotationError       the frame skipped
objects not a list; duplicate image id
object: unknown label, polygon not a list    AnnotationError       the object skipped (not drawn), recorded
of >= 2 [x, y] finite numbers within ±2^20,                        with its index as ``annotation_id``
bad ``deleted``
===========================================  ====================  ==========================================
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fastload.build.rules import (
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    OnError,
    OnErrorPolicy,
    RecordProblem,
    as_int,
)
from fastload.build.sources import (
    Crowd,
    ImageLabels,
    LabelCategory,
    LabelDataset,
    LabelImage,
    Thing,
    check_crowd,
    labels_from_regions,
    relative_file_name_problem,
    stable_image_id,
)
from fastload.errors import AnnotationError, ConfigError, ImageError
from fastload.labels import IGNORE, MAX_CLASSES

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")
POLYGONS_SUFFIX = "_gtFine_polygons.json"
IMAGE_SUFFIX = "_leftImg8bit.png"
# |x|, |y| beyond this (px) is refused: PIL's polygon filler overflows far out (a 1e12 px triangle draws nothing)
COORDINATE_LIMIT = float(1 << 20)
FIX = "fix the polygon file or pass --on-error skip"


@dataclass(frozen=True)
class _Table:
    """The label table as the reader uses it: name → (semantic value, is a thing, drawn, category id)."""

    by_name: dict[str, tuple[int, bool, bool, int]]
    categories: tuple[LabelCategory, ...]


def cityscapes_table(labels: Sequence[Any] | None = None) -> _Table:
    """Cityscapes' label table (``name, id, trainId, hasInstances``) as fastload train ids and categories.

    Raises
    ------
    ImportError
        ``labels`` is None and ``cityscapesscripts`` is not installed.
    ConfigError
        A trainId outside -1..255, labels sharing a trainId that disagree on ``hasInstances``, > 254 classes.
    """
    if labels is None:
        try:
            from cityscapesscripts.helpers.labels import labels
        except ImportError as exc:
            raise ImportError(
                "reading Cityscapes needs its label table: pip install cityscapesscripts (or pass labels=, a "
                "sequence of records with name, id, trainId, hasInstances)"
            ) from exc
    first: dict[int, Any] = {}
    for label in labels:
        if not (isinstance(label.trainId, int) and -1 <= label.trainId <= 255 and isinstance(label.id, int)):
            raise ConfigError(f"Cityscapes label {label.name!r}: trainId {label.trainId!r} / id {label.id!r} must be integers, trainId in -1..255")
        if 0 <= label.trainId < IGNORE:
            known = first.setdefault(label.trainId, label)
            if bool(known.hasInstances) != bool(label.hasInstances):
                raise ConfigError(f"Cityscapes labels {known.name!r} and {label.name!r} share trainId {label.trainId} but not hasInstances")
    if len(first) > MAX_CLASSES:
        raise ConfigError(f"{len(first)} Cityscapes trainIds, at most {MAX_CLASSES} fit in a uint8 mask")
    train_ids = {t: k + 1 for k, t in enumerate(sorted(first))}
    categories = tuple(
        LabelCategory(first[t].id, first[t].name, train_ids[t], bool(first[t].hasInstances)) for t in sorted(first)
    )
    by_name = {}
    for label in labels:
        train_id = train_ids.get(label.trainId, IGNORE)
        category_id = first[label.trainId].id if label.trainId in first else label.id
        drawn = label.id >= 0 and label.trainId >= 0  # json2labelImg skips id < 0, json2instanceImg trainId < 0
        by_name[label.name] = (train_id, bool(label.hasInstances) and train_id != IGNORE, drawn, category_id)
    return _Table(by_name, categories)


@dataclass(frozen=True, eq=False)
class CityscapesPolygons:
    """The `LabelSource` of a Cityscapes frame: its drawn objects, in file order.

    Attributes
    ----------
    points : int32 or float64 (P, 2)
        Every object's ``(x, y)`` vertices, one after the other (int32 when the file's are all integers).
    ends : int64 (M,)
        Object ``k``'s vertices are ``points[ends[k-1]:ends[k]]``.
    objects : tuple of M ``(object index in the file, semantic value, category id, thing)``
        ``thing`` is the train id of a thing instance, 0 for stuff, void and groups.
    """

    polygon_file: str
    points: np.ndarray
    ends: np.ndarray
    objects: tuple[tuple[int, int, int, int], ...]

    def render(self, image: LabelImage, *, max_image_pixels: int) -> ImageLabels:
        from PIL import Image, ImageDraw  # Pillow draws exactly as Cityscapes' scripts do (it is theirs)

        if image.height * image.width > max_image_pixels:
            raise ImageError(
                f"image {image.image_id} ({self.polygon_file}): imgHeight x imgWidth {image.height} x {image.width} "
                f"is more than max_image_pixels ({max_image_pixels}) pixels; {FIX}"
            )
        canvas = Image.new("I", (image.width, image.height), 0)
        draw = ImageDraw.Draw(canvas)
        start = 0
        for k, end in enumerate(self.ends.tolist()):
            draw.polygon([tuple(p) for p in self.points[start:end].tolist()], fill=k + 1)
            start = end
        semantic = [IGNORE] + [value for _, value, _, _ in self.objects]
        things = [None] + [Thing(index, cat, thing) if thing else None for index, _, cat, thing in self.objects]
        return labels_from_regions(np.asarray(canvas), np.array(semantic, dtype=np.uint8), things)

    def summary(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for array in (self.points, self.ends, np.asarray(self.objects, dtype=np.int64).reshape(-1, 4)):
            digest.update(str(array.dtype).encode() + np.ascontiguousarray(array).tobytes())
        return {"format": "cityscapes", "polygons": self.polygon_file, "sha256": digest.hexdigest()}


def load_cityscapes(
    root: str | Path,
    *,
    split: Split = "train",
    on_error: OnError = "fail",
    crowd: Crowd = "ignore",
    labels: Sequence[Any] | None = None,
) -> LabelDataset:
    """Read and validate the ``gtFine`` polygon files of one split; masks are drawn later (`LabelImage.labels`).

    Parameters
    ----------
    root : the folder holding ``gtFine/`` and ``leftImg8bit/`` (the image root of the records)
    split : ``"train"``, ``"val"`` or ``"test"``
    on_error : ``"fail"`` raises at the first bad record, ``"skip"`` leaves it out and records a `SkipInfo`
    crowd : ``"ignore"`` (groups → 255) or ``"class"`` (groups → their class, as ``json2labelImg``)
    labels : the label table (default: ``cityscapesscripts.helpers.labels.labels``)

    Returns
    -------
    LabelDataset
        Frames in (city, file) order; categories by train id (1..19 for the standard table).

    Raises
    ------
    AnnotationError
        No polygon files there, or (under ``"fail"``) any bad record.
    ImportError
        ``cityscapesscripts`` is missing and no ``labels`` are given.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    crowd = check_crowd(crowd)
    policy = OnErrorPolicy(on_error)
    table = cityscapes_table(labels)
    root = Path(root)
    folder = root / "gtFine" / split
    files = sorted(folder.glob(f"*/*{POLYGONS_SUFFIX}"), key=lambda p: (p.parent.name, p.name))
    if not files:
        raise AnnotationError(
            f"no {split} polygon files (gtFine/{split}/<city>/*{POLYGONS_SUFFIX}) under {str(root)!r}; pass the "
            "Cityscapes root, the folder that holds gtFine/ and leftImg8bit/"
        )
    parsed: list[LabelImage] = []
    digest = hashlib.sha256()  # the source's sha256: each file's path and sha256, from the bytes parsed here
    for path in files:
        try:
            raw: bytes | OSError = path.read_bytes()
        except OSError as exc:  # rejected by _read_frame (under "skip": recorded, and so is this in the digest)
            raw = exc
        file_sha = hashlib.sha256(raw).hexdigest() if isinstance(raw, bytes) else f"unreadable ({raw.strerror})"
        digest.update(f"{path.relative_to(root).as_posix()}\0{file_sha}\n".encode())
        record = _read_frame(path, raw, root, split, table, crowd, policy)
        if record is not None:
            parsed.append(record)
    counts = Counter(r.image_id for r in parsed)
    records = []
    for record in parsed:
        if counts[record.image_id] > 1:
            policy.reject(f"image {record.image_id} ({record.file_name})", "duplicate frame name (in two cities?)",
                          image_id=record.image_id, file_name=record.file_name)  # fmt: skip
        else:
            records.append(record)
    return LabelDataset(tuple(records), table.categories, tuple(policy.skips), digest.hexdigest())


def _read_frame(
    path: Path, raw: bytes | OSError, root: Path, split: str, table: _Table, crowd: Crowd, policy: OnErrorPolicy
) -> LabelImage | None:
    """One polygon file (its bytes ``raw``, or the error reading them) as a LabelImage, or None when it is rejected
    (under "skip")."""
    frame = path.name[: -len(POLYGONS_SUFFIX)]
    rel = path.relative_to(root).as_posix()
    image_id = stable_image_id(frame)
    file_name = f"leftImg8bit/{split}/{path.parent.name}/{frame}{IMAGE_SUFFIX}"
    where = f"image {image_id} ({rel})"
    ids = {"image_id": image_id, "file_name": file_name}
    try:
        problem = relative_file_name_problem(file_name)
        if problem:
            raise RecordProblem(f"image file name {file_name!r}: {problem}")
        try:
            if isinstance(raw, OSError):
                raise raw
            data = json.loads(raw)
        except (OSError, ValueError) as exc:
            raise RecordProblem(f"cannot be read as JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
            raise RecordProblem("must be an object with an 'objects' list")
        height, width = as_int(data.get("imgHeight"), "imgHeight"), as_int(data.get("imgWidth"), "imgWidth")
        if height <= 0 or width <= 0 or max(height, width) > MAX_IMAGE_SIDE or height * width > MAX_IMAGE_PIXELS:
            raise RecordProblem(f"imgHeight x imgWidth {height} x {width} must be positive, at most {MAX_IMAGE_SIDE} per side and {MAX_IMAGE_PIXELS} pixels")
    except RecordProblem as bad:
        policy.reject(where, str(bad), **ids)
        return None
    polygons, objects = [], []
    for k, obj in enumerate(data["objects"]):
        try:
            drawn = _parse_object(obj, table, crowd)
        except RecordProblem as bad:
            label = obj.get("label") if isinstance(obj, dict) else None
            policy.reject(f"{where}, object {k} ({label!r})", str(bad), annotation_id=k, **ids)
            continue
        if drawn is not None:
            polygons.append(drawn[0])
            objects.append((k, *drawn[1:]))
    source = CityscapesPolygons(rel, *_pack(polygons), tuple(objects))
    return LabelImage(image_id, file_name, height, width, source)


def _parse_object(obj: Any, table: _Table, crowd: Crowd) -> tuple[np.ndarray, int, int, int] | None:
    """(polygon, semantic value, category id, thing train id or 0) of a drawn object; None if not drawn."""
    if not isinstance(obj, dict):
        raise RecordProblem(f"must be an object, got {type(obj).__name__}")
    deleted = obj.get("deleted", 0)
    if deleted not in (0, 1) or isinstance(deleted, float):
        raise RecordProblem(f"deleted must be 0 or 1, got {deleted!r}")
    if deleted:  # Cityscapes' scripts pass over a deleted object before they look at its label
        return None
    label, group = obj.get("label"), False
    if not isinstance(label, str):
        raise RecordProblem(f"label must be a string, got {label!r}")
    if label not in table.by_name and label.endswith("group") and label[: -len("group")] in table.by_name:
        label, group = label[: -len("group")], True  # cityscapesscripts' rule: cargroup = a crowd of cars
    if label not in table.by_name:
        raise RecordProblem(f"label {label!r} is not in the Cityscapes label table")
    polygon = _polygon(obj.get("polygon"))
    train_id, isthing, drawn, category_id = table.by_name[label]
    if not drawn:
        return None
    crowd_region = group and isthing
    semantic = IGNORE if crowd_region and crowd == "ignore" else train_id
    return polygon, semantic, category_id, train_id if isthing and not crowd_region else 0


def _polygon(raw: Any) -> np.ndarray:
    """float64 (K, 2) of a JSON ``[[x, y], ...]`` with K >= 2 (PIL draws 2 points as a line, refuses fewer)."""
    if not isinstance(raw, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(type(v) in (int, float) for v in p) for p in raw
    ):
        raise RecordProblem("polygon must be a list of [x, y] number pairs")
    if len(raw) < 2:
        raise RecordProblem(f"polygon has {len(raw)} point(s); PIL (and Cityscapes' scripts) need at least 2")
    try:
        xy = np.asarray(raw, dtype=np.float64)
    except OverflowError:
        raise RecordProblem(f"polygon coordinate out of range; {FIX}") from None
    if not np.isfinite(xy).all() or np.abs(xy).max() > COORDINATE_LIMIT:
        raise RecordProblem(f"polygon coordinates must be finite and within ±{COORDINATE_LIMIT:g} px")
    return xy


def _pack(polygons: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All polygons in one array (int32 if every coordinate is an integer: half the memory) and their ends."""
    points = np.concatenate(polygons) if polygons else np.zeros((0, 2))
    if np.array_equal(points, np.round(points)):
        points = points.astype(np.int32)  # |v| <= 2^20: exact
    ends = np.cumsum([len(p) for p in polygons], dtype=np.int64)
    return points, ends
