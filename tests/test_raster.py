"""Rasterisation: pycocotools' masks bit for bit (vs ``annToMask``), RLE, holes, overlap and crowd rules."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import shapely
from cocofactory import CocoFactory, disk, unseen_coco
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from fastload.build.coco import load_coco
from fastload.build.geometry import COORDINATE_LIMIT, part_rings
from fastload.build.raster import rasterize_image, rasterize_instance, rasterize_polygons
from fastload.build.records import ImageRecord, Instance

# pycocotools' decode trips NumPy 2's __array__(copy=...) deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def ann_to_mask(parts, height: int, width: int) -> np.ndarray:
    """``COCO.annToMask`` of a polygon segmentation: ``frPyObjects`` at full size, ``merge``, ``decode``."""
    flat = [np.asarray(part, dtype=np.float64).ravel().tolist() for part in parts]
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(flat, height, width))).astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def polygon_instance(*parts, annotation_id=1, train_id=1, iscrowd=False) -> Instance:
    polygons = tuple(np.asarray(p, dtype=np.float64) for p in parts)
    return Instance(annotation_id, 10 + train_id, train_id, iscrowd, polygons, None, 0.0)


def square(x0: float, y0: float, size: float) -> np.ndarray:
    return np.array([(x0, y0), (x0 + size, y0), (x0 + size, y0 + size), (x0, y0 + size)], dtype=np.float64)


def with_hole(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """One stored part: exterior, a NaN row, the hole (as ``load_coco`` stores a repaired part)."""
    return np.concatenate([outer, [[np.nan, np.nan]], hole])


def annotation_masks(coco_path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
        return COCO(str(coco_path))


# ------------------------------------------------------------------------------ pycocotools' convention


def test_axis_aligned_rectangle_covers_the_pixels_whose_centres_it_contains():
    # x in [2, 5], y in [1, 3]: centres 2.5, 3.5, 4.5 and 1.5, 2.5 are inside; 5.5 and 3.5 are not
    rectangle = np.array([(2, 1), (5, 1), (5, 3), (2, 3)])
    expected = np.zeros((6, 8), dtype=bool)
    expected[1:3, 2:5] = True
    np.testing.assert_array_equal(rasterize_polygons([rectangle], 6, 8), expected)
    np.testing.assert_array_equal(ann_to_mask([rectangle], 6, 8), expected)


def test_small_object_with_fractional_vertices_is_ann_to_mask_not_the_centre_rule():
    # a 23-px object with 2-decimal vertices, as COCO stores them. pycocotools rounds the vertices to the
    # 1/5-px grid (30.82 → 30.8, 37.94 → 38.0) and steps along the edges on it: pixel (33, 30) comes out
    # on although its centre (30.5, 33.5) lies 0.07 px outside the drawn polygon
    polygon = np.array([(30.33, 40.13), (27.07, 37.94), (30.82, 33.21), (33.49, 35.26)])
    ours = rasterize_polygons([polygon], 48, 48)
    np.testing.assert_array_equal(ours, ann_to_mask([polygon], 48, 48))
    assert np.count_nonzero(ours) == 23 and ours[33, 30]
    assert not shapely.contains_xy(shapely.Polygon(polygon), 30.5, 33.5)


def coco_like_polygon(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A polygon as COCO annotators draw them: 2-decimal vertices, mostly small, some concave or thin."""
    kind = rng.choice(["small", "large", "concave", "border", "sliver"], p=[0.4, 0.15, 0.2, 0.15, 0.1])
    radius = {"small": rng.uniform(1.5, 8), "large": rng.uniform(20, 60), "concave": rng.uniform(4, 40)}.get(
        kind, rng.uniform(2, 30)
    )
    radius = min(radius, min(height, width) / 2 - 0.5)
    n = int(rng.integers(3, 24))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    spread = rng.uniform(0.3, 1.0, n) if kind == "concave" else rng.uniform(0.85, 1.0, n)
    centre = rng.uniform([radius, radius], [width - radius, height - radius])
    if kind == "border":  # crossing or touching an image edge; pycocotools drops what falls outside
        centre = rng.uniform([-radius / 2, -radius / 2], [width + radius / 2, height + radius / 2])
    points = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * (radius * spread)[:, None]
    if kind == "sliver":  # near-degenerate: squashed to a fraction of a pixel across
        points[:, 1] = centre[1] + (points[:, 1] - centre[1]) * rng.uniform(0.005, 0.05)
    return np.round(points, 2)


