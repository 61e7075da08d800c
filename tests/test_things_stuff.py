"""Things and stuff in the cache (issue 17, the build side): COCO panoptic and Cityscapes caches, ``things:`` for
COCO instances, the manifest's new fields (read, validated, absent from older caches), verify's check, and the
byte identity of COCO caches with the path they were built by before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import fastload
from fastload.build.build import build_cache
from fastload.build.coco import load_coco
from fastload.build.raster import rasterize_image
from fastload.build.synth_formats import write_cityscapes, write_panoptic
from fastload.build.tables import instance_table
from fastload.build.writer import check_done_record
from fastload.cache.config import CacheConfig
from fastload.cache.format import encode_label, encode_meta
from fastload.cache.manifest import load_manifest
from fastload.cache.verify import instances_off_things, verify_cache
from fastload.errors import AnnotationError, CacheError, ConfigError, ImageError
from fastload.samples import open_cache
from fastload.tools.cache_commands import format_info

SIZE = (48, 80)
N = 5


def _needs_cityscapesscripts() -> None:
    pytest.importorskip("cityscapesscripts.helpers.labels", reason="reading Cityscapes needs its label table (the `dev` extra)")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """Per format, a data set (COCO panoptic; Cityscapes, val split: the same scenes) built into a cache, and the
    reader's `LabelDataset` of it; built on first use."""
    root = tmp_path_factory.mktemp("formats")
    config = {"samples_per_shard": 2}

    class Lazy(dict):
        def __missing__(self, fmt: str):
            if fmt == "panoptic":
                files = write_panoptic(out=root / "p", n=N, size=SIZE, seed=11)
                build_cache(panoptic=files.annotations, panoptic_masks=files.png_dir, images=files.image_root,
                            out=root / "pc", config=config, progress=False)  # fmt: skip
                self[fmt] = (root / "pc", files.load())
            else:
                files = write_cityscapes(out=root / "c", n=N, size=SIZE, seed=11, split="val")
                build_cache(cityscapes=files.annotations, cityscapes_split="val", out=root / "cc", config=config, progress=False)
                self[fmt] = (root / "cc", files.load(split="val"))
            return self[fmt]

    return Lazy()


@pytest.fixture
def formats(built, request):
    """``built``, skipping a Cityscapes case where cityscapesscripts is missing."""
    if request.node.callspec.params.get("fmt") == "cityscapes":
        _needs_cityscapesscripts()
    return built


# ------------------------------------------------------------------------------------------------ the caches


@pytest.mark.parametrize("fmt", ["panoptic", "cityscapes"])
def test_stuff_is_semantic_only_and_the_table_lists_things_only(formats, fmt):
    cache_dir, dataset = formats[fmt]
    manifest = load_manifest(cache_dir)
    assert manifest.thing_train_ids == dataset.thing_train_ids
    assert set(manifest.stuff_train_ids) == {c.train_id for c in dataset.categories if not c.isthing} != set()
    assert manifest.source_format == {"panoptic": "coco_panoptic", "cityscapes": "cityscapes"}[fmt]
    stuff_pixels = 0
    with open_cache(cache_dir) as cache:
        assert len(cache) == N
        for k, image in enumerate(dataset.images):  # the reader's order is the cache's
            sample, labels = cache[k], image.labels()
            np.testing.assert_array_equal(sample["semantic"], labels.semantic)
            np.testing.assert_array_equal(sample["instance"], labels.instance)
            stuff = np.isin(sample["semantic"], manifest.stuff_train_ids)
            stuff_pixels += int(stuff.sum())
            assert (sample["instance"][stuff] == 0).all()  # no instance: no centre of its own, no offsets
            assert not sample["offset"][:, stuff].any()
            rows = sample["meta"]["instances"]
            assert [r["id"] for r in rows] == list(range(1, int(sample["instance"].max()) + 1))
            assert {r["train_id"] for r in rows} <= set(manifest.thing_train_ids)
            assert all("iscrowd" not in r for r in rows)
    assert stuff_pixels > 0
    assert verify_cache(cache_dir).ok


