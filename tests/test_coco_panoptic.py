"""COCO panoptic: segment ids decoded from the PNG by the formula, masks per segment kind, every bad input named."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from fastload.build.coco_panoptic import load_coco_panoptic
from fastload.build.segment_png import decode_segment_ids, segment_ids_to_bgr
from fastload.build.sources import stable_image_id
from fastload.errors import AnnotationError, ImageError

CATEGORIES = [
    {"id": 7, "name": "road", "isthing": 0},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 12, "name": "person", "isthing": 1},
]  # train ids by id order: car 1, road 2, person 3
CAR, ROAD, PERSON = 1, 2, 3


def write_dataset(root: Path, ids: np.ndarray, segments: list[dict], *, image_id=5, categories=None, edit=None) -> tuple[Path, Path]:
    """One image: the PNG of ``ids`` (uint32 (H, W)) and its panoptic JSON; ``edit(document)`` breaks a field."""
    png_dir = root / "png"
    png_dir.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(png_dir / "a.png"), segment_ids_to_bgr(ids))
    height, width = ids.shape
    document = {
        "images": [{"id": image_id, "file_name": "a.jpg", "height": height, "width": width}],
        "annotations": [{"image_id": image_id, "file_name": "a.png", "segments_info": segments}],
        "categories": CATEGORIES if categories is None else categories,
    }
    if edit is not None:
        edit(document)
    path = root / "panoptic.json"
    path.write_text(json.dumps(document))
    return path, png_dir


def seg(segment_id: int, category_id: int, iscrowd: int = 0) -> dict:
    return {"id": segment_id, "category_id": category_id, "iscrowd": iscrowd, "area": 0, "bbox": [0, 0, 0, 0]}


def scene() -> tuple[np.ndarray, list[dict]]:
    """8 x 10: void column 0, road below, car (B channel only), person over it, a crowd, a listed absent segment."""
    ids = np.zeros((8, 10), dtype=np.uint32)
    ids[:, 1:] = 0x000102  # road: R=2, G=1
    ids[1:4, 2:6] = 0x030000  # car: B only (an RGB/BGR mix-up cannot decode it)
    ids[2:4, 4:7] = 0x00FF00  # person: G only
    ids[5:7, 6:9] = 0x123456  # crowd of cars
    segments = [seg(0x030000, 3), seg(0x000102, 7), seg(0x777777, 12), seg(0x00FF00, 12), seg(0x123456, 3, iscrowd=1)]
    return ids, segments


def test_decoding_is_the_id_formula_on_every_channel(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1 << 24, size=(37, 53), dtype=np.uint32)
    ids[0, :3] = [0xFF0000, 0x00FF00, 0x0000FF]
    bgr = segment_ids_to_bgr(ids)
    assert cv2.imwrite(str(tmp_path / "x.png"), bgr)
    data = (tmp_path / "x.png").read_bytes()
    decoded = decode_segment_ids(data, 37, 53, max_image_pixels=10**8, where="x")
    assert decoded.dtype == np.uint32
    # the formula on the RGB pixels a reader of the file sees (cv2 gives BGR: flip it back)
    rgb = cv2.imread(str(tmp_path / "x.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1].astype(np.uint32)
    np.testing.assert_array_equal(decoded, rgb[:, :, 0] + 256 * rgb[:, :, 1] + 256**2 * rgb[:, :, 2])
    np.testing.assert_array_equal(decoded, ids)
    assert decoded[0, :3].tolist() == [0xFF0000, 0x00FF00, 0x0000FF]


def test_masks_void_stuff_things_crowd(tmp_path):
    ids, segments = scene()
    dataset = load_coco_panoptic(*write_dataset(tmp_path, ids, segments))
    assert [(c.coco_id, c.name, c.train_id, c.isthing) for c in dataset.categories] == [
        (3, "car", 1, True), (7, "road", 2, False), (12, "person", 3, True)
    ]  # fmt: skip
    assert dataset.thing_train_ids == (1, 3)
    labels = dataset.images[0].labels()
    expected_semantic = np.select(
        [ids == 0, ids == 0x000102, ids == 0x030000, ids == 0x00FF00, ids == 0x123456], [255, ROAD, CAR, PERSON, 255]
    )
    np.testing.assert_array_equal(labels.semantic, expected_semantic)
    assert labels.semantic.dtype == np.uint8 and labels.instance.dtype == np.int32
    # things 1..N in segments_info order; the absent person (0x777777) gets no id; stuff, void, crowd: 0
    np.testing.assert_array_equal(labels.instance, np.select([ids == 0x030000, ids == 0x00FF00], [1, 2], 0))
    assert [(t.annotation_id, t.category_id, t.train_id) for t in labels.instances] == [(0x030000, 3, CAR), (0x00FF00, 12, PERSON)]
    rows = labels.table()
    assert [(r["id"], r["annotation_id"], r["train_id"], r["area"], r["bbox"]) for r in rows] == [
        (1, 0x030000, CAR, 3 * 4 - 2 * 2, [2, 1, 4, 3]),
        (2, 0x00FF00, PERSON, 2 * 3, [4, 2, 3, 2]),
    ]  # rows are thing instances (never crowd, never stuff): they carry no iscrowd field


def test_crowd_class_policy_and_background_category(tmp_path):
    ids, segments = scene()
    categories = [*CATEGORIES, {"id": 0, "name": "background-ish", "isthing": 0}]
    ids[7, 1:] = 99
    segments.append(seg(99, 0))
    dataset = load_coco_panoptic(*write_dataset(tmp_path, ids, segments, categories=categories), crowd="class")
    labels = dataset.images[0].labels()
    assert (labels.semantic[ids == 0x123456] == CAR).all()  # the crowd keeps its class
    assert (labels.instance[ids == 0x123456] == 0).all()  # and is never an instance
    assert (labels.semantic[ids == 99] == 0).all()  # a background category's segment is background
    assert [c.name for c in dataset.categories] == ["car", "road", "person"]
    with pytest.raises(ValueError, match="crowd must be one of"):
        load_coco_panoptic(tmp_path / "panoptic.json", tmp_path / "png", crowd="keep")


def test_string_image_ids_are_stable_hashes(tmp_path):
    ids, segments = scene()
    dataset = load_coco_panoptic(*write_dataset(tmp_path, ids, segments, image_id="aachen_000000_000019"))
    assert dataset.images[0].image_id == stable_image_id("aachen_000000_000019")
    assert 0 <= dataset.images[0].image_id < 2**63


def test_records_pickle_and_summarise(tmp_path):
    ids, segments = scene()
    image = load_coco_panoptic(*write_dataset(tmp_path, ids, segments)).images[0]
    again = pickle.loads(pickle.dumps(image))  # records travel to the writer's worker processes
    np.testing.assert_array_equal(again.labels().semantic, image.labels().semantic)
    summary = json.loads(json.dumps(image.summary()))
    assert summary["labels"]["png_bytes"] == (tmp_path / "png" / "a.png").stat().st_size


# ------------------------------------------------------------------------------------------- bad input


def render_error(tmp_path, ids, segments, **kw):
    dataset = load_coco_panoptic(*write_dataset(tmp_path, ids, segments, **kw))
    return dataset.images[0]


def test_an_unlisted_id_is_named(tmp_path):
    ids, segments = scene()
    ids[0, 0] = 0x0A0B0C
    image = render_error(tmp_path, ids, segments)
    with pytest.raises(AnnotationError, match=r"image 5 .*a\.png.*segment ids 658188 \(1 px\).*not in the annotation's segments_info"):
        image.labels()


def test_a_png_of_another_size_is_named(tmp_path):
    ids, segments = scene()
    image = render_error(tmp_path, ids, segments, edit=lambda d: d["images"][0].update(height=9))
    with pytest.raises(ImageError, match=r"image 5 .*the PNG is 8 x 10 .*the image record says 9 x 10"):
        image.labels()


def test_a_missing_png_is_named(tmp_path):
    ids, segments = scene()
    image = render_error(tmp_path, ids, segments)
    (tmp_path / "png" / "a.png").unlink()
    with pytest.raises(ImageError, match=r"image 5 \(file_name 'a.jpg'\), panoptic PNG .*a\.png.*cannot be read"):
        image.labels()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["annotations"][0]["segments_info"][0].update(category_id=44), r"segment 196608.*category_id 44 is not in 'categories'"),
        (lambda d: d["annotations"][0]["segments_info"].append(seg(0x000102, 7)), r"segment 258.*duplicate segment id 258"),
        (lambda d: d["annotations"][0]["segments_info"].append(seg(1 << 24, 7)), r"id 16777216 is outside 1..16777215"),
        (lambda d: d["annotations"][0]["segments_info"].append(seg(0, 7)), r"id 0 is outside"),
        (lambda d: d["annotations"][0]["segments_info"][1].update(iscrowd=2), r"iscrowd must be 0 or 1"),
        (lambda d: d["annotations"][0].update(file_name="../x.png"), r"PNG file_name '../x.png'.*escapes"),
        (lambda d: d["annotations"][0].update(image_id=6), r"image_id 6 is not in 'images'"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])), r"image 5 .*2 panoptic annotations for one image"),
        (lambda d: d["annotations"].clear(), r"image 5 .*has no panoptic annotation"),
        (lambda d: d["images"].append(dict(d["images"][0])), r"duplicate image id"),
        (lambda d: d["images"][0].update(id=2**63), r"outside the 64-bit signed range"),
        (lambda d: d["images"][0].update(file_name="/etc/a.jpg"), r"absolute file_name"),
    ],
)
def test_bad_records_are_named_and_skippable(tmp_path, edit, message):
    ids, segments = scene()
    path, png_dir = write_dataset(tmp_path, ids, segments, edit=edit)
    with pytest.raises(AnnotationError, match=message):
        load_coco_panoptic(path, png_dir)
    skipped = load_coco_panoptic(path, png_dir, on_error="skip")
    assert skipped.images == () and skipped.skips
    assert any(s.image_id in (5, None) for s in skipped.skips)


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        ([{"id": 3, "name": "car"}], r"isthing must be 0 or 1"),
        ([{"id": 3, "name": "car", "isthing": 1}, {"id": 3, "name": "bus", "isthing": 1}], r"category id 3 appears twice"),
        ([{"id": -1, "name": "void", "isthing": 0}], r"outside 0..2\*\*63-1"),
    ],
)
def test_bad_categories_always_raise(tmp_path, categories, message):
    ids, segments = scene()
    path, png_dir = write_dataset(tmp_path, ids, segments, categories=categories)
    for on_error in ("fail", "skip"):
        with pytest.raises(AnnotationError, match=message):
            load_coco_panoptic(path, png_dir, on_error=on_error)


def png_with_header(width: int, height: int) -> bytes:
    """A small real PNG whose IHDR is rewritten to declare another size (its CRC left stale)."""
    ok, data = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    assert ok
    data = bytearray(data.tobytes())
    struct.pack_into(">II", data, 16, width, height)
    return bytes(data)


def test_a_huge_header_is_refused_before_decoding(tmp_path):
    ids, segments = scene()
    image = render_error(tmp_path, ids, segments)
    (tmp_path / "png" / "a.png").write_bytes(png_with_header(100_000, 100_000))
    with pytest.raises(ImageError, match=r"header declares 100000 x 100000 = 10000000000 pixels, more than max_image_pixels \(100000000\); refused before decoding"):
        image.labels()
    (tmp_path / "png" / "a.png").write_bytes(png_with_header(10, 8))  # the record's size, a lying header
    with pytest.raises(ImageError, match="max_image_pixels \\(79\\)"):
        image.labels(max_image_pixels=79)


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((8, 10, 4), np.uint8), r"decodes to 4 channel\(s\) of uint8"),
        (np.zeros((8, 10, 3), np.uint16), r"decodes to 3 channel\(s\) of uint16"),
        (np.zeros((8, 10), np.uint8), r"decodes to 1 channel\(s\) of uint8"),
    ],
)
def test_png_that_is_not_8_bit_rgb_is_refused(tmp_path, pixels, message):
    ids, segments = scene()
    image = render_error(tmp_path, ids, segments)
    assert cv2.imwrite(str(tmp_path / "png" / "a.png"), pixels)
    with pytest.raises(ImageError, match=message):
        image.labels()


def test_not_a_png_or_truncated(tmp_path):
    ids, segments = scene()
    image = render_error(tmp_path, ids, segments)
    png = tmp_path / "png" / "a.png"
    data = png.read_bytes()
    png.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        image.labels()
    assert cv2.imwrite(str(tmp_path / "png" / "b.jpg"), np.zeros((8, 10, 3), np.uint8))
    png.write_bytes((tmp_path / "png" / "b.jpg").read_bytes())
    with pytest.raises(ImageError, match="not a PNG file"):
        image.labels()


def test_a_symlink_out_of_the_png_folder_is_refused(tmp_path):
    ids, segments = scene()
    image = render_error(tmp_path, ids, segments)
    outside = tmp_path / "elsewhere.png"
    (tmp_path / "png" / "a.png").rename(outside)
    (tmp_path / "png" / "a.png").symlink_to(outside)
    with pytest.raises(AnnotationError, match="symlink leads outside"):
        image.labels()