@pytest.mark.parametrize("seed", range(4))
def test_polygons_equal_full_image_ann_to_mask_bit_for_bit(seed: int):
    # the proof that decoding pycocotools' run-length result over the mask's box loses nothing: 250
    # polygons per seed, each against annToMask's own full-image frPyObjects + decode
    rng = np.random.default_rng(seed)
    for _ in range(250):
        height, width = int(rng.integers(16, 200)), int(rng.integers(16, 200))
        polygon = coco_like_polygon(rng, height, width)
        ours = rasterize_polygons([polygon], height, width)
        expected = ann_to_mask([polygon], height, width)
        np.testing.assert_array_equal(ours, expected, err_msg=str(polygon.tolist()))


def test_multi_part_polygons_equal_ann_to_mask():
    # annToMask merges the parts of a segmentation (union), overlapping and far apart alike
    rng = np.random.default_rng(7)
    for _ in range(100):
        parts = [coco_like_polygon(rng, 120, 90) for _ in range(int(rng.integers(2, 5)))]
        np.testing.assert_array_equal(rasterize_polygons(parts, 120, 90), ann_to_mask(parts, 120, 90))


def test_a_canvas_around_the_object_would_not_be_exact():
    # why fastload does not translate polygons into a small canvas: pycocotools rounds 5·x + 0.5 in
    # float64, so the vertex x = 101.1 lands on 101.2, but 101.1 - 100 = 1.0999999999999943 on 1.0
    triangle = np.array([(100.0, 2.0), (101.1, 3.0), (100.0, 8.0)])
    full = ann_to_mask([triangle], 10, 112)
    canvas = ann_to_mask([triangle - (100, 0)], 10, 12)
    assert full[5, 100] and not canvas[5, 0]
    np.testing.assert_array_equal(rasterize_polygons([triangle], 10, 112), full)


def test_shared_edges_paint_every_pixel_exactly_once():
    # pycocotools steps along an edge the same way whichever polygon it belongs to, so two polygons
    # sharing an edge switch at the same pixels: none painted twice, none left out
    left = np.array([(0.5, 0.5), (3.5, 0.5), (5.5, 7.5), (0.5, 7.5)])
    right = np.array([(3.5, 0.5), (9.5, 0.5), (9.5, 7.5), (5.5, 7.5)])
    a = rasterize_polygons([left], 9, 11)
    b = rasterize_polygons([right], 9, 11)
    whole = rasterize_polygons([np.array([(0.5, 0.5), (9.5, 0.5), (9.5, 7.5), (0.5, 7.5)])], 9, 11)
    assert not (a & b).any()
    np.testing.assert_array_equal(a | b, whole)


def test_parts_are_or_ed_and_holes_are_empty():
    overlapping = [square(2, 2, 10), square(6, 6, 10)]
    union = rasterize_polygons(overlapping, 20, 20)
    assert union.sum() == 100 + 100 - 36  # no even-odd between parts
    framed = rasterize_polygons([with_hole(square(0, 0, 20), square(5, 5, 10))], 20, 20)
    assert framed.sum() == 400 - 100 and not framed[5:15, 5:15].any()


def test_rings_of_a_part_combine_by_even_odd_as_pycocotools_rasterises_each():
    # a part's rings are XOR-ed, each ring rasterised by pycocotools; a second part is OR-ed over them
    outer = np.array([(3.17, 2.5), (40.83, 4.06), (37.2, 35.91), (5.55, 31.2)])
    hole = np.array([(12.31, 10.77), (25.09, 12.4), (20.6, 24.38)])
    island = np.array([(16.2, 14.1), (20.45, 14.9), (18.3, 19.7)])  # inside the hole
    part = with_hole(outer, hole)
    expected = ann_to_mask([outer], 40, 45) ^ ann_to_mask([hole], 40, 45) | ann_to_mask([island], 40, 45)
    np.testing.assert_array_equal(rasterize_polygons([part, island], 40, 45), expected)
    assert not rasterize_polygons([part], 40, 45)[16, 19]  # the hole is empty, the island fills part of it


def test_polygon_between_pixel_centres_is_empty_and_dropped():
    sliver = np.array([(3.6, 1.0), (4.4, 1.0), (4.4, 9.0)])  # no column centre x = j + 0.5 inside
    assert not rasterize_polygons([sliver], 10, 10).any()
    record = ImageRecord(1, "x.png", 10, 10, (polygon_instance(sliver),))
    result = rasterize_image(record)
    assert result.instances == () and not result.instance.any()


