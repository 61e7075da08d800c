"""Rasterisation speed: fastload (pycocotools' RLE, decoded over the object's box) vs the scanline fill it
replaced, vs pycocotools' annToMask, and vs a per-pixel Python loop.

Run: ``python -m pytest benchmarks/test_bench_raster.py --benchmark-only --benchmark-columns=mean,stddev,rounds``
(the number in parentheses after each mean is its ratio to the fastest in the group). Without
``--benchmark-only`` the plain ``test_*_agree`` checks run too: same inputs, results compared, no timing.

The "before" is the pixel-centre scanline fill that ``fastload/raster.py`` used until it switched to
pycocotools (kept here only, :func:`scanline_instance_patch`); it is plugged into today's composition, so
the overlap rule, crowd and renumbering cost the same on both sides and only the making of each
instance's mask differs.

Groups:
* ``raster-real``: all 165 polygons of the 18 real 800x600 photos. One full-size mask per instance
  (fastload ``rasterize_instance``, the scanline, pycocotools ``annToMask``), and ``rasterize_image``
  composing the instance + semantic maps of all 18 images (what the cache builder calls), both ways.
* ``raster-coco-like``: 100 synthetic 640x480 images with 7 polygons each, sized like COCO val2017's
  objects (41 % small < 32² px, 34 % medium, 25 % large; 2-decimal vertices): ``rasterize_image`` both
  ways, and annToMask per instance.
* ``raster-python-loop``: a 96x64 image with 4 polygons, the per-pixel crossing-number Python loop users
  had before vs ``rasterize_image``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import shapely
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from fastload.build import raster
from fastload.build.coco import load_coco
from fastload.build.geometry import part_rings
from fastload.build.raster import rasterize_image, rasterize_instance
from fastload.build.records import ImageRecord, Instance

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def real(sample_coco: Path):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(sample_coco))
    return load_coco(sample_coco), coco


@pytest.fixture
def scanline(monkeypatch):
    """fastload's composition with the old scanline fill making each instance's mask."""
    monkeypatch.setattr(raster, "_instance_patch", scanline_instance_patch)


# Each mask is dropped as soon as it is made (the cache builder encodes and drops): keeping 165 full-size
# masks alive would mostly measure the kernel handing out fresh pages, on both sides.


def instances(dataset) -> int:
    return sum(
        int(rasterize_instance(i, r.height, r.width)[0, 0]) + 1 for r in dataset.images for i in r.instances
    )


def pycocotools_instances(coco: COCO) -> int:
    return sum(int(coco.annToMask(ann)[0, 0]) + 1 for ann in coco.dataset["annotations"])


def images(records: Sequence[ImageRecord]) -> int:
    return sum(len(rasterize_image(record).instances) for record in records)


@pytest.mark.benchmark(group="raster-real")
def test_fastload_rasterize_instance(benchmark, real):
    dataset, _ = real
    assert benchmark(instances, dataset) == 165


@pytest.mark.benchmark(group="raster-real")
def test_scanline_rasterize_instance(benchmark, real, scanline):
    dataset, _ = real
    assert benchmark(instances, dataset) == 165


@pytest.mark.benchmark(group="raster-real")
def test_pycocotools_ann_to_mask(benchmark, real):
    _, coco = real
    assert benchmark(pycocotools_instances, coco) == 165


@pytest.mark.benchmark(group="raster-real")
def test_fastload_rasterize_image_all_18(benchmark, real):
    dataset, _ = real
    assert benchmark(images, dataset.images) == 165


@pytest.mark.benchmark(group="raster-real")
def test_scanline_rasterize_image_all_18(benchmark, real, scanline):
    dataset, _ = real
    assert benchmark(images, dataset.images) == 165


# ------------------------------------------------------------------------------ COCO-like sizes


def coco_like_records(n_images: int = 100, per_image: int = 7, seed: int = 0) -> list[ImageRecord]:
    """640x480 images whose polygons follow COCO val2017's size mix, valid and inside the image."""
    rng = np.random.default_rng(seed)
    height, width = 480, 640
    records = []
    for image_id in range(n_images):
        polygons = []
        for _ in range(per_image):
            low, high = [(16, 32**2), (32**2, 96**2), (96**2, 100_000)][rng.choice(3, p=[0.41, 0.34, 0.25])]
            radius = np.sqrt(np.exp(rng.uniform(np.log(low), np.log(high))) / np.pi)
            n = int(np.clip(rng.normal(8 + 2 * np.sqrt(radius), 3), 4, 80))  # more vertices on larger objects
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = radius * rng.uniform(0.6, 1.2, n)
            centre = rng.uniform(1.2 * radius, [width - 1.2 * radius, height - 1.2 * radius])
            points = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
            polygons.append(np.round(points, 2))
        instances = tuple(
            Instance(image_id * per_image + k + 1, 1, 1, False, (polygon,), None, 0.0)
            for k, polygon in enumerate(polygons)
        )
        records.append(ImageRecord(image_id, f"{image_id:012d}.jpg", height, width, instances))
    return records


@pytest.fixture(scope="module")
def coco_like() -> list[ImageRecord]:
    return coco_like_records()


