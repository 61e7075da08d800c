"""Polygons / RLE → instance and semantic masks, with pycocotools' pixel semantics.

Pixel convention
    Pixel ``(i, j)`` (row, column) is on iff its centre ``(x, y) = (j + 0.5, i + 0.5)`` lies inside the
    polygon — the frame of ``docs/design.md``. Measured against ``pycocotools`` ``annToMask`` on the 165
    real polygons of fruits_nuts_coco, this centre gives a minimum per-instance IoU of 0.992 (XOR 0.19 %
    of the pixels, as many extra as missing), the integer centre ``(j, i)`` only 0.960 (XOR 1.7 %).
    pycocotools samples columns exactly at ``x = j + 0.5`` but rounds vertices to 1/5 pixel and places
    row boundaries with ``ceil(y - 0.4)``, so a ±0.1 px disagreement along edges remains; we do not copy
    that quantisation. Boundary rule (half-open, so shared edges are not painted twice): a centre on a
    left or top edge is inside, on a right or bottom edge outside.

Scanline fill
    For each part, every edge crossing of every pixel-centre row of the part's bounding box is found at
    once (NumPy, no per-pixel loop); a crossing toggles the parity of all pixels from the first centre at
    or right of it, so a running XOR of the crossing marks along each row (a cumulative sum mod 2) is the
    even-odd fill of the part's rings (its holes come out empty). Parts are OR-ed. Work and memory are proportional to the part's bounding box.

RLE instances are decoded with pycocotools (exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from fastload.coco import ImageRecord, Instance, part_rings

IGNORE = 255

# (row offset, column offset, bool patch): a mask that is False outside the patch
Patch = tuple[int, int, np.ndarray]


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
    """

    instance: np.ndarray
    semantic: np.ndarray
    instances: tuple[Instance, ...]