def test_ring_of_two_points_is_empty_not_a_box():
    # pycocotools' frPyObjects reads a 4-number list as an [x, y, w, h] box; two points enclose nothing
    assert not rasterize_polygons([np.array([(1.0, 1.0), (6.0, 6.0)])], 8, 8).any()


# ---------------------------------------------------------------------------------- vs pycocotools


def test_real_polygons_equal_pycocotools_ann_to_mask(sample_coco: Path):
    # all 165 real polygons of the sample data are valid and inside their image: bit for bit
    coco = annotation_masks(sample_coco)
    checked = 0
    for record in load_coco(sample_coco).images:
        for inst in record.instances:
            expected = coco.annToMask(coco.anns[inst.annotation_id]).astype(bool)
            np.testing.assert_array_equal(rasterize_instance(inst, record.height, record.width), expected)
            checked += 1
    assert checked == 165


def test_coco_like_image_with_small_objects_crowd_and_sparse_ids(tmp_path: Path):
    # a 640x480 image as in COCO val2017: small objects of tens of pixels with 2-decimal vertices, one
    # of two parts, a crowd RLE, sparse category ids; every instance is annToMask's mask exactly
    rng = np.random.default_rng(3)
    coco = CocoFactory(tmp_path)
    for coco_id in (1, 18, 44, 90):
        coco.category(coco_id)
    coco.image("000000000139.jpg", height=480, width=640, write_pixels=False)
    for k in range(12):
        radius = rng.uniform(2.5, 6.0)  # 20-110 px
        centre = rng.uniform(10, [630, 470])
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(4, 12))))
        points = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius
        coco.polygon(1, (1, 18, 44, 90)[k % 4], np.round(points, 2))
    left = [(300.11, 200.47), (318.9, 201.3), (309.62, 214.05)]
    right = [(330.7, 199.2), (341.2, 205.9), (331.3, 212.4)]
    coco.polygon(1, 44, left, right)
    coco.rle(1, 1, disk(480, 640, 400, 120, 30), iscrowd=1)
    path = coco.write()
    masks = annotation_masks(path)
    [record] = load_coco(path).images
    for inst in record.instances:
        expected = masks.annToMask(masks.anns[inst.annotation_id]).astype(bool)
        np.testing.assert_array_equal(rasterize_instance(inst, 480, 640), expected)
    assert sum(not inst.iscrowd for inst in record.instances) == 13


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
def test_concave_polygons_equal_pycocotools(tmp_path: Path, shape: int):
    coco = CocoFactory(tmp_path)
    coco.category(1)
    coco.image("x.png", height=256, width=256, write_pixels=False)
    coco.polygon(1, 1, concave_shapes(256)[shape])
    path = coco.write()
    expected = annotation_masks(path).annToMask(coco.annotations[0]).astype(bool)
    [record] = load_coco(path).images
    np.testing.assert_array_equal(rasterize_instance(record.instances[0], 256, 256), expected)


def repaired_or_clipped(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A polygon that load_coco must change: an annotator's slip (two vertices swapped), or over an edge."""
    radius = np.exp(rng.uniform(np.log(3.5), np.log(40)))
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 16))))
    if rng.random() < 0.5:
        centre = rng.uniform([radius, radius], [width - radius, height - radius])
        points = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius
        k = int(rng.integers(0, len(points) - 1))
        points[[k, k + 1]] = points[[k + 1, k]]
    else:
        centre = rng.uniform([-radius / 2, -radius / 2], [width + radius / 2, height + radius / 2])
        points = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius
    return np.round(points, 2)


def created_edges(stored: Instance, raw: np.ndarray) -> shapely.MultiLineString:
    """The stored edges with an end point that is not a vertex of the raw annotation."""
    drawn = {tuple(p) for p in raw.tolist()}
    edges = [
        (ring[k], ring[(k + 1) % len(ring)])
        for part in stored.polygons
        for ring in part_rings(part)
        for k in range(len(ring))
        if tuple(ring[k]) not in drawn or tuple(ring[(k + 1) % len(ring)]) not in drawn
    ]
    return shapely.MultiLineString(edges)