@pytest.mark.parametrize("fmt", ["panoptic", "cityscapes"])
def test_the_manifest_counts_each_class_pixels(formats, fmt):
    cache_dir, _ = formats[fmt]
    manifest = load_manifest(cache_dir)
    with open_cache(cache_dir) as cache:
        counts = sum(np.bincount(cache.labels(i)[0].ravel(), minlength=256) for i in range(len(cache)))
    assert manifest.pixels.total == N * SIZE[0] * SIZE[1] == counts.sum()
    assert (manifest.pixels.background, manifest.pixels.ignore) == (counts[0], counts[255])
    assert [c.pixels for c in manifest.categories] == counts[1 : len(manifest.categories) + 1].tolist()
    assert [c.instances for c in manifest.categories if not c.isthing] == [0] * len(manifest.stuff_train_ids)
    info = format_info(manifest, cache_dir)
    road = next(c for c in manifest.categories if c.name == "road")
    share = f"{100 * road.pixels / manifest.pixels.labelled:.2f}%"
    assert any(line.split()[2:] == ["stuff", "0", share, "road"] for line in info.splitlines()), info
    assert f"{len(manifest.thing_train_ids)} things, {len(manifest.stuff_train_ids)} stuff" in info


@pytest.mark.parametrize("fmt", ["panoptic", "cityscapes"])
@pytest.mark.parametrize("loader", ["CpuLoader", "Loader"])
def test_both_loaders_read_the_semantic_and_instance_ids(formats, fmt, loader):
    cache_dir, dataset = formats[fmt]
    threads = {"num_threads": 0} if loader == "CpuLoader" else {"num_threads": 1}
    ld = getattr(fastload, loader)(cache_dir, batch_size=N, shuffle=False, size=SIZE, augment="none", device="cpu", **threads)
    try:
        [batch] = list(ld)
    finally:
        ld.close()
    for k, image in enumerate(dataset.images):
        labels = image.labels()
        np.testing.assert_array_equal(batch["semantic"][k].numpy(), labels.semantic)
        np.testing.assert_array_equal(batch["instance"][k].numpy(), labels.instance)
        stuff = np.isin(labels.semantic, load_manifest(cache_dir).stuff_train_ids)
        assert not batch["offset"][k][:, stuff].any()


# ------------------------------------------------------------------------------------------------ COCO instances


def test_coco_things_config_leaves_stuff_in_the_semantic_mask_only(synth_root, synth_cache, tmp_path):
    # synth categories: 3 red_blob, 8 green_blob, 21 blue_blob, 42 yellow_blob (train ids 1..4)
    out = tmp_path / "cache"
    build_cache(coco=synth_root / "annotations.json", images=synth_root / "images", out=out,
                config={"samples_per_shard": 8, "things": [3, "green_blob"]}, progress=False)  # fmt: skip
    manifest = load_manifest(out)
    assert (manifest.thing_train_ids, manifest.stuff_train_ids) == ((1, 2), (3, 4))
    assert manifest.instances < load_manifest(synth_cache).instances
    with open_cache(out) as mine, open_cache(synth_cache) as everything_things:
        for i in range(len(mine)):
            a, b = mine[i], everything_things[i]
            np.testing.assert_array_equal(a["semantic"], b["semantic"])  # the same pixels, the same classes
            kept = [r for r in b["meta"]["instances"] if r["train_id"] in (1, 2)]
            lut = np.zeros(len(b["meta"]["instances"]) + 1, np.int32)
            lut[[r["id"] for r in kept]] = np.arange(1, len(kept) + 1)
            np.testing.assert_array_equal(a["instance"], lut[b["instance"]])  # stuff gone, things renumbered
            assert a["meta"]["instances"] == [{**r, "id": k + 1} for k, r in enumerate(kept)]
            assert (a["instance"][np.isin(a["semantic"], [3, 4])] == 0).all()
    assert verify_cache(out).ok


