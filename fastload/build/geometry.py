"""COCO polygon parts: read from JSON, judged with shapely, stored as drawn (or repaired and clipped), split into rings.

Each polygon part is checked: fewer than 3 points, NaN/inf coordinates and zero area are rejected with a named
reason; a self-intersecting part is checked as ``shapely.make_valid`` repairs it (zero area after the repair:
rejected), and a part overhanging the image as clipped to the image box (a part wholly outside is rejected). A
good part is stored **as drawn**: pycocotools rasterises it, clipping at the image border, exactly as
``COCO.annToMask`` does (tools and the COCO evaluator take their masks from it). Only a part with coordinates
beyond ±`COORDINATE_LIMIT`, which pycocotools cannot rasterise, is stored repaired and clipped; such a part may
gain holes, so a stored part is a ``float64 (K, 2)`` array of ``(x, y)`` rings — exterior first, then its holes —
separated by a row of NaN (`part_rings` splits them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import shapely

# |x|, |y| beyond this (px) is a bad part: far outside any image, and far below where shapely's repair and
# clipping overflow (around 1e150, silently returning wrong shapes)
MAX_COORDINATE = 1e9
# |x|, |y| up to this (px) pycocotools rasterises, and no further: its polygon fill (rleFrPoly) rounds 5·x to a C
# int (overflowing past 4.3e8 px) and walks every edge in 1/5-px steps, holding ~80 bytes per pixel of edge (an
# edge of 2^20 px: 80 MB). `judge_part` stores a part within it as drawn and clips one reaching further to the
# image, whose sides are at most `fastload.build.coco.MAX_IMAGE_SIDE` (2^20, not more than this): so every stored
# part lies within it, and the rasteriser (`fastload.build.raster`) refuses only coordinates no stored part has.
COORDINATE_LIMIT = float(1 << 20)


class BadPart(ValueError):
    """A polygon part, or a whole polygon segmentation, that cannot be used; the message says why."""


def polygon_parts(seg: list, height: int, width: int) -> tuple[tuple[np.ndarray, ...], list[str]]:
    """A polygon segmentation's good parts (as stored, see the module docstring) and the reasons of the bad ones.

    Raises
    ------
    BadPart
        No part, a part that is not a flat list of an even number of numbers, or every part bad.
    """
    if not seg:
        raise BadPart("empty segmentation (no polygon)")
    raw_parts = [_polygon_coords(part, k) for k, part in enumerate(seg)]
    parts: list[np.ndarray] = []
    dropped: list[str] = []
    for k, coords in enumerate(raw_parts):
        try:
            parts.extend(judge_part(coords, height, width))
        except BadPart as reason:
            dropped.append(f"polygon part {k + 1} of {len(seg)}: {reason}")
    if not parts:
        raise BadPart("; ".join(dropped))
    return tuple(parts), dropped


def _polygon_coords(part: Any, k: int) -> np.ndarray:
    # element types first: NumPy raises a bare ValueError on a nested list ([1, [2, 3], ...]) and would turn
    # true/false into 1.0/0.0; JSON gives exact ints and floats (an int past float64's range is refused too)
    values = None
    if isinstance(part, list) and all(type(v) in (int, float) for v in part):
        try:
            values = np.asarray(part, dtype=np.float64)
        except OverflowError:
            values = None
    if values is None or values.ndim != 1:
        raise BadPart(f"polygon part {k + 1} must be a flat list of numbers [x1, y1, x2, y2, ...]")
    if values.size % 2:
        raise BadPart(f"polygon part {k + 1} has an odd number of coordinates ({values.size})")
    return values.astype(np.float64).reshape(-1, 2)


def judge_part(coords: np.ndarray, height: int, width: int) -> list[np.ndarray]:
    """Judge one polygon part; what to store of it: itself as drawn, or (beyond `COORDINATE_LIMIT`) its repaired
    pieces clipped to the image.

    Parameters
    ----------
    coords : float64 (K, 2)
        ``(x, y)`` vertices of one COCO polygon part.
    height, width : int
        The image size; a part is judged by what of it lies in the box ``[0, width] × [0, height]``.

    Returns
    -------
    list of float64 (K_i, 2) arrays
        ``[coords]``, or one entry per polygonal piece (a bowtie gives two), each its rings separated by NaN rows.

    Raises
    ------
    BadPart
        Fewer than 3 points, a non-finite or absurdly large coordinate, zero area, wholly outside the image, or
        coordinates so degenerate that shapely's repair fails numerically.
    """
    if coords.shape[0] < 3:
        raise BadPart(f"fewer than 3 points ({coords.shape[0]})")
    if not np.isfinite(coords).all():
        raise BadPart("non-finite coordinate (NaN or inf)")
    if np.abs(coords).max() > MAX_COORDINATE:
        raise BadPart(f"coordinate out of range (|x| or |y| > {MAX_COORDINATE:g} px)")
    inside = coords.min() >= 0 and coords[:, 0].max() <= width and coords[:, 1].max() <= height
    try:
        # a floating-point error inside GEOS (vertices like 1e-215 make its repair divide by zero) means the
        # shape it returns cannot be trusted: a bad part, never a mask
        with np.errstate(divide="raise", over="raise", invalid="raise"):
            geom = shapely.Polygon(coords)
            valid = geom.is_valid
            if valid and inside and geom.area > 0:
                return [coords]  # the common case: kept exactly as drawn
            geom = geom if valid else shapely.make_valid(geom)
            if geom.area <= 0:
                raise BadPart("zero area")
            if not inside:
                geom = shapely.intersection(geom, shapely.box(0, 0, width, height))
                if geom.area <= 0:
                    raise BadPart(f"outside the image ({width} x {height})")
    except FloatingPointError as exc:
        raise BadPart(f"degenerate coordinates: shapely's repair failed ({exc})") from None
    if np.abs(coords).max() <= COORDINATE_LIMIT:
        # a self-intersecting or overhanging part that covers some of the image is kept as drawn: pycocotools
        # rasterises it (and clips it to the image) exactly as COCO.annToMask does, which every COCO tool and the
        # COCO evaluator use; the repair above only decided that the part is good
        return [coords]
    return [_rings_array(poly) for poly in _polygonal(geom) if poly.area > 0]


def _polygonal(geom) -> Iterable[shapely.Polygon]:
    """The polygons inside a (multi)polygon or collection; lines and points are dropped."""
    if isinstance(geom, shapely.Polygon):
        yield geom
    elif isinstance(geom, (shapely.MultiPolygon, shapely.GeometryCollection)):
        for sub in geom.geoms:
            yield from _polygonal(sub)


def _rings_array(poly: shapely.Polygon) -> np.ndarray:
    rings = [np.asarray(poly.exterior.coords)[:-1]]
    rings += [np.asarray(hole.coords)[:-1] for hole in poly.interiors]
    if len(rings) == 1:
        return np.ascontiguousarray(rings[0], dtype=np.float64)
    gap = np.full((1, 2), np.nan)
    joined = [rings[0]]
    for ring in rings[1:]:
        joined += [gap, ring]
    return np.concatenate(joined).astype(np.float64)


def part_rings(part: np.ndarray) -> list[np.ndarray]:
    """Split a stored polygon part into its rings.

    Parameters
    ----------
    part : float64 (K, 2)
        ``(x, y)`` rings separated by NaN rows; exterior first.

    Returns
    -------
    list of float64 (K_r, 2) arrays, open rings (the first point is not repeated).
    """
    part = np.asarray(part, dtype=np.float64)
    if part.ndim != 2 or part.shape[1] != 2:
        raise ValueError(f"a polygon part must be a (K, 2) array of (x, y), got shape {part.shape}")
    gaps = np.flatnonzero(np.isnan(part).all(axis=1))
    if gaps.size == 0:
        return [part]
    pieces = np.split(part, gaps)
    # every piece after the first starts with its NaN separator row
    rings = [pieces[0]] + [piece[1:] for piece in pieces[1:]]
    return [ring for ring in rings if ring.shape[0]]
