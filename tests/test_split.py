"""Train/val from one COCO file: `fastload cache build --split val=F --seed S` writes OUT/train and OUT/val.

The split is a pure function of (seed, image id): deterministic, unmoved by added images, disjoint and complete;
each split is an ordinary cache with the whole category map, equal to the cache of a COCO file holding only its
images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fastload import CpuLoader, open_cache
from fastload.build.build import build_cache
from fastload.build.split import TRAIN, assign, check_split, parse_split, split_draw, split_of
from fastload.cache.manifest import MANIFEST_NAME, load_manifest
from fastload.errors import CacheError, ConfigError
from fastload.tools.cli import main

VAL = {"val": 0.3}  # on the 18 sample photos with seed 0: 3 in val, 15 in train


# --- the pure split -------------------------------------------------------------------------------------------


def test_the_draw_is_a_fixed_function_of_seed_and_id():
    digest = hashlib.sha256(b"0:42").digest()
    assert split_draw(42, 0) == int.from_bytes(digest[:8], "big") / 2**64
    assert split_draw(42, 0) != split_draw(42, 1) and split_draw(42, 0) != split_draw(43, 0)
    assert 0 <= split_draw(-5, 3) < 1  # COCO ids are int64, negative ones too


def test_same_seed_same_split_other_seed_another():
    ids = list(range(1000))
    first = assign(ids, seed=0, fractions={"val": 0.1})
    assert assign(ids, seed=0, fractions={"val": 0.1}) == first
    assert assign(ids, seed=1, fractions={"val": 0.1}) != first


def test_adding_or_reordering_images_never_moves_the_others():
    fractions = {"val": 0.1, "test": 0.05}
    before = {i: split_of(i, seed=7, fractions=fractions) for i in range(0, 3000, 3)}
    more = list(range(3000))[::-1]  # two thirds new, in another order
    after = assign(more, seed=7, fractions=fractions)
    placed = {more[p]: name for name, positions in after.items() for p in positions}
    assert all(placed[i] == name for i, name in before.items())


def test_splits_are_disjoint_complete_and_near_their_fractions():
    ids = list(range(20000))
    parts = assign(ids, seed=0, fractions={"val": 0.1, "test": 0.05})
    assert list(parts) == [TRAIN, "val", "test"]
    positions = sorted(p for part in parts.values() for p in part)
    assert positions == list(range(len(ids)))  # each image once
    assert abs(len(parts["val"]) / len(ids) - 0.1) < 0.01
    assert abs(len(parts["test"]) / len(ids) - 0.05) < 0.01


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["val"], "write NAME=FRACTION"),
        (["val=x"], "write NAME=FRACTION"),
        (["val=0.1", "val=0.2"], "given twice"),
        (["train=0.1"], "not 'train'"),
        (["Val=0.1"], "lowercase"),
        (["val=0"], r"in \(0, 1\)"),
        (["val=1.5"], r"in \(0, 1\)"),
        (["val=0.6", "test=0.4"], "sum to 1"),
    ],
)
def test_bad_splits_are_named(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_split(items)


def test_check_split_keeps_the_order_given():
    assert list(check_split({"val": 0.1, "test": 0.2})) == ["val", "test"]


# --- the build: two ordinary caches ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split_build(tmp_path_factory, sample_coco, sample_images):
    out = tmp_path_factory.mktemp("split") / "cache"
    argv = ["cache", "build", "--coco", str(sample_coco), "--images", str(sample_images), "--out", str(out)]
    assert main([*argv, "--split", "val=0.3", "--seed", "0", "--no-progress"]) == 0
    return out


def _image_ids(cache_dir: Path) -> list[int]:
    opened = open_cache(cache_dir)
    return [opened.image_id(i) for i in range(len(opened))]


def test_split_build_writes_one_cache_per_split(split_build, sample_coco):
    assert sorted(p.name for p in split_build.iterdir()) == ["train", "val"]
    coco = json.loads(sample_coco.read_text())
    all_ids = [im["id"] for im in coco["images"]]
    train, val = _image_ids(split_build / "train"), _image_ids(split_build / "val")
    assert not set(train) & set(val) and sorted(train + val) == sorted(all_ids)  # disjoint and complete
    expected = assign(all_ids, seed=0, fractions=VAL)
    assert val == [all_ids[p] for p in expected["val"]] and len(val) == 3  # in COCO order
    assert train == [all_ids[p] for p in expected[TRAIN]]


def test_every_split_keeps_the_whole_category_map(split_build):
    train, val = open_cache(split_build / "train"), open_cache(split_build / "val")
    assert train.classes == val.classes and train.num_classes == val.num_classes == 4
    assert [c.train_id for c in val.manifest.categories] == [1, 2, 3]
    for name, opened in (("train", train), ("val", val)):
        assert opened.manifest.split is not None
        assert (opened.manifest.split.name, opened.manifest.split.fractions, opened.manifest.split.seed) == (
            name, (("val", 0.3),), 0,
        )  # fmt: skip


def test_a_split_is_the_cache_of_its_images_alone(split_build, sample_coco, sample_images, tmp_path):
    coco = json.loads(sample_coco.read_text())
    val_ids = set(_image_ids(split_build / "val"))
    coco["images"] = [im for im in coco["images"] if im["id"] in val_ids]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in val_ids]
    alone = tmp_path / "val.json"
    alone.write_text(json.dumps(coco))
    build_cache(coco=alone, images=sample_images, out=tmp_path / "val", progress=False)
    for shard in load_manifest(tmp_path / "val").shards:
        for name in (shard.file, shard.index_file, shard.dali_index):
            assert (tmp_path / "val" / name).read_bytes() == (split_build / "val" / name).read_bytes(), name


def test_the_loaders_read_a_split(split_build):
    with CpuLoader(split_build / "val", 2, size=(32, 32), device="cpu", num_workers=0) as loader:
        assert len(loader.dataset) == 3 and sum(len(b["index"]) for b in loader) == 3


def test_cache_info_names_the_split(split_build, capsys):
    assert main(["cache", "info", str(split_build / "val")]) == 0
    assert "split 'val' of a build with --split val=0.3 --seed 0" in capsys.readouterr().out


def test_a_plain_build_records_no_split(sample_cache):
    manifest = json.loads((sample_cache / MANIFEST_NAME).read_text())
    assert "split" not in manifest  # a plain manifest is what it always was: older readers read it as before
    assert load_manifest(sample_cache).split is None


def test_an_empty_split_is_refused_before_anything_is_written(sample_coco, sample_images, tmp_path):
    out = tmp_path / "cache"
    with pytest.raises(CacheError, match=r"puts none of the 18 images into \['val'\].*larger fraction or another --seed"):
        build_cache(coco=sample_coco, images=sample_images, out=out, split={"val": 0.1}, split_seed=1, progress=False)
    assert not out.exists()


def test_a_split_build_refuses_a_folder_holding_something_else(sample_coco, sample_images, tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match=r"refusing to build split caches .* \['notes.txt'\]"):
        build_cache(coco=sample_coco, images=sample_images, out=out, split=VAL, progress=False)


def test_seed_without_split_is_an_error(sample_coco, sample_images, tmp_path, capsys):
    argv = ["cache", "build", "--coco", str(sample_coco), "--images", str(sample_images), "--out", str(tmp_path / "c")]
    assert main([*argv, "--seed", "3"]) == 2
    assert "--seed is the seed of --split" in capsys.readouterr().err
