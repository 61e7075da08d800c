"""Cityscapes: masks equal Cityscapes' own json2labelImg / json2instanceImg; trainId mapping; bad input named."""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from fastload.build.cityscapes import load_cityscapes
from fastload.build.sources import stable_image_id
from fastload.build.synth_formats import write_cityscapes
from fastload.errors import AnnotationError

FRAME = "aachen_000000_000019"
# a tiny label table of our own (labels=): the reader's rules without cityscapesscripts
Label = namedtuple("Label", "name id trainId hasInstances")
TABLE = [
    Label("unlabeled", 0, 255, False),
    Label("road", 7, 0, False),
    Label("car", 26, 13, True),
    Label("caravan", 29, 255, True),
    Label("license plate", -1, -1, False),
]


def write_frame(root: Path, objects: list, *, height: int = 40, width: int = 60, frame: str = FRAME, city: str = "aachen", split="train") -> Path:
    folder = root / "gtFine" / split / city
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{frame}_gtFine_polygons.json"
    path.write_text(json.dumps({"imgHeight": height, "imgWidth": width, "objects": objects}))
    return path


def obj(label: str, polygon, **extra) -> dict:
    return {"label": label, "polygon": [list(p) for p in polygon], **extra}


# ------------------------------------------------------------------------------- the reader's own rules


def test_masks_by_the_table_file_order_groups_and_undrawn_labels(tmp_path):
    write_frame(tmp_path, [
        obj("road", [(0, 20), (59, 20), (59, 39), (0, 39)]),
        obj("car", [(5, 10), (20, 10), (20, 30), (5, 30)]),
        obj("car", [(30, 10), (45, 10), (45, 30), (30, 30)]),
        obj("car", [(40, 12), (50, 12), (50, 25), (40, 25)]),  # over the second car
        obj("cargroup", [(52, 0), (59, 0), (59, 8), (52, 8)]),
        obj("caravan", [(0, 0), (4, 0), (4, 4), (0, 4)]),  # hasInstances, trainId 255: ignore, never an instance
        obj("license plate", [(8, 20), (12, 20), (12, 22), (8, 22)]),  # never drawn: the car stays
        obj("car", [(10, 32), (15, 32), (15, 36), (10, 36)], deleted=1),
        obj("bus", [(10, 32), (15, 32), (15, 36), (10, 36)], deleted=1),  # deleted: its label is not looked at
    ])  # fmt: skip
    dataset = load_cityscapes(tmp_path, labels=TABLE)
    assert [(c.coco_id, c.name, c.train_id, c.isthing) for c in dataset.categories] == [(7, "road", 1, False), (26, "car", 2, True)]
    (image,) = dataset.images
    assert image.image_id == stable_image_id(FRAME)
    assert image.file_name == f"leftImg8bit/train/aachen/{FRAME}_leftImg8bit.png"
    labels = image.labels()
    sem, ins = labels.semantic, labels.instance
    assert sem[0, 30] == 255 and ins[0, 30] == 0  # unlabeled
    assert sem[35, 2] == 1 and ins[35, 2] == 0  # road: stuff
    assert sem[21, 10] == 2 and ins[21, 10] == 1  # the license plate is not drawn
    assert ins[20, 35] == 2 and ins[20, 45] == 3  # later on top
    assert sem[4, 55] == 255 and ins[4, 55] == 0  # a group: crowd
    assert sem[2, 2] == 255 and ins[2, 2] == 0  # caravan
    assert sem[34, 12] == 1  # the deleted car is not drawn
    assert [t.annotation_id for t in labels.instances] == [1, 2, 3]  # object indices in the file
    assert {t.category_id for t in labels.instances} == {26}
    assert set(np.unique(ins)) == {0, 1, 2, 3}
    crowd_class = load_cityscapes(tmp_path, labels=TABLE, crowd="class").images[0].labels()
    assert crowd_class.semantic[4, 55] == 2 and crowd_class.instance[4, 55] == 0