def test_things_config_errors_are_named(synth_root, tmp_path):
    coco = {"coco": synth_root / "annotations.json", "images": synth_root / "images", "progress": False}
    with pytest.raises(ConfigError, match=r"things: 7, 'purple_blob' is no category.*3 'red_blob'"):
        build_cache(out=tmp_path / "a", config={"things": [3, 7, "purple_blob"]}, **coco)
    with pytest.raises(ConfigError, match=r"config\.things\[0\]: True fits none of int \| str"):
        build_cache(out=tmp_path / "b", config={"things": [True]}, **coco)
    with pytest.raises(ConfigError, match=r"things: True is neither a category id \(an integer >= 0\) nor a category name"):
        CacheConfig(things=[1, True])
    with pytest.raises(ConfigError, match=r"things: 'car' is listed twice"):
        build_cache(out=tmp_path / "c", config={"things": ["car", "car"]}, **coco)
    panoptic = write_panoptic(out=tmp_path / "p", n=1, size=SIZE)
    with pytest.raises(ConfigError, match="says which classes are things itself .*isthing.*remove things"):
        build_cache(panoptic=panoptic.annotations, panoptic_masks=panoptic.png_dir, images=panoptic.image_root,
                    out=tmp_path / "d", config={"things": ["car"]}, progress=False)  # fmt: skip


def test_coco_caches_hold_exactly_what_the_coco_path_stored_before(sample_cache, sample_coco):
    """Every stored member is byte for byte the encoding of `rasterize_image` and `instance_table` (the COCO path's
    functions before every format went through `LabelImage`), so the tars and indexes did not change."""
    records = load_coco(sample_coco).images
    level = load_manifest(sample_cache).label_compression
    with open_cache(sample_cache) as cache:
        for i, record in enumerate(records):
            members, raster = cache.read_members(i), rasterize_image(record)
            assert members.semantic == encode_label(raster.semantic, kind="sem", level=level)
            assert members.instance == encode_label(raster.instance, kind="ins", level=level)
            meta = {"image_id": record.image_id, "file_name": record.file_name, "height": record.height,
                    "width": record.width, "instances": instance_table(raster)}  # fmt: skip
            assert encode_meta(members.meta) == encode_meta(meta)
    manifest = load_manifest(sample_cache)
    assert manifest.thing_train_ids == (1, 2, 3) and manifest.source_format == "coco"


# ------------------------------------------------------------------------------------------------ older caches


def _as_before(cache: Path, out: Path) -> Path:
    """A copy of ``cache`` whose manifest lacks every key this change added: a cache built before it."""
    shutil.copytree(cache, out)
    data = json.loads((out / "manifest.json").read_text())
    for category in data["categories"]:
        del category["isthing"], category["pixels"]
    del data["pixels"], data["source"]["format"], data["config"]["things"]
    (out / "manifest.json").write_text(json.dumps(data))
    return out


def test_a_cache_built_before_opens_with_every_class_a_thing(synth_cache, tmp_path):
    old = _as_before(synth_cache, tmp_path / "old")
    manifest = load_manifest(old)
    assert manifest.thing_train_ids == (1, 2, 3, 4) and manifest.stuff_train_ids == ()
    assert manifest.pixels is None and {c.pixels for c in manifest.categories} == {None}
    assert manifest.source_format == "coco"
    assert verify_cache(old).ok
    info = format_info(manifest, old)
    assert "4 things, 0 stuff" in info and "pixels: - (a cache built before" in info
    assert all(line.split()[-2] == "-" for line in info.splitlines() if line.strip().endswith("_blob"))
    batches = []
    for cache in (synth_cache, old):
        ld = fastload.CpuLoader(cache, batch_size=4, shuffle=False, size=(32, 32), augment="none", device="cpu", num_threads=0)
        batches.append(next(iter(ld)))
        ld.close()
    for key in ("semantic", "instance", "heatmap", "offset"):
        assert np.array_equal(batches[0][key].numpy(), batches[1][key].numpy()), key