def ann_to_mask_instances(records: Sequence[ImageRecord]) -> int:
    """annToMask's work for every instance: frPyObjects at full size, merge, decode."""
    total = 0
    for record in records:
        for inst in record.instances:
            flat = [p.ravel().tolist() for p in inst.polygons]
            rles = mask_utils.frPyObjects(flat, record.height, record.width)
            total += int(mask_utils.decode(mask_utils.merge(rles))[0, 0]) + 1
    return total


@pytest.mark.benchmark(group="raster-coco-like")
def test_fastload_rasterize_image_coco_like(benchmark, coco_like):
    benchmark(images, coco_like)


@pytest.mark.benchmark(group="raster-coco-like")
def test_scanline_rasterize_image_coco_like(benchmark, coco_like, scanline):
    benchmark(images, coco_like)


@pytest.mark.benchmark(group="raster-coco-like")
def test_pycocotools_ann_to_mask_coco_like(benchmark, coco_like):
    assert benchmark(ann_to_mask_instances, coco_like) == 700


# -------------------------------------------------------------------------------- the "before" loop


def small_record() -> ImageRecord:
    rng = np.random.default_rng(0)
    instances = []
    for k in range(4):
        angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
        radii = rng.uniform(8, 24, 12)
        centre = rng.uniform([20, 15], [76, 49])
        points = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
        instances.append(Instance(k + 1, 1, 1, False, (points,), None, 0.0))
    return ImageRecord(1, "small.png", 64, 96, tuple(instances))


def python_loop_rasterize(record: ImageRecord) -> np.ndarray:
    """Per pixel, per edge: the crossing-number test in Python, later instances on top."""
    out = np.zeros((record.height, record.width), dtype=np.int32)
    for k, inst in enumerate(record.instances):
        ring = inst.polygons[0].tolist()
        for i in range(record.height):
            for j in range(record.width):
                x, y, inside = j + 0.5, i + 0.5, False
                for e in range(len(ring)):
                    (x0, y0), (x1, y1) = ring[e], ring[(e + 1) % len(ring)]
                    if (y0 > y) != (y1 > y) and x < (x1 - x0) * (y - y0) / (y1 - y0) + x0:
                        inside = not inside
                if inside:
                    out[i, j] = k + 1
    return out


@pytest.mark.benchmark(group="raster-python-loop")
def test_python_loop_rasterize(benchmark):
    benchmark.pedantic(python_loop_rasterize, args=(small_record(),), rounds=3, iterations=1)


@pytest.mark.benchmark(group="raster-python-loop")
def test_fastload_rasterize_small(benchmark):
    benchmark(rasterize_image, small_record())


# ------------------------------------------------------------------------------ quick, no timing


def test_real_workload_agrees(real):
    dataset, coco = real
    for record in dataset.images:
        for inst in record.instances:
            ours = rasterize_instance(inst, record.height, record.width)
            np.testing.assert_array_equal(ours, coco.annToMask(coco.anns[inst.annotation_id]).astype(bool))


def test_coco_like_workload_agrees(coco_like):
    for record in coco_like[:20]:
        for inst in record.instances:
            flat = [p.ravel().tolist() for p in inst.polygons]
            rles = mask_utils.frPyObjects(flat, record.height, record.width)
            expected = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
            np.testing.assert_array_equal(rasterize_instance(inst, record.height, record.width), expected)


def test_scanline_is_the_pixel_centre_rule(coco_like, scanline):
    # the "before" measured above is the old rule, not something else: a pixel is on iff its centre is inside
    record = coco_like[0]
    for inst in record.instances:
        rows, cols = np.mgrid[: record.height, : record.width] + 0.5
        centres_inside = shapely.contains_xy(shapely.Polygon(inst.polygons[0]), cols, rows)
        np.testing.assert_array_equal(rasterize_instance(inst, record.height, record.width), centres_inside)


def test_small_workload_agrees():
    record = small_record()
    loop = python_loop_rasterize(record) > 0
    fast = rasterize_image(record).instance > 0
    # the loop paints later instances on top, fastload smaller ones, so compare what is covered; the loop
    # takes "centre inside", fastload pycocotools' 1/5-px grid: they differ only at centres within 0.25 px
    # of an edge
    differ = np.argwhere(loop != fast)
    edges = shapely.union_all([shapely.LinearRing(inst.polygons[0]) for inst in record.instances])
    assert shapely.distance(edges, shapely.points(differ[:, ::-1] + 0.5)).max(initial=0.0) <= 0.25


# ------------------------------------------------------------------- the "before": scanline fill
# fastload/raster.py's functions as they were (less their Patch annotations); only the entry point is new


def scanline_instance_patch(instance: Instance, height: int, width: int):
    """The scanline rasteriser fastload used before: pixel on iff its centre is inside (even-odd per part)."""
    if instance.rle is not None:
        return _rle_patch(instance.rle)
    return _polygons_patch(instance.polygons, height, width)


def _rle_patch(rle: dict):
    x, y, w, h = (int(round(v)) for v in mask_utils.toBbox(rle))
    if w <= 0 or h <= 0:
        return None
    decoded = mask_utils.decode(rle)
    return y, x, decoded[y : y + h, x : x + w].astype(bool)


def _polygons_patch(polygons: Sequence[np.ndarray], height: int, width: int):
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


def _part_patch(rings: Sequence[np.ndarray], height: int, width: int):
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
