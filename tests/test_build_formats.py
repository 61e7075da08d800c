"""Synthetic panoptic and Cityscapes data sets: their layouts, and the two readers agreeing on the same scenes;
the COCO instances path in the common label type."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fastload.build.coco import load_coco
from fastload.build.coco_instances import from_coco
from fastload.build.raster import rasterize_image
from fastload.build.segment_png import decode_segment_ids
from fastload.build.sources import Thing, labels_from_regions
from fastload.build.synth_formats import (
    CITIES,
    synth_scene,
    write_cityscapes,
    write_panoptic,
    write_synth_format,
)
from fastload.build.tables import instance_table

SIZE = (72, 128)


def test_panoptic_layout(tmp_path):
    files = write_panoptic(out=tmp_path, n=3, size=SIZE, seed=2)
    assert (files.annotations, files.png_dir, files.image_root) == (tmp_path / "panoptic.json", tmp_path / "panoptic", tmp_path / "images")
    document = json.loads(files.annotations.read_text())
    assert [i["id"] for i in document["images"]] == [1, 2, 3]
    assert {(c["name"], c["isthing"]) for c in document["categories"]} >= {("car", 1), ("road", 0), ("sky", 0)}
    for image, annotation in zip(document["images"], document["annotations"], strict=True):
        assert (files.image_root / image["file_name"]).is_file()
        assert cv2.imread(str(files.image_root / image["file_name"])).shape == (*SIZE, 3)
        ids = decode_segment_ids((files.png_dir / annotation["file_name"]).read_bytes(), *SIZE, max_image_pixels=10**6, where="")
        for segment in annotation["segments_info"]:  # area and bbox as COCO writes them, from the PNG
            rows, cols = np.nonzero(ids == segment["id"])
            assert segment["area"] == rows.size
            if rows.size:
                assert segment["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
        assert set(np.unique(ids)) <= {0} | {s["id"] for s in annotation["segments_info"]}


def test_cityscapes_layout(tmp_path):
    files = write_cityscapes(out=tmp_path, n=3, size=SIZE, seed=2)
    assert files.image_root == files.annotations == tmp_path and files.png_dir is None
    for k in range(3):
        city = CITIES[k % len(CITIES)]
        frame = f"{city}_{k:06d}_000019"
        document = json.loads((tmp_path / "gtFine" / "train" / city / f"{frame}_gtFine_polygons.json").read_text())
        assert (document["imgHeight"], document["imgWidth"]) == SIZE
        labels = [o["label"] for o in document["objects"]]
        assert labels[:4] == ["sky", "building", "sidewalk", "road"]
        assert all(isinstance(v, int) for o in document["objects"] for p in o["polygon"] for v in p)
        picture = cv2.imread(str(tmp_path / "leftImg8bit" / "train" / city / f"{frame}_leftImg8bit.png"))
        assert picture.shape == (*SIZE, 3)


def test_the_writers_are_deterministic(tmp_path):
    a = write_panoptic(out=tmp_path / "a", n=2, size=SIZE, seed=4)
    b = write_panoptic(out=tmp_path / "b", n=2, size=SIZE, seed=4)
    c = write_panoptic(out=tmp_path / "c", n=2, size=SIZE, seed=5)
    assert a.annotations.read_bytes() == b.annotations.read_bytes() != c.annotations.read_bytes()
    assert (a.png_dir / "000001.png").read_bytes() == (b.png_dir / "000001.png").read_bytes()
    first = synth_scene(4, 0, SIZE)
    assert [o.label for o in first] == [o.label for o in synth_scene(4, 0, SIZE)]
    with pytest.raises(ValueError, match="format must be one of"):
        write_synth_format("coco-ish", out=tmp_path, n=1)
    with pytest.raises(ValueError, match=r"size\[0\] must be an integer in \[16, 16384\], got 8"):
        write_synth_format("panoptic", out=tmp_path, n=1, size=(8, 8))


def test_panoptic_and_cityscapes_of_the_same_scenes_agree_exactly(tmp_path):
    pytest.importorskip("cityscapesscripts.helpers.labels", reason="reading Cityscapes needs cityscapesscripts' label table (the `dev` extra)")
    n = 8
    panoptic = write_synth_format("panoptic", out=tmp_path / "p", n=n, size=SIZE, seed=9)
    cityscapes = write_synth_format("cityscapes", out=tmp_path / "c", n=n, size=SIZE, seed=9)
    seen = {"void": 0, "crowd": 0, "things": 0, "stuff": 0}
    for crowd in ("ignore", "class"):
        p, c = panoptic.load(crowd=crowd), cityscapes.load(crowd=crowd)
        assert len(p.images) == len(c.images) == n and not p.skips and not c.skips
        to_c = {cat.train_id: next(o.train_id for o in c.categories if o.name == cat.name) for cat in p.categories}
        lut = np.full(256, 255, np.uint8)
        lut[list(to_c)] = list(to_c.values())
        frames = {int(r.file_name.split("_")[-3]): r for r in c.images}  # Cityscapes' order is (city, frame)
        for k, image in enumerate(p.images):
            mine, theirs = image.labels(), frames[k].labels()
            np.testing.assert_array_equal(lut[mine.semantic], theirs.semantic)
            np.testing.assert_array_equal(mine.instance, theirs.instance)
            keep = ("id", "bbox", "area", "centre")
            assert [{f: r[f] for f in keep} for r in mine.table()] == [{f: r[f] for f in keep} for r in theirs.table()]
            assert [to_c[t.train_id] for t in mine.instances] == [t.train_id for t in theirs.instances]
            stuff = np.isin(mine.semantic, [cat.train_id for cat in p.categories if not cat.isthing])
            assert (mine.instance[stuff] == 0).all()
            if crowd == "ignore":  # crowds are 255: every other thing pixel belongs to an instance
                assert (mine.instance[~stuff & (mine.semantic != 255)] > 0).all()
            seen["void"] += int((mine.semantic == 255).sum())
            seen["things"] += len(mine.instances)
            seen["stuff"] += int(stuff.sum())
            scene = synth_scene(9, k, SIZE)
            seen["crowd"] += sum(o.crowd for o in scene)
    assert all(seen.values()), seen  # the scenes hold void, crowds, things and stuff


def test_labels_from_regions_numbers_visible_things_in_region_order():
    regions = np.array([[0, 1, 1], [3, 3, 2]])
    things = [None, Thing(10, 1, 1), Thing(11, 1, 1), Thing(12, 2, 2), Thing(13, 2, 2)]  # region 4: no pixel
    labels = labels_from_regions(regions, np.array([255, 1, 1, 2, 2], np.uint8), things)
    assert labels.instance.tolist() == [[0, 1, 1], [3, 3, 2]]
    assert [t.annotation_id for t in labels.instances] == [10, 11, 12]
    assert labels.semantic.tolist() == [[255, 1, 1], [2, 2, 1]]
    with pytest.raises(ValueError, match="region map holds index 5"):
        labels_from_regions(np.array([[5]]), np.zeros(5, np.uint8), [None] * 5)


def test_the_coco_instances_path_in_the_common_type(sample_coco):
    dataset = load_coco(sample_coco)
    labels = from_coco(dataset)
    assert [(c.coco_id, c.name, c.train_id) for c in labels.categories] == [(c.coco_id, c.name, c.train_id) for c in dataset.categories]
    assert labels.thing_train_ids == tuple(c.train_id for c in dataset.categories)
    for record, image in list(zip(dataset.images, labels.images, strict=True))[:4]:
        raster, mine = rasterize_image(record), image.labels()
        np.testing.assert_array_equal(mine.semantic, raster.semantic)
        np.testing.assert_array_equal(mine.instance, raster.instance)
        assert mine.table() == instance_table(raster)  # the rows the COCO path always stored, nothing added
        assert json.loads(json.dumps(image.summary()))["labels"]["format"] == "coco_instances"


def test_image_labels_boxes_are_the_tight_boxes_of_each_instance():
    from fastload.build.sources import ImageLabels

    rng = np.random.default_rng(5)
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(1, 12, size=2))
        ids = rng.integers(0, 5, size=(height, width))
        present = [v for v in np.unique(ids) if v]
        lut = np.zeros(5, np.int32)
        lut[present] = np.arange(1, len(present) + 1)
        instance = lut[ids]
        labels = ImageLabels(np.zeros((height, width), np.uint8), instance, tuple(Thing(k, 1, 1) for k in present))
        expected = []
        for k in range(1, len(present) + 1):
            rows, cols = np.nonzero(instance == k)
            expected.append([cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1])
        np.testing.assert_array_equal(labels.boxes, np.array(expected, np.int64).reshape(-1, 4))