def test_a_completion_record_without_pixel_counts_is_rebuilt_on_resume(synth_cache, tmp_path):
    shutil.copytree(synth_cache, tmp_path / "c")
    done = json.loads((tmp_path / "c" / "shard-00000.done.json").read_text())
    assert check_done_record(tmp_path / "c", 0, done["fingerprint"], "fail") == done
    del done["pixels_per_class"]
    (tmp_path / "c" / "shard-00000.done.json").write_text(json.dumps(done))
    assert check_done_record(tmp_path / "c", 0, done["fingerprint"], "fail") is None


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["categories"][0].update(isthing=1), r"categories\[0\]\.isthing must be true or false, got 1"),
        (lambda m: m["categories"][1].update(pixels=-5), r"categories\[1\]\.pixels must be an integer >= 0"),
        (lambda m: m["categories"][1].pop("pixels"), r"train id 2 has no pixels"),
        (lambda m: m.pop("pixels"), r"categories hold pixels, but the manifest has no pixels entry"),
        (lambda m: m["pixels"].update(total=m["pixels"]["total"] + 1), r"pixels\.total is \d+, the classes, background and ignore hold"),
        (lambda m: m["pixels"].update(ignore="0"), r"pixels\.ignore must be an integer"),
        (lambda m: m["source"].update(format="voc"), r"source\.format must be one of \['coco', 'coco_panoptic', 'cityscapes'\]"),
    ],
)
def test_new_manifest_fields_are_validated(synth_cache, tmp_path, edit, message):
    out = tmp_path / "c"
    shutil.copytree(synth_cache, out)
    data = json.loads((out / "manifest.json").read_text())
    edit(data)
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(CacheError, match=message):
        load_manifest(out)


