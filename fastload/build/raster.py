"""Polygons / RLE → instance and semantic masks, exactly as pycocotools makes them.

Pixel convention
    pycocotools' own, taken from pycocotools itself: every polygon ring goes through
    ``pycocotools.mask.frPyObjects`` with its true coordinates and the true image size, as
    ``COCO.annToMask`` passes them, so a valid polygon inside the image gives ``annToMask``'s mask bit for
    bit — the mask detectron2, mmdet, the torchvision references and the COCO evaluator use. (pycocotools
    rounds the vertices to 1/5 px and steps along the edges on that grid: it agrees with "centre inside
    the polygon" except for pixel centres within about 0.2 px of an edge.)

Parts and rings
    A stored part (`fastload.build.geometry.part_rings`) may hold several rings, exterior first, then holes;
    its rings are combined by even-odd (XOR: a hole comes out empty). The parts of an instance are OR-ed
    (``mask.merge``), as ``annToMask`` does with a multi-polygon segmentation. Parts are stored as drawn
    (`fastload.build.geometry.judge_part`), so the mask is ``annToMask``'s, self-intersecting and overhanging
    parts included; only a part reaching beyond ±`COORDINATE_LIMIT` px, which pycocotools cannot draw, is
    stored repaired (``shapely.make_valid``) and clipped to the image, and its mask may then differ from what
    ``annToMask`` would draw at pixels whose centre lies within about 0.2 px of an edge the repair created.

Work proportional to the object
    ``frPyObjects`` and ``merge`` cost O(perimeter); the run-length result is then decoded over the
    mask's bounding box only (`fastload.build.rle.rle_patch`), never over the whole image as ``mask.decode`` does.
    Translating a polygon into a small canvas instead would not be exact: pycocotools rounds ``5·x + 0.5``
    and interpolates its edges in float64 on the absolute coordinates, and e.g. ``x = 101.1`` rounds to
    101.2 while ``101.1 − 100`` (1.0999999999999943) rounds to 1.0.

RLE instances are decoded the same way, exactly as ``mask.decode`` would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from fastload.build.geometry import COORDINATE_LIMIT, part_rings
from fastload.build.records import ImageRecord, Instance
from fastload.build.rle import Patch, rle_patch, xor_rles
from fastload.labels import IGNORE


@dataclass(frozen=True, eq=False)
class RasterResult:
    """The masks of one image.

    Attributes
    ----------
    instance : int32 (H, W)
        Instance ids 1..N, 0 = background (and crowd).
    semantic : uint8 (H, W)
        Train ids, 0 = background, 255 = ignore (crowd not covered by an instance).
    instances : tuple of Instance
        ``instances[k]`` has id ``k + 1``: the non-crowd instances with at least one visible pixel, in
        annotation order.
    boxes : int64 (N, 4)
        ``boxes[k]`` = ``[x, y, w, h]`` of the visible pixels of instance ``k + 1`` (w = last − first column + 1).
    """

    instance: np.ndarray
    semantic: np.ndarray
    instances: tuple[Instance, ...]
    boxes: np.ndarray


def rasterize_polygons(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Fill polygon parts as pycocotools does (its rule per ring, even-odd per part, parts OR-ed).

    Parameters
    ----------
    polygons : sequence of float (K, 2) arrays
        Parts in ``(x, y)`` image coordinates; a part may hold several rings separated by NaN rows
        (`fastload.build.geometry.part_rings`). Coordinates may lie outside the image (within
        ``±COORDINATE_LIMIT``); pycocotools drops what falls outside.
    height, width : int
        The mask size.

    Returns
    -------
    bool (height, width)
        For a single ring, ``pycocotools.mask.decode(frPyObjects([ring], height, width)[0])`` exactly.

    Raises
    ------
    ValueError
        A part that is not a finite (K, 2) array (NaN rows apart), or a coordinate beyond the limit.
    """
    out = np.zeros((height, width), dtype=bool)
    rle = _polygons_rle(polygons, height, width)
    if rle is not None and (patch := rle_patch(rle)) is not None:
        _paint(out, patch, True)
    return out


def rasterize_instance(instance: Instance, height: int, width: int) -> np.ndarray:
    """The mask of one instance, from its polygons or its RLE, as pycocotools' ``annToMask`` makes it.

    Returns
    -------
    bool (height, width)
    """
    out = np.zeros((height, width), dtype=bool)
    patch = _instance_patch(instance, height, width)
    if patch is not None:
        _paint(out, patch, True)
    return out