def test_self_intersecting_and_overhanging_polygons_equal_ann_to_mask_exactly(tmp_path: Path):
    # load_coco checks such a part through shapely's repair and clipping but stores it as drawn, so pycocotools
    # rasterises the very polygon annToMask does (clipping at the border itself): every mask is exact, small
    # objects included (a repaired shape rasterised instead fell to IoU 0.939 on 32-100 px objects)
    rng = np.random.default_rng(11)
    coco = CocoFactory(tmp_path)
    coco.category(1)
    coco.image("x.png", height=96, width=128, write_pixels=False)
    for _ in range(300):
        coco.polygon(1, 1, repaired_or_clipped(rng, 96, 128))
    path = coco.write()
    masks = annotation_masks(path)
    [record] = load_coco(path, on_error="skip").images
    assert len(record.instances) > 250
    for inst in record.instances:
        raw = np.asarray(masks.anns[inst.annotation_id]["segmentation"][0]).reshape(-1, 2)
        assert len(inst.polygons) == 1 and np.array_equal(inst.polygons[0], raw), "stored as drawn"
        expected = masks.annToMask(masks.anns[inst.annotation_id]).astype(bool)
        np.testing.assert_array_equal(rasterize_instance(inst, 96, 128), expected)


def test_rle_instances_decode_exactly(tmp_path: Path):
    unseen_coco(tmp_path)
    coco = annotation_masks(tmp_path / "annotations.json")
    for record in load_coco(tmp_path / "annotations.json").images:
        for inst in record.instances:
            if inst.rle is not None:
                expected = coco.annToMask(coco.anns[inst.annotation_id]).astype(bool)
                np.testing.assert_array_equal(rasterize_instance(inst, record.height, record.width), expected)


def test_rle_masks_of_any_shape_decode_exactly():
    # decoding only the mask's box must give pycocotools' decode: runs that start at pixel 0, end at the
    # last pixel, wrap from the bottom of a column to the top of the next, empty and full masks
    rng = np.random.default_rng(5)
    cases = [np.zeros((7, 5), bool), np.ones((7, 5), bool), np.eye(6, dtype=bool), ~np.eye(6, dtype=bool)]
    for _ in range(300):
        cases.append(rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < rng.random())
    for mask in cases:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        instance = Instance(1, 1, 1, False, (), rle, 0.0)
        np.testing.assert_array_equal(rasterize_instance(instance, *mask.shape), mask)


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


def box_of(mask: np.ndarray) -> list[int]:
    """[x, y, w, h] of a bool mask's pixels, from np.nonzero: the textbook version."""
    rows, cols = np.nonzero(mask)
    return [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]


def test_boxes_are_those_of_the_visible_pixels(synth_root: Path, sample_coco: Path):
    # whole, partly covered (cut on any side, or in two) and hidden instances, synthetic and real
    cut = polygon_instance(square(0, 0, 10), annotation_id=1)
    cover = [polygon_instance(square(x, y, w), annotation_id=2 + k) for k, (x, y, w) in enumerate([(0, 0, 4), (7, 3, 3)])]
    records = [ImageRecord(1, "x.png", 12, 12, (cut, *cover))]
    records += load_coco(synth_root / "annotations.json").images + load_coco(sample_coco).images[:6]
    partly = 0
    for record in records:
        result = rasterize_image(record)
        assert result.boxes.dtype == np.int64 and result.boxes.shape == (len(result.instances), 4)
        for k, box in enumerate(result.boxes.tolist()):
            assert box == box_of(result.instance == k + 1)
            partly += box != box_of(rasterize_instance(result.instances[k], record.height, record.width))
    assert partly >= 5  # the covered path is taken, not only the whole-instance one


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


def test_crowd_polygon_is_ignore_too():
    crowd = polygon_instance(square(0, 0, 10), annotation_id=1, iscrowd=True)
    thing = polygon_instance(square(2, 2, 3), annotation_id=2, train_id=7)
    result = rasterize_image(ImageRecord(1, "x.png", 12, 12, (crowd, thing)))
    assert result.instances == (thing,)
    assert np.count_nonzero(result.semantic == 255) == 100 - 9 and (result.semantic[2:5, 2:5] == 7).all()


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
        (np.array([(0, 0), (4, 0), (4, 2 * COORDINATE_LIMIT)]), "must lie within"),  # 5·y overflows a C int
    ],
)
def test_malformed_parts_are_refused(part, message):
    with pytest.raises(ValueError, match=message):
        rasterize_polygons([part], 8, 8)
