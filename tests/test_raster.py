"""Rasterisation: pixel-centre semantics (vs a per-pixel reference and pycocotools), RLE, the overlap rule."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from cocofactory import CocoFactory, disk, unseen_coco
from pycocotools.coco import COCO

from fastload.coco import ImageRecord, Instance, load_coco, part_rings
from fastload.raster import rasterize_image, rasterize_instance, rasterize_polygons

# pycocotools' decode trips NumPy 2's __array__(copy=...) deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def point_in_rings(x: float, y: float, rings) -> bool:
    """Crossing-number test (even-odd) of one point against closed rings: the textbook version."""
    inside = False
    for ring in rings:
        for k in range(len(ring)):
            (x0, y0), (x1, y1) = ring[k], ring[(k + 1) % len(ring)]
            if (y0 > y) != (y1 > y) and x < (x1 - x0) * (y - y0) / (y1 - y0) + x0:
                inside = not inside
    return inside


def reference_fill(parts, height: int, width: int) -> np.ndarray:
    """bool (H, W): pixel (i, j) is on iff its centre (j + 0.5, i + 0.5) is inside a part (parts OR-ed)."""
    out = np.zeros((height, width), dtype=bool)
    for part in parts:
        rings = [ring.tolist() for ring in part_rings(part)]
        for i in range(height):
            for j in range(width):
                out[i, j] |= point_in_rings(j + 0.5, i + 0.5, rings)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def polygon_instance(*parts, annotation_id=1, train_id=1, iscrowd=False) -> Instance:
    polygons = tuple(np.asarray(p, dtype=np.float64) for p in parts)
    return Instance(annotation_id, 10 + train_id, train_id, iscrowd, polygons, None, 0.0)


def square(x0: float, y0: float, size: float) -> np.ndarray:
    return np.array([(x0, y0), (x0 + size, y0), (x0 + size, y0 + size), (x0, y0 + size)], dtype=np.float64)


def annotation_masks(coco_path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
        return COCO(str(coco_path))


# --------------------------------------------------------------------------------- pixel semantics


def test_axis_aligned_rectangle_covers_the_pixels_whose_centres_it_contains():
    # x in [2, 5], y in [1, 3]: centres 2.5, 3.5, 4.5 and 1.5, 2.5 are inside; 5.5 and 3.5 are not
    mask = rasterize_polygons([np.array([(2, 1), (5, 1), (5, 3), (2, 3)])], 6, 8)
    expected = np.zeros((6, 8), dtype=bool)
    expected[1:3, 2:5] = True
    np.testing.assert_array_equal(mask, expected)


def test_shared_edges_paint_every_pixel_exactly_once():
    # a centre on an edge belongs to exactly one of the two polygons sharing it (half-open rule)
    left = np.array([(0.5, 0.5), (3.5, 0.5), (5.5, 7.5), (0.5, 7.5)])
    right = np.array([(3.5, 0.5), (9.5, 0.5), (9.5, 7.5), (5.5, 7.5)])
    a = rasterize_polygons([left], 9, 11)
    b = rasterize_polygons([right], 9, 11)
    whole = rasterize_polygons([np.array([(0.5, 0.5), (9.5, 0.5), (9.5, 7.5), (0.5, 7.5)])], 9, 11)
    assert not (a & b).any()
    np.testing.assert_array_equal(a | b, whole)


def random_parts(rng: np.random.Generator, height: int, width: int) -> list[np.ndarray]:
    parts = []
    for _ in range(rng.integers(1, 3)):
        n = int(rng.integers(3, 12))
        if rng.random() < 0.5:  # star-shaped around a centre, possibly concave, partly outside the image
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = rng.uniform(2, max(height, width) / 2, n)
            centre = rng.uniform(-3, [width + 3, height + 3])
            points = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
        else:  # arbitrary vertices: self-intersecting rings
            points = rng.uniform(-4, [width + 4, height + 4], (n, 2))
        if rng.random() < 0.3:  # vertices on the pixel grid and on pixel centres: boundary cases
            points = np.round(points * 2) / 2
        parts.append(points)
    if rng.random() < 0.3:  # a part with a hole, as coco.py stores it (NaN-separated rings)
        hole = square(width / 3, height / 3, min(height, width) / 4)
        parts.append(np.concatenate([square(1, 1, min(height, width) - 2), [[np.nan, np.nan]], hole]))
    return parts


@pytest.mark.parametrize("seed", range(60))
def test_scanline_equals_per_pixel_point_in_polygon(seed: int):
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(5, 24)), int(rng.integers(5, 24))
    parts = random_parts(rng, height, width)
    np.testing.assert_array_equal(rasterize_polygons(parts, height, width), reference_fill(parts, height, width))


def test_parts_are_or_ed_and_holes_are_empty():
    overlapping = [square(2, 2, 10), square(6, 6, 10)]
    union = rasterize_polygons(overlapping, 20, 20)
    assert union.sum() == 100 + 100 - 36  # no even-odd between parts
    ring_with_hole = np.concatenate([square(0, 0, 20), [[np.nan, np.nan]], square(5, 5, 10)])
    framed = rasterize_polygons([ring_with_hole], 20, 20)
    assert framed.sum() == 400 - 100 and not framed[5:15, 5:15].any()


def test_polygon_between_pixel_centres_is_empty_and_dropped():
    sliver = np.array([(3.6, 1.0), (4.4, 1.0), (4.4, 9.0)])  # no centre x = j + 0.5 inside
    assert not rasterize_polygons([sliver], 10, 10).any()
    record = ImageRecord(1, "x.png", 10, 10, (polygon_instance(sliver),))
    result = rasterize_image(record)
    assert result.instances == () and not result.instance.any()


# ---------------------------------------------------------------------------------- vs pycocotools


def test_real_polygons_match_pycocotools_ann_to_mask(sample_coco: Path):
    coco = annotation_masks(sample_coco)
    checked = 0
    for record in load_coco(sample_coco).images:
        for inst in record.instances:
            expected = coco.annToMask(coco.anns[inst.annotation_id]).astype(bool)
            if expected.sum() < 32:
                continue
            assert iou(rasterize_instance(inst, record.height, record.width), expected) >= 0.99, inst.annotation_id
            checked += 1
    assert checked == 165


def concave_shapes(size: int) -> list[list[tuple[float, float]]]:
    c = size / 2
    angles = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    radii = np.where(np.arange(14) % 2 == 0, 0.45 * size, 0.2 * size)
    star = list(zip(c + radii * np.cos(angles) + 0.3, c + radii * np.sin(angles) + 0.7, strict=True))
    letter_c = [(20, 20), (200, 20), (200, 70), (70, 70), (70, 180), (200, 180), (200, 230), (20, 230)]
    letter_l = [(30.2, 10.7), (90.4, 10.7), (90.4, 150.1), (220.9, 150.1), (220.9, 210.3), (30.2, 210.3)]
    arrow = [(10, 120), (120, 10.5), (120, 70.25), (245, 70.25), (245, 170.75), (120, 170.75), (120, 240)]
    return [star, letter_c, letter_l, arrow]


@pytest.mark.parametrize("shape", range(4))
def test_concave_polygons_match_pycocotools(tmp_path: Path, shape: int):
    coco = CocoFactory(tmp_path)
    coco.category(1)
    coco.image("x.png", height=256, width=256, write_pixels=False)
    coco.polygon(1, 1, concave_shapes(256)[shape])
    path = coco.write()
    expected = annotation_masks(path).annToMask(coco.annotations[0]).astype(bool)
    [record] = load_coco(path).images
    assert iou(rasterize_instance(record.instances[0], 256, 256), expected) >= 0.99


def test_rle_instances_decode_exactly(tmp_path: Path):
    unseen_coco(tmp_path)
    coco = annotation_masks(tmp_path / "annotations.json")
    for record in load_coco(tmp_path / "annotations.json").images:
        for inst in record.instances:
            if inst.rle is not None:
                expected = coco.annToMask(coco.anns[inst.annotation_id]).astype(bool)
                np.testing.assert_array_equal(rasterize_instance(inst, record.height, record.width), expected)


# ------------------------------------------------------------------------------------ composition


def test_smaller_instance_is_on_top_whatever_the_order():
    big, small = square(2, 2, 20), square(8, 8, 5)
    for order in [(big, small), (small, big)]:
        insts = tuple(polygon_instance(p, annotation_id=k + 1, train_id=k + 1) for k, p in enumerate(order))
        result = rasterize_image(ImageRecord(1, "x.png", 30, 30, insts))
        small_id = 1 + [p is small for p in order].index(True)
        assert (result.instance[8:13, 8:13] == small_id).all()
        assert np.count_nonzero(result.instance == small_id) == 25
        assert np.count_nonzero(result.instance) == 400


def test_equal_areas_put_the_later_annotation_on_top():
    first, second = polygon_instance(square(0, 0, 6), annotation_id=1), polygon_instance(square(3, 0, 6), annotation_id=2)
    result = rasterize_image(ImageRecord(1, "x.png", 10, 12, (first, second)))
    assert (result.instance[0:6, 3:6] == 2).all()
    assert result.instances == (first, second)


def test_hidden_instance_is_left_out_and_ids_stay_contiguous():
    covered = polygon_instance(square(0, 0, 4), annotation_id=10, train_id=1)
    quarters = tuple(
        polygon_instance(square(x, y, 2), annotation_id=11 + k, train_id=2)
        for k, (x, y) in enumerate([(0, 0), (2, 0), (0, 2), (2, 2)])
    )
    other = polygon_instance(square(10, 10, 3), annotation_id=20, train_id=3)
    result = rasterize_image(ImageRecord(1, "x.png", 16, 16, (covered, *quarters, other)))
    assert result.instances == (*quarters, other)  # annotation order, 'covered' gone
    assert set(np.unique(result.instance)) == {0, 1, 2, 3, 4, 5}
    assert (result.instance[10:13, 10:13] == 5).all()
    assert (result.semantic[0:4, 0:4] == 2).all() and (result.semantic[10:13, 10:13] == 3).all()


def test_identical_twin_hides_the_earlier_annotation():
    first = polygon_instance(square(0, 0, 4), annotation_id=1, train_id=1)
    twin = polygon_instance(square(0, 0, 4), annotation_id=2, train_id=2)
    result = rasterize_image(ImageRecord(1, "x.png", 8, 8, (first, twin)))
    assert result.instances == (twin,) and np.count_nonzero(result.instance == 1) == 16


def test_crowd_is_ignore_under_instances(tmp_path: Path):
    coco = CocoFactory(tmp_path)
    coco.category(4, "a")
    coco.category(9, "b")
    coco.image("x.png", height=30, width=40, image_id=1)
    crowd = np.zeros((30, 40), dtype=bool)
    crowd[5:25, 5:35] = True
    coco.rle(1, 9, crowd, iscrowd=1)
    coco.polygon(1, 4, square(10, 10, 6))
    [record] = load_coco(coco.write()).images
    result = rasterize_image(record)
    assert len(result.instances) == 1 and result.instances[0].category_id == 4
    assert (result.instance[10:16, 10:16] == 1).all() and np.count_nonzero(result.instance) == 36
    assert (result.semantic[10:16, 10:16] == 1).all()
    assert np.count_nonzero(result.semantic == 255) == 20 * 30 - 36
    assert np.count_nonzero(result.semantic) == 20 * 30


def test_unseen_coco_rasterises_with_declared_dtypes(tmp_path: Path):
    unseen_coco(tmp_path)
    for record in load_coco(tmp_path / "annotations.json").images:
        result = rasterize_image(record)
        assert result.instance.dtype == np.int32 and result.semantic.dtype == np.uint8
        assert result.instance.shape == result.semantic.shape == (record.height, record.width)
        n = len(result.instances)
        assert set(np.unique(result.instance)) == set(range(n + 1)) if n else not result.instance.any()
        assert set(np.unique(result.semantic)) <= {0, 1, 2, 3, 255}
        for k, inst in enumerate(result.instances):
            assert not inst.iscrowd
            assert (result.semantic[result.instance == k + 1] == inst.train_id).all()
    portrait = rasterize_image(load_coco(tmp_path / "annotations.json").images[1])
    assert portrait.instance.shape == (64, 36)
    assert (portrait.semantic == 255).any()  # the uncompressed crowd RLE


def test_non_crowd_rle_is_an_instance(tmp_path: Path):
    mask = disk(20, 30, 10, 12, 6)
    coco = CocoFactory(tmp_path)
    coco.category(1)
    coco.image("x.png", height=20, width=30)
    coco.rle(1, 1, mask, compressed=False, iscrowd=0)
    [record] = load_coco(coco.write()).images
    np.testing.assert_array_equal(rasterize_instance(record.instances[0], 20, 30), mask)
    result = rasterize_image(record)
    np.testing.assert_array_equal(result.instance == 1, mask)
    assert result.instances == record.instances


@pytest.mark.parametrize(
    "part, message",
    [
        (np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), r"\(K, 2\) array of \(x, y\), got shape \(6,\)"),
        (np.array([(0, 0), (4, np.inf), (4, 4)]), "must be finite"),
        (np.array([(0, 0), (4, np.nan), (4, 4)]), "must be finite"),  # half a NaN row is no separator
    ],
)
def test_malformed_parts_are_refused(part, message):
    with pytest.raises(ValueError, match=message):
        rasterize_polygons([part], 8, 8)