def rasterize_image(record: ImageRecord) -> RasterResult:
    """Instance and semantic masks of one image.

    Overlap rule: crowd regions are painted 255 first; instances go over them, the smaller instance
    (by its own raster area) on top, ties → the later annotation on top. Instances left with no
    visible pixel are dropped and the ids renumbered 1..N in annotation order.

    Returns
    -------
    RasterResult
    """
    height, width = record.height, record.width
    instance = np.zeros((height, width), dtype=np.int32)
    semantic = np.zeros((height, width), dtype=np.uint8)
    things: list[tuple[int, int, Patch]] = []  # (area, index in `candidates`, patch)
    candidates: list[Instance] = []
    for inst in record.instances:
        patch = _instance_patch(inst, height, width)
        if patch is None:
            continue
        if inst.iscrowd:
            _paint(semantic, patch, IGNORE)
        else:
            things.append((int(np.count_nonzero(patch[2])), len(candidates), patch))
            candidates.append(inst)
    # largest first, so smaller ones land on top; equal areas keep annotation order (later on top)
    for _, k, patch in sorted(things, key=lambda t: (-t[0], t[1])):
        _paint(instance, patch, k + 1)
        _paint(semantic, patch, candidates[k].train_id)
    shown = [(k, box) for area, k, patch in things if (box := _visible_box(instance, patch, k + 1, area))]
    visible = [k for k, _ in shown]  # `things` is in annotation order
    if len(visible) < len(candidates):
        instance = _renumber(instance, visible, len(candidates))
    boxes = np.array([box for _, box in shown], dtype=np.int64).reshape(-1, 4)
    return RasterResult(instance, semantic, tuple(candidates[k] for k in visible), boxes)


def _instance_patch(instance: Instance, height: int, width: int) -> Patch | None:
    """The instance's mask restricted to its bounding box, or None when it is empty.

    Returns
    -------
    (row0, col0, bool (h, w)) or None
    """
    rle = instance.rle if instance.rle is not None else _polygons_rle(instance.polygons, height, width)
    return None if rle is None else rle_patch(rle)


def _view(target: np.ndarray, patch: Patch) -> np.ndarray:
    row0, col0, mask = patch
    return target[row0 : row0 + mask.shape[0], col0 : col0 + mask.shape[1]]


def _paint(target: np.ndarray, patch: Patch, value) -> None:
    np.copyto(_view(target, patch), value, where=patch[2])


def _visible_box(instance: np.ndarray, patch: Patch, value: int, area: int) -> tuple[int, int, int, int] | None:
    """``(x, y, w, h)`` of the pixels that show ``value`` (of the ``area`` painted), or None when none does."""
    # only pixels of the instance's own patch can carry its id: no full-image pass
    shows = _view(instance, patch) == value
    seen = np.count_nonzero(shows)
    if seen == 0:
        return None
    row0, col0, mask = patch
    if seen == area:  # nothing painted over it: its box is the patch, the tight box of its mask (toBbox)
        return col0, row0, mask.shape[1], mask.shape[0]
    rows = shows.any(axis=1)
    top, bottom = int(rows.argmax()), rows.size - int(rows[::-1].argmax())
    cols = shows[top:bottom].any(axis=0)
    left, right = int(cols.argmax()), cols.size - int(cols[::-1].argmax())
    return col0 + left, row0 + top, right - left, bottom - top


def _renumber(instance: np.ndarray, visible: list[int], n: int) -> np.ndarray:
    """Map the 1-based painting ids of the visible instances to 1..M, in order; hidden ones vanish."""
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[np.asarray(visible, dtype=np.int64) + 1] = np.arange(1, len(visible) + 1, dtype=np.int32)
    return lut[instance]


# ------------------------------------------------------------------------------------ polygons → RLE


def _polygons_rle(polygons: Sequence[np.ndarray], height: int, width: int) -> dict | None:
    """pycocotools' RLE of the parts: each ring by ``frPyObjects``, a part's rings XOR-ed, the parts merged.

    The rings go in with their true coordinates and the true image size, as ``annToMask`` passes them:
    pycocotools' 1/5-px rounding is float arithmetic on the absolute coordinates and does not commute
    with a translation into a smaller canvas (see the module docstring).

    Returns
    -------
    dict or None
        A compressed RLE of size (height, width); None when no part has a ring of 3 or more points.
    """
    parts = [part_rings(part) for part in polygons]
    for ring in (ring for rings in parts for ring in rings):
        _check_ring(ring)
    # fewer than 3 points enclose nothing; frPyObjects would even read a 2-point list as an [x, y, w, h] box
    parts = [[ring for ring in rings if ring.shape[0] >= 3] for rings in parts]
    flat = [ring.ravel().tolist() for rings in parts for ring in rings]
    if not flat:
        return None
    rles = iter(mask_utils.frPyObjects(flat, height, width))  # one call for every ring of the instance
    merged = [xor_rles([next(rles) for _ in rings], height, width) for rings in parts if rings]
    return merged[0] if len(merged) == 1 else mask_utils.merge(merged)


def _check_ring(ring: np.ndarray) -> None:
    if ring.ndim != 2 or ring.shape[1] != 2 or not np.isfinite(ring).all():
        raise ValueError(
            f"polygon rings must be finite float (K, 2) arrays (NaN rows only as ring separators), "
            f"got shape {ring.shape} with non-finite values: {not np.isfinite(ring).all()}"
        )
    if ring.size and np.abs(ring).max() > COORDINATE_LIMIT:
        raise ValueError(
            f"polygon coordinates must lie within ±{COORDINATE_LIMIT:g} px, got {np.abs(ring).max():g}: "
            "pycocotools rounds 5·x to a C int and walks every edge in 1/5-px steps"
        )
