"""COCO ingestion: the real sample file, COCO files we have not seen, and every bad input with its error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cocofactory import CocoFactory, compressed_rle, disk, unseen_coco
from pycocotools import mask as mask_utils

from fastload.build.coco import load_coco
from fastload.build.geometry import COORDINATE_LIMIT, part_rings
from fastload.build.records import Category, ImageRecord
from fastload.build.rules import resolve_image_path
from fastload.errors import AnnotationError

# pycocotools' decode trips NumPy 2's __array__(copy=...) deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FIX = "fix the annotation or pass --on-error skip"


def one_image(tmp_path: Path, *, height: int = 32, width: int = 48) -> CocoFactory:
    coco = CocoFactory(tmp_path)
    coco.category(1, "thing")
    coco.image("img.png", height=height, width=width, image_id=7)
    return coco


def instances(dataset):
    return [inst for image in dataset.images for inst in image.instances]


# ------------------------------------------------------------------------------------------ real data


def test_sample_data_loads_completely(sample_coco: Path, sample_images: Path):
    dataset = load_coco(sample_coco)
    assert len(dataset.images) == 18
    assert len(instances(dataset)) == 165
    assert dataset.categories == (
        Category(1, "date", 1),
        Category(2, "fig", 2),
        Category(3, "hazelnut", 3),
    )
    assert dataset.skips == ()
    for image in dataset.images:
        assert (image.height, image.width) == (600, 800)
        assert resolve_image_path(sample_images, image).is_file()


def test_sample_polygons_are_kept_as_drawn(sample_coco: Path):
    raw = json.loads(sample_coco.read_text())["annotations"][0]
    first = load_coco(sample_coco).images[0].instances[0]
    assert first.annotation_id == raw["id"] and not first.iscrowd and first.rle is None
    assert first.area == raw["area"]
    # a valid polygon inside the image passes through unchanged
    np.testing.assert_array_equal(first.polygons[0], np.reshape(raw["segmentation"][0], (-1, 2)))


# ------------------------------------------------------------------------------- a COCO never seen


def test_unseen_coco_categories_map_to_contiguous_train_ids(tmp_path: Path):
    unseen_coco(tmp_path)
    dataset = load_coco(tmp_path / "annotations.json")
    assert dataset.categories == (Category(3, "cat", 1), Category(17, "dog", 2), Category(90, "toaster", 3))
    train_ids = {inst.category_id: inst.train_id for inst in instances(dataset)}
    assert train_ids == {3: 1, 17: 2, 90: 3}


def test_background_category_annotations_are_dropped_and_recorded(tmp_path: Path):
    unseen_coco(tmp_path)
    dataset = load_coco(tmp_path / "annotations.json")  # on_error="fail": background is not an error
    assert all(inst.category_id != 5 for inst in instances(dataset))
    [skip] = dataset.skips
    assert (skip.image_id, skip.annotation_id, skip.reason) == (2, 6, "background category")
    assert skip.file_name == "train/b/portrait.jpg"


def test_category_id_zero_is_background(tmp_path: Path):
    coco = one_image(tmp_path)
    coco.category(0, "void")
    coco.polygon(7, 0, [(1, 1), (9, 1), (9, 9)])
    dataset = load_coco(coco.write())
    assert [c.coco_id for c in dataset.categories] == [1]
    assert [s.reason for s in dataset.skips] == ["background category"]


def test_unseen_coco_images_subfolders_unicode_portrait_and_empty(tmp_path: Path):
    factory = unseen_coco(tmp_path)
    dataset = load_coco(tmp_path / "annotations.json")
    names = [image.file_name for image in dataset.images]
    assert names == ["train/a.png", "train/b/portrait.jpg", "ünïcødé/图像.png", "empty.png"]
    for image in dataset.images:
        assert resolve_image_path(factory.image_root, image).is_file()
    portrait = dataset.images[1]
    assert (portrait.height, portrait.width) == (64, 36)
    assert dataset.images[3].instances == ()  # kept, all background


def test_multi_part_polygon_keeps_every_part(tmp_path: Path):
    unseen_coco(tmp_path)
    two_parts = load_coco(tmp_path / "annotations.json").images[0].instances[1]
    assert len(two_parts.polygons) == 2
    assert [p.shape for p in two_parts.polygons] == [(3, 2), (4, 2)]


@pytest.mark.parametrize("compressed", [True, False])
def test_crowd_rle_is_stored_compressed_and_decodes_exactly(tmp_path: Path, compressed: bool):
    coco = one_image(tmp_path)
    mask = disk(32, 48, 12, 20, 7) | disk(32, 48, 25, 40, 4)
    coco.rle(7, 1, mask, compressed=compressed)
    [inst] = instances(load_coco(coco.write()))
    assert inst.iscrowd and inst.polygons == ()
    assert isinstance(inst.rle["counts"], bytes) and inst.rle["size"] == [32, 48]
    np.testing.assert_array_equal(mask_utils.decode(inst.rle).astype(bool), mask)


def test_missing_info_and_licenses_or_present_both_load(tmp_path: Path):
    coco = one_image(tmp_path)
    coco.polygon(7, 1, [(1, 1), (9, 1), (9, 9)])
    without = load_coco(coco.write())
    coco.extra = {"info": {"year": 2024}, "licenses": [{"id": 1, "name": "MIT"}]}
    with_them = load_coco(coco.write())
    assert len(instances(without)) == len(instances(with_them)) == 1


def test_bbox_missing_is_fine_and_integral_floats_are_accepted(tmp_path: Path):
    coco = one_image(tmp_path)
    coco.polygon(7, 1, [(1, 1), (9, 1), (9, 9)])
    coco.images[0]["height"] = 32.0
    assert "bbox" not in coco.annotations[0]
    [image] = load_coco(coco.write()).images
    assert image.height == 32 and isinstance(image.height, int)


# ------------------------------------------------------------------------------------------- geometry


def test_a_bowtie_is_kept_as_drawn(tmp_path: Path):
    # shapely's repair decides it is a good part (two triangles of 100 px² each); pycocotools rasterises the
    # polygon as drawn, as COCO.annToMask does
    coco = one_image(tmp_path)
    coco.polygon(7, 1, [(0, 0), (20, 20), (20, 0), (0, 20)])
    [inst] = instances(load_coco(coco.write()))
    [part] = inst.polygons
    assert part.tolist() == [[0, 0], [20, 20], [20, 0], [0, 20]]


def test_a_part_overhanging_the_image_is_kept_as_drawn_and_clipped_by_the_rasteriser(tmp_path: Path):
    from fastload.build.raster import rasterize_instance

    coco = one_image(tmp_path, height=32, width=48)
    coco.polygon(7, 1, [(-10, -5), (60, -5), (60, 40), (-10, 40)])
    [inst] = instances(load_coco(coco.write()))
    [part] = inst.polygons
    assert part[:, 0].min() == -10 and part[:, 0].max() == 60
    assert rasterize_instance(inst, 32, 48).all()  # the whole image, nothing beyond it


def test_a_part_beyond_the_rasterisers_range_is_stored_repaired_and_clipped(tmp_path: Path):
    # pycocotools cannot rasterise coordinates beyond ±2^20 px: such a part is clipped to the image (and a
    # repaired part may gain holes, stored as NaN-separated rings)
    coco = one_image(tmp_path, height=32, width=48)
    coco.polygon(7, 1, [(2, 2), (5e6, 2), (30, 30), (2, 30), (2, 10), (10, 10), (10, 20), (20, 20), (20, 10), (2, 10)])
    [inst] = instances(load_coco(coco.write(), on_error="fail"))
    for part in inst.polygons:
        rings = part_rings(part)
        assert all(r[:, 0].max() <= 48 and r[:, 1].max() <= 32 and r.min() >= 0 for r in rings)
    assert any(len(part_rings(part)) > 1 for part in inst.polygons)


@pytest.mark.parametrize("reach", [COORDINATE_LIMIT, COORDINATE_LIMIT + 1])
def test_the_rasteriser_draws_every_part_load_coco_stores(tmp_path: Path, reach: float):
    # one limit on both sides: a part within it is stored as drawn, one beyond it clipped to the image
    from fastload.build.raster import rasterize_instance

    coco = one_image(tmp_path, height=32, width=48)
    coco.polygon(7, 1, [(2, 2), (reach, 2), (30, 30)])
    [inst] = instances(load_coco(coco.write()))
    furthest = max(np.nanmax(part[:, 0]) for part in inst.polygons)
    assert furthest == (reach if reach <= COORDINATE_LIMIT else 48)
    assert rasterize_instance(inst, 32, 48)[2:30, 30:].any()  # drawn, up to the image's right edge


@pytest.mark.parametrize(
    "points, reason",
    [
        ([(1, 1), (9, 9)], "fewer than 3 points"),
        ([(1, 1), (9, float("nan")), (9, 1)], "non-finite coordinate"),
        ([(1, 1), (9, float("inf")), (9, 1)], "non-finite coordinate"),
        ([(1, 1), (5, 5), (9, 9)], "zero area"),
        ([(100, 100), (120, 100), (120, 120)], "outside the image"),
    ],
)
def test_bad_geometry_fails_naming_image_annotation_and_reason(tmp_path: Path, points, reason):
    coco = one_image(tmp_path)
    coco.polygon(7, 1, points, ann_id=42)
    path = coco.write()
    with pytest.raises(AnnotationError) as err:
        load_coco(path)
    message = str(err.value)
    assert "image 7" in message and "annotation 42" in message and reason in message and FIX in message
    dataset = load_coco(path, on_error="skip")
    assert instances(dataset) == []
    [skip] = dataset.skips
    assert (skip.image_id, skip.annotation_id, skip.file_name) == (7, 42, "img.png")
    assert reason in skip.reason


def test_multi_part_instance_with_one_bad_part(tmp_path: Path):
    """Decision: under "fail" it is an error; under "skip" the bad part goes, the instance stays."""
    coco = one_image(tmp_path)
    coco.polygon(7, 1, [(1, 1), (12, 1), (12, 12)], [(20, 20), (25, 25)], ann_id=3)
    path = coco.write()
    with pytest.raises(AnnotationError, match=r"image 7, annotation 3: polygon part 2 of 2: fewer than 3 points"):
        load_coco(path)
    dataset = load_coco(path, on_error="skip")
    [inst] = instances(dataset)
    assert inst.annotation_id == 3 and len(inst.polygons) == 1
    [skip] = dataset.skips
    assert skip.annotation_id == 3 and "part 2 of 2" in skip.reason and "keeps its other parts" in skip.reason


def test_every_part_bad_skips_the_annotation(tmp_path: Path):
    coco = one_image(tmp_path)
    coco.polygon(7, 1, [(1, 1), (2, 2)], [(3, 3), (4, 4), (5, 5)], ann_id=3)
    dataset = load_coco(coco.write(), on_error="skip")
    assert instances(dataset) == [] and len(dataset.skips) == 1
    assert "part 1 of 2" in dataset.skips[0].reason and "part 2 of 2" in dataset.skips[0].reason


# --------------------------------------------------------------------------------------- bad records


def break_annotation(tmp_path: Path, **fields) -> Path:
    coco = one_image(tmp_path)
    coco.polygon(7, 1, [(1, 1), (9, 1), (9, 9)], ann_id=11)
    coco.annotations[0].update(fields)
    return coco.write()


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"segmentation": "1 2 3 4 5 6"}, "segmentation must be a list of polygons or an RLE object"),
        ({"segmentation": [["1", "2", "3", "4", "5", "6"]]}, "must be a flat list of numbers"),
        ({"segmentation": [[1, 2, 3, 4, 5, 6, 7]]}, "odd number of coordinates"),
        ({"segmentation": []}, "empty segmentation"),
        ({"segmentation": {"size": [32, 48], "counts": 12}}, "RLE counts must be a string or a list"),
        ({"segmentation": {"size": [10, 10], "counts": [100]}}, "does not match the image"),
        ({"segmentation": {"size": [32, 48], "counts": [5, 5]}}, "counts sum to 10"),
        ({"segmentation": {"size": [32, 48], "counts": "0" * 3}}, "counts sum to 0"),
        ({"segmentation": {"size": [32, 48], "counts": "\x7f"}}, "invalid character"),
        ({"segmentation": {"size": [32, 48], "counts": [32 * 48]}}, "zero area"),
        ({"category_id": 99}, "category_id 99 is not in 'categories'"),
        ({"image_id": 8}, "image_id 8 is not in 'images'"),
        ({"iscrowd": 2}, "iscrowd must be 0 or 1"),
        ({"area": "big"}, "area must be a number"),
        ({"category_id": "1"}, "category_id must be an integer"),
    ],
)
def test_bad_annotation_fails_or_is_skipped(tmp_path: Path, fields, reason):
    path = break_annotation(tmp_path, **fields)
    with pytest.raises(AnnotationError) as err:
        load_coco(path)
    assert "annotation 11" in str(err.value) and reason in str(err.value) and FIX in str(err.value)
    dataset = load_coco(path, on_error="skip")
    assert instances(dataset) == [] and len(dataset.images) == 1
    [skip] = dataset.skips
    assert skip.annotation_id == 11 and reason in skip.reason


def test_error_names_the_image_id_of_the_annotation(tmp_path: Path):
    path = break_annotation(tmp_path, segmentation="oops")
    with pytest.raises(AnnotationError, match=r"^image 7, annotation 11: "):
        load_coco(path)


def test_duplicate_annotation_ids_keep_the_first(tmp_path: Path):
    coco = one_image(tmp_path)
    coco.polygon(7, 1, [(1, 1), (9, 1), (9, 9)], ann_id=5)
    coco.polygon(7, 1, [(11, 1), (19, 1), (19, 9)], ann_id=5)
    path = coco.write()
    with pytest.raises(AnnotationError, match="image 7, annotation 5: duplicate annotation id 5"):
        load_coco(path)
    dataset = load_coco(path, on_error="skip")
    [inst] = instances(dataset)
    assert inst.polygons[0][0, 0] == 1
    assert [(s.annotation_id, "duplicate" in s.reason) for s in dataset.skips] == [(5, True)]


def test_duplicate_image_ids_drop_every_image_with_that_id(tmp_path: Path):
    coco = one_image(tmp_path)
    coco.image("other.png", image_id=7)
    coco.image("fine.png", image_id=8)
    coco.polygon(7, 1, [(1, 1), (9, 1), (9, 9)])
    path = coco.write()
    with pytest.raises(AnnotationError, match="image 7 .*duplicate image id 7"):
        load_coco(path)
    dataset = load_coco(path, on_error="skip")
    assert [image.image_id for image in dataset.images] == [8]
    assert [(s.image_id, s.file_name) for s in dataset.skips[:2]] == [(7, "img.png"), (7, "other.png")]
    # the annotation of image 7 cannot be attributed to either image: skipped too
    assert "image_id 7 is not in 'images'" in dataset.skips[2].reason


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"height": 0}, "height and width must be positive"),
        ({"width": -3}, "height and width must be positive"),
        ({"height": "600"}, "height must be an integer"),
        ({"file_name": None}, "file_name must be a string"),
        ({"file_name": "/etc/passwd"}, "absolute file_name is refused"),
        ({"file_name": "C:\\data\\x.png"}, "absolute file_name is refused"),
        ({"file_name": "../outside.png"}, "escapes the image root"),
        ({"file_name": "a/../../outside.png"}, "escapes the image root"),
        ({"file_name": "a\\..\\..\\outside.png"}, "escapes the image root"),
    ],
)
def test_bad_image_fails_or_skips_the_image(tmp_path: Path, fields, reason):
    coco = one_image(tmp_path)
    coco.image("fine.png", image_id=8)
    coco.polygon(7, 1, [(1, 1), (9, 1), (9, 9)])
    coco.images[0].update(fields)
    path = coco.write()
    with pytest.raises(AnnotationError) as err:
        load_coco(path)
    assert "image 7" in str(err.value) and reason in str(err.value)
    dataset = load_coco(path, on_error="skip")
    assert [image.image_id for image in dataset.images] == [8]
    assert dataset.skips[0].image_id == 7 and reason in dataset.skips[0].reason


def test_dot_dot_inside_the_root_is_fine(tmp_path: Path):
    coco = one_image(tmp_path)
    coco.images[0]["file_name"] = "sub/../img.png"
    [image] = load_coco(coco.write()).images
    assert resolve_image_path(coco.image_root, image).resolve() == (coco.image_root / "img.png").resolve()


@pytest.mark.parametrize("name", ["/abs/x.jpg", "../x.jpg", "a/../../x.jpg", "", "."])
def test_resolve_image_path_refuses_unsafe_names(tmp_path: Path, name: str):
    record = ImageRecord(image_id=12, file_name=name, height=1, width=1, instances=())
    with pytest.raises(AnnotationError, match=r"image 12 \(file_name"):
        resolve_image_path(tmp_path, record)


# ------------------------------------------------------------------------------------------ file level


def test_categories_problems_always_raise(tmp_path: Path):
    coco = one_image(tmp_path)
    coco.category(1, "again")
    with pytest.raises(AnnotationError, match="category id 1 appears twice"):
        load_coco(coco.write(), on_error="skip")


@pytest.mark.parametrize("category_id", [-1, 2**63])
@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_category_id_outside_0_to_int64_is_refused_naming_it(tmp_path: Path, category_id: int, on_error: str):
    # the manifest stores category ids as integers in 0..2**63-1; refused here, not after the whole build
    coco = one_image(tmp_path)
    coco.category(category_id, "unlabeled")
    with pytest.raises(AnnotationError) as err:
        load_coco(coco.write(), on_error=on_error)
    message = str(err.value)
    assert message.startswith(f"categories[1]: category id {category_id} ('unlabeled') is outside 0..2**63-1")
    assert "renumber it to an unused positive id" in message and "iscrowd=1" in message


def test_more_than_254_categories_is_refused(tmp_path: Path):
    coco = CocoFactory(tmp_path)
    for k in range(1, 256):
        coco.category(k)
    coco.image("x.png", write_pixels=False)
    with pytest.raises(AnnotationError, match="255 categories, at most 254"):
        load_coco(coco.write())


def test_not_json_or_not_coco(tmp_path: Path):
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        load_coco(broken)
    no_annotations = tmp_path / "images_only.json"
    no_annotations.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(AnnotationError, match="'annotations' must be a list"):
        load_coco(no_annotations)


def test_on_error_value_is_checked(tmp_path: Path):
    with pytest.raises(ValueError, match=r"on_error must be one of \('fail', 'skip'\)"):
        load_coco(one_image(tmp_path).write(), on_error="ignore")


def test_compressed_rle_counts_are_validated_like_pycocotools_reads_them(tmp_path: Path):
    # many shapes, so the string decoder sees long runs, negative deltas and multi-character numbers
    rng = np.random.default_rng(0)
    coco = one_image(tmp_path, height=70, width=90)
    masks = []
    for _ in range(20):
        mask = rng.random((70, 90)) < rng.uniform(0.01, 0.9)
        mask |= disk(70, 90, *rng.uniform(0, 70, 2), rng.uniform(3, 30))
        masks.append(mask)
        coco.rle(7, 1, mask)
    loaded = instances(load_coco(coco.write()))
    for inst, mask in zip(loaded, masks, strict=True):
        assert inst.rle["counts"] == compressed_rle(mask)["counts"].encode()
        np.testing.assert_array_equal(mask_utils.decode(inst.rle).astype(bool), mask)


# ------------------------------------------------------------------------------------------ id range


@pytest.mark.parametrize("image_id", [2**63 + 5, -(2**63) - 1])
def test_image_id_beyond_int64_fails_or_is_skipped_naming_it(tmp_path: Path, image_id: int):
    # the cache keeps image ids in int64 tables: a larger one is refused at load time, not by open_cache
    coco = one_image(tmp_path)
    coco.image("big.png", image_id=image_id, write_pixels=False)
    path = coco.write()
    with pytest.raises(AnnotationError) as err:
        load_coco(path)
    message = str(err.value)
    assert message.startswith(f"image {image_id}: id {image_id} is outside the 64-bit signed range")
    assert "renumber the image (its id and its annotations' image_id)" in message and FIX in message
    dataset = load_coco(path, on_error="skip")
    assert [image.image_id for image in dataset.images] == [7]
    [skip] = dataset.skips
    # a Skip records ids the manifest can hold: this one only in its reason
    assert (skip.image_id, skip.file_name) == (None, "big.png") and str(image_id) in skip.reason


@pytest.mark.parametrize("ann_id", [2**63, -(2**63) - 1])
def test_annotation_id_beyond_int64_fails_or_is_skipped_naming_it(tmp_path: Path, ann_id: int):
    path = break_annotation(tmp_path, id=ann_id)
    with pytest.raises(AnnotationError) as err:
        load_coco(path)
    message = str(err.value)
    assert message.startswith(f"image 7, annotation {ann_id}: annotation id {ann_id} is outside the 64-bit")
    assert "renumber the annotation" in message and FIX in message
    dataset = load_coco(path, on_error="skip")
    [skip] = dataset.skips
    assert (skip.image_id, skip.annotation_id) == (7, None) and str(ann_id) in skip.reason


def test_ids_at_the_int64_limits_load(tmp_path: Path):
    coco = one_image(tmp_path)
    coco.image("low.png", image_id=-(2**63), write_pixels=False)
    coco.images[0]["id"] = 2**63 - 1
    coco.polygon(2**63 - 1, 1, [(1, 1), (9, 1), (9, 9)], ann_id=-(2**63))
    coco.polygon(-(2**63), 1, [(1, 1), (9, 1), (9, 9)], ann_id=2**63 - 1)
    dataset = load_coco(coco.write())
    assert [image.image_id for image in dataset.images] == [2**63 - 1, -(2**63)]
    assert [inst.annotation_id for inst in instances(dataset)] == [-(2**63), 2**63 - 1]