def rasterize_polygons(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Fill polygon parts: a pixel is on iff its centre is inside (even-odd per part, parts OR-ed).

    Parameters
    ----------
    polygons : sequence of float (K, 2) arrays
        Parts in ``(x, y)`` image coordinates; a part may hold several rings separated by NaN rows
        (:func:`fastload.coco.part_rings`).
    height, width : int
        The mask size.

    Returns
    -------
    bool (height, width)
    """
    out = np.zeros((height, width), dtype=bool)
    patch = _polygons_patch(polygons, height, width)
    if patch is not None:
        _paint(out, patch, True)
    return out


def rasterize_instance(instance: Instance, height: int, width: int) -> np.ndarray:
    """The mask of one instance, from its polygons or (exactly, with pycocotools) its RLE.

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
    visible = [k for _, k, patch in things if _shows(instance, patch, k + 1)]  # `things` is in annotation order
    if len(visible) < len(candidates):
        instance = _renumber(instance, visible, len(candidates))
    return RasterResult(instance, semantic, tuple(candidates[k] for k in visible))


def _instance_patch(instance: Instance, height: int, width: int) -> Patch | None:
    """The instance's mask restricted to its bounding box, or None when it covers no pixel centre.

    Returns
    -------
    (row0, col0, bool (h, w)) or None
    """
    if instance.rle is not None:
        return _rle_patch(instance.rle)
    return _polygons_patch(instance.polygons, height, width)


def _view(target: np.ndarray, patch: Patch) -> np.ndarray:
    row0, col0, mask = patch
    return target[row0 : row0 + mask.shape[0], col0 : col0 + mask.shape[1]]


def _paint(target: np.ndarray, patch: Patch, value) -> None:
    np.copyto(_view(target, patch), value, where=patch[2])


def _shows(instance: np.ndarray, patch: Patch, value: int) -> bool:
    # only pixels of the instance's own patch can carry its id: no full-image pass
    return bool(np.any(_view(instance, patch) == value))


def _renumber(instance: np.ndarray, visible: list[int], n: int) -> np.ndarray:
    """Map the 1-based painting ids of the visible instances to 1..M, in order; hidden ones vanish."""
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[np.asarray(visible, dtype=np.int64) + 1] = np.arange(1, len(visible) + 1, dtype=np.int32)
    return lut[instance]


def _rle_patch(rle: dict) -> Patch | None:
    x, y, w, h = (int(round(v)) for v in mask_utils.toBbox(rle))
    if w <= 0 or h <= 0:
        return None
    decoded = mask_utils.decode(rle)
    return y, x, decoded[y : y + h, x : x + w].astype(bool)


def _polygons_patch(polygons: Sequence[np.ndarray], height: int, width: int) -> Patch | None:
    patches = [p for part in polygons if (p := _part_patch(part_rings(part), height, width)) is not None]
    if not patches:
        return None
    if len(patches) == 1:
        return patches[0]
    row0 = min(p[0] for p in patches)
    col0 = min(p[1] for p in patches)
    row1 = max(p[0] + p[2].shape[0] for p in patches)
    col1 = max(p[1] + p[2].shape[1] for p in patches)
    union = np.zeros((row1 - row0, col1 - col0), dtype=bool)
    for r, c, mask in patches:
        union[r - row0 : r - row0 + mask.shape[0], c - col0 : c - col0 + mask.shape[1]] |= mask
    return row0, col0, union


def _part_patch(rings: Sequence[np.ndarray], height: int, width: int) -> Patch | None:
    """Even-odd fill of one part's rings over its bounding box."""
    for ring in rings:
        if ring.ndim != 2 or ring.shape[1] != 2 or not np.isfinite(ring).all():
            raise ValueError(
                f"polygon rings must be finite float (K, 2) arrays (NaN rows only as ring separators), "
                f"got shape {ring.shape} with non-finite values: {not np.isfinite(ring).all()}"
            )
    rows, cols = _crossings(rings, height, width)
    if rows.size == 0:
        return None
    row0, row1 = int(rows.min()), int(rows.max()) + 1
    col0, col1 = int(cols.min()), int(cols.max()) + 1
    if col0 >= width:
        return None
    # the box reaches the last crossing; crossings at column `width` only toggle pixels outside the image
    shape = (row1 - row0, col1 - col0)
    marks = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    np.bitwise_xor.at(marks, (rows - row0) * shape[1] + (cols - col0), 1)
    # a closed ring crosses every row an even number of times, so each row's parity is back to 0 at its
    # end and one flat running XOR over the whole box is the even-odd fill of every row
    inside = np.bitwise_xor.accumulate(marks).reshape(shape)
    keep = min(col1, width) - col0
    return row0, col0, inside[:, :keep].view(bool)


def _crossings(rings: Sequence[np.ndarray], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (row, first column right of the crossing) where an edge crosses a pixel-centre row.

    An edge from ``y0`` to ``y1`` crosses the centre row ``y = i + 0.5`` when ``min ≤ y < max``
    (half-open, so a vertex shared by two edges is counted once and horizontal edges never).
    """
    start, end = _edges(rings)
    lo = np.minimum(start[:, 1], end[:, 1])
    hi = np.maximum(start[:, 1], end[:, 1])
    first = np.clip(np.ceil(lo - 0.5), 0, height).astype(np.int64)
    stop = np.clip(np.ceil(hi - 0.5), 0, height).astype(np.int64)
    count = stop - first
    edges = np.flatnonzero(count > 0)
    count = count[edges]
    if edges.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    edge = np.repeat(edges, count)
    # row = first[edge] + (0, 1, ..., count - 1) for every edge, without a Python loop
    base = np.repeat(first[edges] - (np.cumsum(count) - count), count)
    rows = base + np.arange(edge.size)
    x0, y0 = start[edge, 0], start[edge, 1]
    x1, y1 = end[edge, 0], end[edge, 1]
    x = x0 + (rows + 0.5 - y0) * ((x1 - x0) / (y1 - y0))
    cols = np.clip(np.ceil(x - 0.5), 0, width).astype(np.int64)
    return rows, cols


def _edges(rings: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points (float64 (E, 2) each) of the closed rings' edges."""
    if len(rings) == 1:
        start = np.asarray(rings[0], dtype=np.float64)
        return start, np.concatenate([start[1:], start[:1]])
    start = np.concatenate([np.asarray(r, dtype=np.float64) for r in rings])
    end = np.concatenate([np.concatenate([r[1:], r[:1]]) for r in rings]).astype(np.float64)
    return start, end
