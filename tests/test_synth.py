"""The synthetic COCO generator: valid, deterministic, textured, concave and overlapping."""

from __future__ import annotations

import json
from itertools import combinations

import cv2
import numpy as np
import pytest
import shapely

from fastload.build.coco import load_coco
from fastload.build.synth import synth_coco


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    synth_coco(out=tmp_path / "a", n=6, size=(48, 64), instances=(2, 5), seed=3, workers=1)
    synth_coco(out=tmp_path / "b", n=6, size=(48, 64), instances=(2, 5), seed=3, workers=2)
    synth_coco(out=tmp_path / "c", n=6, size=(48, 64), instances=(2, 5), seed=4, workers=1)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a")["annotations.json"] != _files(tmp_path / "c")["annotations.json"]


def test_output_is_valid_coco_with_sparse_category_ids(synth_root):
    dataset = load_coco(synth_root / "annotations.json", on_error="fail")
    assert len(dataset.images) == 24 and not dataset.skips
    assert [(c.coco_id, c.train_id) for c in dataset.categories] == [(3, 1), (8, 2), (21, 3), (42, 4)]
    assert all(2 <= len(r.instances) <= 6 for r in dataset.images)
    assert all((r.height, r.width) == (96, 128) for r in dataset.images)


def test_images_are_textured_jpegs(synth_root):
    for path in sorted((synth_root / "images").glob("*.jpg"))[:4]:
        data = path.read_bytes()
        assert data[:3] == b"\xff\xd8\xff"
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (96, 128, 3)
        assert image.std() > 20  # not a flat colour
        assert np.abs(np.diff(image.astype(np.int16), axis=1)).mean() > 3  # fine grain, not only gradients


def test_polygons_are_inside_concave_and_overlap(synth_root):
    coco = json.loads((synth_root / "annotations.json").read_text())
    polygons: dict[int, list[shapely.Polygon]] = {}
    for ann in coco["annotations"]:
        xy = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
        assert (xy >= 0).all() and (xy[:, 0] <= 128).all() and (xy[:, 1] <= 96).all()
        polygons.setdefault(ann["image_id"], []).append(shapely.Polygon(xy))
    shapes = [p for ps in polygons.values() for p in ps]
    concave = sum(p.area < 0.95 * p.convex_hull.area for p in shapes)
    overlapping = sum(a.intersection(b).area > 1 for ps in polygons.values() for a, b in combinations(ps, 2))
    assert concave > len(shapes) // 2
    assert overlapping >= 5


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ({"n": -1}, r"n must be a non-negative integer"),
        ({"n": True}, r"n must be .* got True"),  # a bool is no count
        ({"size": (4, 8)}, r"size\[0\] must be an integer in \[8, 16384\], got 4"),
        ({"size": (8,)}, r"size must be two integers"),
        ({"size": (32, 32.5)}, r"size\[1\] must be"),
        ({"instances": (3, 2)}, r"instances\[1\] must be an integer in \[3, 32767\], got 2"),
        ({"seed": -1}, r"seed must be a non-negative integer"),
        ({"workers": 0}, r"workers must be a positive integer"),
    ],
)
def test_bad_arguments_are_refused_naming_them_before_anything_is_written(tmp_path, changed, message):
    arguments = {"n": 2, "size": (16, 16), "instances": (1, 2), "seed": 0, "workers": 1, **changed}
    with pytest.raises(ValueError, match=message):
        synth_coco(out=tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()