def test_a_hidden_thing_gets_no_id(tmp_path):
    write_frame(tmp_path, [
        obj("car", [(5, 5), (10, 5), (10, 10), (5, 10)]),
        obj("road", [(0, 0), (59, 0), (59, 39), (0, 39)]),  # over everything
        obj("car", [(30, 10), (45, 10), (45, 30), (30, 30)]),
    ])  # fmt: skip
    labels = load_cityscapes(tmp_path, labels=TABLE).images[0].labels()
    assert [t.annotation_id for t in labels.instances] == [2]
    assert set(np.unique(labels.instance)) == {0, 1}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (obj("bus", [(0, 0), (5, 0), (5, 5)]), r"label 'bus' is not in the Cityscapes label table"),
        (obj("car", [(0, 0)]), r"polygon has 1 point\(s\)"),
        ({"label": "car", "polygon": [[0, 0], [5, 0, 1], [5, 5]]}, r"list of \[x, y\] number pairs"),
        ({"label": "car", "polygon": [[0, 0], [5, True], [5, 5]]}, r"list of \[x, y\] number pairs"),
        ({"label": "car"}, r"list of \[x, y\] number pairs"),
        (obj("car", [(0, 0), (5, float("nan")), (5, 5)]), r"finite and within ±1.04858e\+06 px"),
        (obj("car", [(0, 0), (5e6, 0), (5, 5)]), r"finite and within"),
        (obj("car", [(0, 0), (5, 0), (5, 5)], deleted=2), r"deleted must be 0 or 1"),
        ({"label": 7, "polygon": [[0, 0], [5, 0], [5, 5]]}, r"label must be a string"),
    ],
)
def test_a_bad_object_is_named_or_skipped(tmp_path, bad, message):
    write_frame(tmp_path, [obj("road", [(0, 0), (59, 0), (59, 39), (0, 39)]), bad])
    with pytest.raises(AnnotationError, match=rf"image {stable_image_id(FRAME)} \(gtFine/train/aachen/{FRAME}_gtFine_polygons.json\), object 1 .*{message}.*--on-error skip"):
        load_cityscapes(tmp_path, labels=TABLE)
    dataset = load_cityscapes(tmp_path, labels=TABLE, on_error="skip")
    (skip,) = dataset.skips
    assert (skip.image_id, skip.annotation_id) == (stable_image_id(FRAME), 1)
    assert (dataset.images[0].labels().semantic == 1).all()  # the frame is kept without the object


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"cannot be read as JSON"),
        (json.dumps({"imgHeight": 0, "imgWidth": 60, "objects": []}), r"imgHeight x imgWidth 0 x 60 must be positive"),
        (json.dumps({"imgHeight": 2**21, "imgWidth": 60, "objects": []}), r"at most 1048576 per side"),
        (json.dumps({"imgHeight": "40", "imgWidth": 60, "objects": []}), r"imgHeight must be an integer"),
        (json.dumps({"imgHeight": 40, "imgWidth": 60}), r"'objects' list"),
    ],
)
def test_a_bad_file_is_named_or_skipped(tmp_path, text, message):
    write_frame(tmp_path, []).write_text(text)
    write_frame(tmp_path, [], frame="aachen_000001_000019")
    with pytest.raises(AnnotationError, match=rf"image {stable_image_id(FRAME)} .*{message}"):
        load_cityscapes(tmp_path, labels=TABLE)
    dataset = load_cityscapes(tmp_path, labels=TABLE, on_error="skip")
    assert [r.image_id for r in dataset.images] == [stable_image_id("aachen_000001_000019")]
    assert [s.image_id for s in dataset.skips] == [stable_image_id(FRAME)]