def test_verify_names_instances_on_classes_that_are_not_things(synth_cache, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(synth_cache, out)
    data = json.loads((out / "manifest.json").read_text())
    data["categories"][1]["isthing"] = False  # green_blob (train id 2) called stuff: its stored instances now lie
    (out / "manifest.json").write_text(json.dumps(data))
    report = verify_cache(out)
    assert not report.ok
    assert all("rows name train id(s) [2], which are not thing classes" in p for p in report.problems)
    manifest = load_manifest(out)
    semantic = np.array([[0, 2, 2], [1, 255, 0]], np.uint8)
    instance = np.array([[0, 1, 1], [2, 3, 4]], np.int32)
    problem = instances_off_things(semantic, instance, [{"train_id": 1}], manifest)
    assert problem == (
        "instance mask: instance(s) [1, 3, 4] cover pixels whose class is not a thing: 1 px on 0 (__background__, "
        "background), 2 px on 2 (green_blob, stuff), 1 px on 255 (ignore, ignore); stuff, background and ignore have "
        "instance 0"
    )
    assert instances_off_things(semantic, np.where(semantic == 1, 2, 0), [{"train_id": 1}], manifest) is None


# ------------------------------------------------------------------------------------------------ the command line


def test_synth_and_build_panoptic_and_cityscapes_from_the_command_line(tmp_path, capsys):
    from fastload.tools.cli import main

    _needs_cityscapesscripts()
    size = ["--size", str(SIZE[0]), str(SIZE[1])]
    assert main(["synth", "--format", "panoptic", "--out", str(tmp_path / "p"), "--n", "3", *size]) == 0
    said = capsys.readouterr().out
    build = said.split("build a cache: fastload ")[1].split()[:-2]  # the command it prints, without --out CACHE
    assert build[:2] == ["cache", "build"] and "--panoptic-masks" in build
    assert main([*build, "--out", str(tmp_path / "pc"), "--no-progress"]) == 0
    assert "3 samples of 3 images" in capsys.readouterr().out
    assert main(["synth", "--format", "cityscapes", "--out", str(tmp_path / "c"), "--n", "4", *size, "--seed", "2"]) == 0
    capsys.readouterr()
    args = ["cache", "build", "--cityscapes", str(tmp_path / "c"), "--no-progress"]
    assert main([*args, "--split", "train", "--split", "small=0.5", "--seed", "3", "--out", str(tmp_path / "cc")]) == 0
    out = capsys.readouterr().out
    assert "8 thing and 11 stuff classes" in out
    parts = {name: load_manifest(tmp_path / "cc" / name) for name in ("train", "small")}
    assert sum(m.samples for m in parts.values()) == 4 and parts["small"].split.name == "small"
    assert main(["cache", "info", str(tmp_path / "pc")]) == 0
    info = capsys.readouterr().out
    assert "4 things, 4 stuff (built from coco_panoptic)" in info and " stuff " in info and "%" in info


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--coco", "a.json", "--images", "i", "--split", "val"], r"--split val: a bare split name picks the Cityscapes split, with --cityscapes"),
        (["--cityscapes", "r", "--split", "valid"], r"--split valid: the Cityscapes splits are train, val, test"),
        (["--cityscapes", "r", "--split", "val", "--split", "test"], r"one Cityscapes split per build"),
        (["--cityscapes", "r", "--split", "val", "--seed", "1"], r"--seed is the seed of --split NAME=FRACTION"),
        (["--coco", "a.json", "--cityscapes", "r"], r"several data sets given: coco, cityscapes; pass one data set"),
        (["--images", "i"], r"no data set given; pass one data set"),
        (["--panoptic", "p.json", "--images", "i"], r"COCO panoptic needs both its JSON and its PNG folder"),
        (["--coco", "a.json"], r"pass the image folder too \(images=, --images DIR\) with --coco"),
    ],
)
def test_build_arguments_are_refused_with_the_fix(tmp_path, capsys, argv, message):
    import re

    from fastload.tools.cli import main

    assert main(["cache", "build", *argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_synth_refuses_coco_only_options_for_other_formats(tmp_path, capsys):
    from fastload.tools.cli import main

    assert main(["synth", "--format", "cityscapes", "--out", str(tmp_path), "--n", "1", "--instances", "1", "2"]) == 2
    assert "--instances applies to --format coco only" in capsys.readouterr().err


def test_a_missing_panoptic_png_fails_naming_it_once_or_is_skipped(tmp_path):
    files = write_panoptic(out=tmp_path / "p", n=3, size=SIZE, seed=4)
    (files.png_dir / "000001.png").unlink()
    source = {"panoptic": files.annotations, "panoptic_masks": files.png_dir, "images": files.image_root, "progress": False}
    with pytest.raises(ImageError, match=r"^image 2 \(file_name '000001.jpg'\), panoptic PNG .*000001.png': cannot be read") as error:
        build_cache(out=tmp_path / "a", **source)
    assert str(error.value).count("image 2") == 1
    build_cache(out=tmp_path / "b", on_error="skip", **source)
    manifest = load_manifest(tmp_path / "b")
    assert manifest.samples == 2 and [(s.image_id, s.file_name) for s in manifest.skips] == [(2, "000001.jpg")]
    assert "cannot be read" in manifest.skips[0].reason


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(AnnotationError, match=r"COCO instances JSON '.*nothing.json' does not exist .*\(--coco\)"):
        build_cache(coco=tmp_path / "nothing.json", images=tmp_path, out=tmp_path / "a", progress=False)
    files = write_panoptic(out=tmp_path / "p", n=1, size=SIZE)
    with pytest.raises(AnnotationError, match=r"panoptic PNG folder '.*pngs' does not exist; .*\(--panoptic-masks\)"):
        build_cache(panoptic=files.annotations, panoptic_masks=tmp_path / "pngs", images=files.image_root, out=tmp_path / "b", progress=False)
    with pytest.raises(AnnotationError, match=r"Cityscapes root '.*nowhere' does not exist; pass the folder that holds gtFine/"):
        build_cache(cityscapes=tmp_path / "nowhere", out=tmp_path / "c", progress=False)