def test_the_source_sha256_comes_from_the_bytes_read_and_names_an_unreadable_file(tmp_path):
    import hashlib

    paths = [write_frame(tmp_path, [], frame=f"aachen_00000{k}_000019") for k in range(2)]
    want = hashlib.sha256()
    for path in paths:  # each file by its path under the root and its sha256, in file order
        want.update(f"{path.relative_to(tmp_path).as_posix()}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    assert load_cityscapes(tmp_path, labels=TABLE).source_sha256 == want.hexdigest()
    paths[0].unlink()
    paths[0].mkdir()  # a polygon file that cannot be read: under "skip" a skip, not an error at the manifest
    with pytest.raises(AnnotationError, match=rf"image {stable_image_id('aachen_000000_000019')} .*cannot be read as JSON"):
        load_cityscapes(tmp_path, labels=TABLE)
    dataset = load_cityscapes(tmp_path, labels=TABLE, on_error="skip")
    assert [s.image_id for s in dataset.skips] == [stable_image_id("aachen_000000_000019")]
    assert dataset.source_sha256 != want.hexdigest()


def test_folder_split_and_duplicate_frames(tmp_path):
    with pytest.raises(AnnotationError, match=r"no train polygon files .*pass the Cityscapes root"):
        load_cityscapes(tmp_path, labels=TABLE)
    with pytest.raises(ValueError, match="split must be one of"):
        load_cityscapes(tmp_path, split="training", labels=TABLE)
    write_frame(tmp_path, [], city="aachen")
    write_frame(tmp_path, [], city="bremen")
    with pytest.raises(AnnotationError, match="duplicate frame name"):
        load_cityscapes(tmp_path, labels=TABLE)
    assert load_cityscapes(tmp_path, labels=TABLE, on_error="skip").images == ()
    write_frame(tmp_path, [], split="val")
    assert len(load_cityscapes(tmp_path, split="val", labels=TABLE).images) == 1


def test_a_canvas_beyond_max_image_pixels_is_refused(tmp_path):
    from fastload.errors import ImageError

    write_frame(tmp_path, [], height=40, width=60)
    image = load_cityscapes(tmp_path, labels=TABLE).images[0]
    with pytest.raises(ImageError, match=r"40 x 60 is more than max_image_pixels \(2399\)"):
        image.labels(max_image_pixels=2399)


# --------------------------------------------------------------------------- against Cityscapes' scripts


@pytest.fixture(scope="module")
def cityscapes_scripts():
    reason = "cityscapesscripts (the `dev` extra) is not installed: the comparison with Cityscapes' own json2labelImg / json2instanceImg needs it"
    labels = pytest.importorskip("cityscapesscripts.helpers.labels", reason=reason)
    annotation = pytest.importorskip("cityscapesscripts.helpers.annotation", reason=reason)
    label_img = pytest.importorskip("cityscapesscripts.preparation.json2labelImg", reason=reason)
    instance_img = pytest.importorskip("cityscapesscripts.preparation.json2instanceImg", reason=reason)
    return labels, annotation.Annotation, label_img.createLabelImage, instance_img.createInstanceImage


def test_the_19_classes_and_their_train_ids(tmp_path, cityscapes_scripts):
    write_frame(tmp_path, [])
    dataset = load_cityscapes(tmp_path)
    names = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
             "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]  # fmt: skip
    assert [c.name for c in dataset.categories] == names
    assert [c.train_id for c in dataset.categories] == list(range(1, 20))
    by_name = cityscapes_scripts[0].name2label
    assert all(c.train_id == by_name[c.name].trainId + 1 and c.coco_id == by_name[c.name].id for c in dataset.categories)
    things = [c.name for c in dataset.categories if c.isthing]
    assert things == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def tricky_objects() -> list[dict]:
    """Float vertices, a bowtie, a 2-point polygon, border crossings, every kind of label the table has."""
    return [
        obj("sky", [(-5, -5), (70, -5), (70, 12.5), (-5, 14)]),
        obj("road", [(0, 24), (59, 22.25), (64, 45), (-3, 41)]),
        obj("ego vehicle", [(0, 37), (59, 37), (59, 39), (0, 39)]),
        obj("out of roi", [(0, 0), (3, 0), (3, 39), (0, 39)]),
        obj("polegroup", [(20, 2), (22, 2), (22, 20), (20, 20)]),
        obj("car", [(5.5, 18.5), (25.25, 16.75), (24, 30), (6.5, 31.5)]),
        obj("person", [(10, 15), (15, 15), (14, 35)]),
        obj("person", [(30, 12), (40, 25), (40, 12), (30, 25)]),  # a bowtie
        obj("rider", [(44, 10), (52, 30)]),  # 2 points: PIL draws a thin line
        obj("cargroup", [(30, 20), (45, 18), (44, 30.5), (31, 31)]),
        obj("persongroup", [(50, 2), (58, 2), (58, 9), (50, 9)]),
        obj("caravan", [(54, 30), (62, 30), (62, 36), (54, 36)]),
        obj("license plate", [(8, 26), (12, 26), (12, 28), (8, 28)]),
        obj("bicycle", [(2, 30), (9, 28), (8, 36)], deleted=1),
        obj("bicycle", [(1, 28), (9, 26), (8, 35)]),
        obj("car", [(-10, 33), (3, 33), (3, 60), (-10, 60)]),
    ]


def their_masks(path: Path, scripts) -> tuple[np.ndarray, np.ndarray]:
    """The trainId images json2labelImg and json2instanceImg draw (their ``create*Image``, before they save it:
    json2instanceImg's "I"-mode PNG no longer saves with Pillow 13, "cannot write mode I as PNG")."""
    _, annotation_type, create_label, create_instance = scripts
    annotation = annotation_type()
    annotation.fromJsonFile(str(path))
    label = np.asarray(create_label(annotation, "trainIds"))
    instance = np.asarray(create_instance(annotation, "trainIds")).astype(np.int64)
    assert label.dtype == np.uint8 and label.shape == instance.shape == (annotation.imgHeight, annotation.imgWidth)
    return label, instance


def check_equal_to_theirs(image, theirs: tuple[np.ndarray, np.ndarray], crowd_class, table) -> int:
    """Assert the masks equal Cityscapes' (fastload id = trainId + 1) and return the number of crowd pixels."""
    label, instance = theirs
    mine, ignore = crowd_class.labels(), image.labels()
    expected = np.where(label == 255, 255, label.astype(np.int64) + 1)
    np.testing.assert_array_equal(mine.semantic, expected)  # crowd="class": json2labelImg exactly
    # crowd="ignore": the same but on group pixels (a thing's trainId without an instance number), which are 255
    thing_train_ids = [label.trainId for label in table.labels if label.hasInstances and 0 <= label.trainId < 255]
    group = np.isin(instance, thing_train_ids)
    np.testing.assert_array_equal(ignore.semantic, np.where(group, 255, expected))
    # instances: the same pixel sets, one to one; ids 1..N in file order, theirs trainId * 1000 + k per class
    for labels in (mine, ignore):
        np.testing.assert_array_equal(labels.instance > 0, instance >= 1000)
        pairs = {(int(a), int(b)) for a, b in zip(labels.instance[instance >= 1000], instance[instance >= 1000], strict=True)}
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) == len(labels.instances)
        assert all(labels.semantic[labels.instance == a][0] == b // 1000 + 1 for a, b in pairs)
        assert sorted(a for a, _ in pairs) == list(range(1, len(labels.instances) + 1))
    return int(group.sum())


def test_tricky_polygons_equal_cityscapes_scripts(tmp_path, cityscapes_scripts):
    path = write_frame(tmp_path, tricky_objects())
    image = load_cityscapes(tmp_path).images[0]
    crowd_class = load_cityscapes(tmp_path, crowd="class").images[0]
    crowd_pixels = check_equal_to_theirs(image, their_masks(path, cityscapes_scripts), crowd_class, cityscapes_scripts[0])
    assert crowd_pixels > 0
    assert [t.annotation_id for t in image.labels().instances] == [5, 6, 7, 8, 14, 15]


def test_synthetic_scenes_equal_cityscapes_scripts(tmp_path, cityscapes_scripts):
    files = write_cityscapes(out=tmp_path / "cs", n=6, size=(96, 160), seed=5)
    plain, crowd_class = files.load(), files.load(crowd="class")
    total = 0
    for image, other in zip(plain.images, crowd_class.images, strict=True):
        path = tmp_path / "cs" / "gtFine" / "train" / image.file_name.split("/")[2] / image.file_name.split("/")[3].replace("leftImg8bit.png", "gtFine_polygons.json")
        total += check_equal_to_theirs(image, their_masks(path, cityscapes_scripts), other, cityscapes_scripts[0])
    assert total > 0  # the scenes hold crowds, the only pixels where the two crowd policies differ
