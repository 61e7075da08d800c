"""Building a cache: round trip against the pure functions, byte budget, determinism, resume, multi-node."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from cocofactory import CocoFactory, write_image

import fastload.build.pool as pool
import fastload.build.writer as writer
from fastload.build.build import build_cache
from fastload.build.coco import load_coco
from fastload.build.coco_instances import from_coco
from fastload.build.merge import merge_cache
from fastload.build.raster import rasterize_image
from fastload.build.tables import instance_table
from fastload.cache.config import CacheConfig
from fastload.cache.manifest import load_manifest
from fastload.errors import AnnotationError, CacheError, ConfigError
from fastload.samples import open_cache
from fastload.targets import center_targets


def _shard_hashes(cache: Path) -> dict[str, str]:
    return {s.file: s.sha256 for s in load_manifest(cache).shards}


def _build_synth(synth_root: Path, out: Path, **kwargs) -> Path:
    kwargs.setdefault("config", {"samples_per_shard": 8})
    return build_cache(
        coco=synth_root / "annotations.json", images=synth_root / "images", out=out, progress=False, **kwargs
    )


# ----------------------------------------------------------------------------------------------- real data


def test_round_trip_on_real_data_matches_the_pure_functions(sample_cache, sample_coco, sample_images):
    cache = open_cache(sample_cache)
    records = load_coco(sample_coco).images
    assert len(cache) == len(records) == 18
    for i, record in enumerate(records):
        sample = cache[i]
        raster = rasterize_image(record)
        heatmap, offset = center_targets(raster.instance)  # computed on access, sigma 8, stride 1
        assert np.array_equal(sample["semantic"], raster.semantic)  # masks are stored losslessly
        assert sample["instance"].dtype == np.int32 and np.array_equal(sample["instance"], raster.instance)
        assert np.array_equal(sample["heatmap"], heatmap) and np.array_equal(sample["offset"], offset)
        source = cv2.cvtColor(cv2.imread(str(sample_images / record.file_name)), cv2.COLOR_BGR2RGB)
        assert np.array_equal(sample["image"], source)
        assert sample["meta"]["image_id"] == record.image_id
        assert sample["meta"]["instances"] == json.loads(json.dumps(instance_table(raster)))
        assert cache.image_size(i) == (record.height, record.width)
        members = cache.read_members(i)
        assert members.image == (sample_images / record.file_name).read_bytes()  # never re-encoded
        assert members.image_ext == "jpg" and members.key == f"{i:08d}"


def test_manifest_of_real_data(sample_cache, sample_coco):
    m = load_manifest(sample_cache)
    assert (m.schema_version, m.images, m.samples, m.instances, len(m.skips)) == (2, 18, 18, 165, 0)
    assert [s.samples for s in m.shards] == [5, 5, 5, 3]
    assert [(c.coco_id, c.train_id, c.name) for c in m.categories] == [(1, 1, "date"), (2, 2, "fig"), (3, 3, "hazelnut")]
    assert sum(c.instances for c in m.categories) == 165 and m.num_classes == 4
    assert (m.samples_per_shard, m.label_compression, m.label_format) == (5, 3, "FLZ4 v1")
    assert m.total_bytes == sum((sample_cache / s.file).stat().st_size for s in m.shards)


def test_labels_take_at_most_a_tenth_of_the_source_image_bytes(sample_cache):
    b = load_manifest(sample_cache).member_bytes
    labels = b.sem + b.ins + b.meta
    assert labels <= 0.10 * b.image, f"labels {labels} B vs images {b.image} B"


def test_the_shard_index_records_each_label_shape_and_dtype(sample_cache):
    index = json.loads((sample_cache / "shard-00000.json").read_text())
    members = index["samples"][0]["members"]
    assert [m["name"].split(".", 1)[1] for m in members] == ["jpg", "sem.lz4", "ins.lz4", "json"]
    assert [(m.get("shape"), m.get("dtype")) for m in members] == [
        (None, None),
        ([600, 800], "uint8"),
        ([600, 800], "uint16"),
        (None, None),
    ]


def test_a_schema_1_cache_is_refused_with_the_rebuild_command(sample_cache, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(sample_cache, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["schema_version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"schema_version 1 .*rebuild it .*fastload cache build"):
        open_cache(old)


# ----------------------------------------------------------------------------------------------- determinism


def test_same_inputs_give_byte_identical_shards_with_1_or_2_workers(synth_root, synth_cache, tmp_path):
    _build_synth(synth_root, tmp_path / "two", workers=2)
    for shard in load_manifest(synth_cache).shards:
        for name in (shard.file, shard.index_file, shard.dali_index):
            assert (tmp_path / "two" / name).read_bytes() == (synth_cache / name).read_bytes(), name
    assert (tmp_path / "two" / "manifest.json").read_bytes() == (synth_cache / "manifest.json").read_bytes()


def test_open_cache_computes_maps_at_the_stride_it_is_given(synth_cache):
    sample = open_cache(synth_cache, sigma=2.0, stride=4)[0]
    assert sample["heatmap"].shape == (24, 32) and sample["offset"].shape == (2, 24, 32)
    assert sample["semantic"].shape == (96, 128)
    heatmap, _ = center_targets(sample["instance"], 2.0, stride=4)
    assert np.array_equal(sample["heatmap"], heatmap)


# ----------------------------------------------------------------------------------------------- resume


def test_resume_rebuilds_only_damaged_shards(synth_root, synth_cache, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    shutil.copytree(synth_cache, out)
    tar = out / "shard-00001.tar"
    data = bytearray(tar.read_bytes())
    data[5000] ^= 0xFF
    tar.write_bytes(bytes(data))  # corrupt data, record intact
    (out / "shard-00002.done.json").unlink()  # data intact, record gone
    (out / "manifest.json").unlink()

    built = []
    real = writer.build_shard
    monkeypatch.setattr(pool, "build_shard", lambda task, progress: built.append(task.shard) or real(task, progress))
    _build_synth(synth_root, out, resume=True)
    assert built == [1, 2]
    assert _shard_hashes(out) == _shard_hashes(synth_cache)
    assert (out / "manifest.json").read_bytes() == (synth_cache / "manifest.json").read_bytes()


def test_resume_rebuilds_a_shard_whose_record_was_edited_into_another_shape(synth_root, synth_cache, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    shutil.copytree(synth_cache, out)
    record = json.loads((out / "shard-00001.done.json").read_text())
    record["member_bytes"] = None  # fingerprint and files intact: only the content lies
    (out / "shard-00001.done.json").write_text(json.dumps(record))
    (out / "manifest.json").unlink()

    built = []
    real = writer.build_shard
    monkeypatch.setattr(pool, "build_shard", lambda task, progress: built.append(task.shard) or real(task, progress))
    _build_synth(synth_root, out, resume=True)
    assert built == [1]
    assert (out / "manifest.json").read_bytes() == (synth_cache / "manifest.json").read_bytes()


def test_killed_build_leaves_no_complete_looking_shard_and_resumes(synth_root, synth_cache, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    real = writer.encode_sample
    calls = []

    def dies_at_the_12th_image(record, position, image_root, cfg):
        calls.append(position)
        if len(calls) == 12:
            raise KeyboardInterrupt  # stands in for a kill in the middle of shard 1
        return real(record, position, image_root, cfg)

    monkeypatch.setattr(writer, "encode_sample", dies_at_the_12th_image)
    with pytest.raises(KeyboardInterrupt):
        _build_synth(synth_root, out)
    assert (out / "shard-00000.done.json").is_file()
    assert not (out / "shard-00001.done.json").exists() and not (out / "shard-00001.tar").exists()
    assert not (out / "manifest.json").exists()
    with pytest.raises(CacheError, match="did not finish.*--resume"):
        open_cache(out)
    (out / "shard-00002.tar.tmp").write_bytes(b"half a shard from a kill -9")

    monkeypatch.setattr(writer, "encode_sample", real)
    _build_synth(synth_root, out, resume=True)
    assert _shard_hashes(out) == _shard_hashes(synth_cache)
    assert not list(out.glob("*.tmp"))


def test_shard_writer_returns_the_record_it_writes_and_the_shard_the_build_writes(synth_root, synth_cache, tmp_path):
    # shard 1 of the synth cache (8 samples per shard), written sample by sample by hand
    records = from_coco(load_coco(synth_root / "annotations.json")).images
    done = json.loads((synth_cache / "shard-00001.done.json").read_text())
    cfg = CacheConfig(samples_per_shard=8)
    with writer.ShardWriter(tmp_path, 1, fingerprint=done["fingerprint"]) as shard:
        assert not any(tmp_path.glob("*.done.json"))  # nothing looks complete before close()
        for position in range(8, 16):
            shard.add(records[position], position, writer.encode_sample(records[position], position, synth_root / "images", cfg))
        record = shard.close()
    assert record.to_json() == done and (record.shard, record.samples) == (1, 8)
    assert record.instances == sum(count for _, count in record.instances_per_class) == done["instances"]
    for name in ("shard-00001.tar", "shard-00001.json", "shard-00001.idx", "shard-00001.done.json"):
        assert (tmp_path / name).read_bytes() == (synth_cache / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00001.done.json", "shard-00001.idx", "shard-00001.json", "shard-00001.tar"]


def test_shard_writer_of_skipped_images_only_writes_a_record_without_files(synth_root, tmp_path):
    [record, *_] = from_coco(load_coco(synth_root / "annotations.json")).images
    with writer.ShardWriter(tmp_path, 3, fingerprint="f") as shard:
        shard.skip(record, "file not found")
        written = shard.close()
    assert (written.samples, written.files, written.instances) == (0, None, 0)
    assert [(s.image_id, s.annotation_id, s.reason) for s in written.skips] == [(record.image_id, None, "file not found")]
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00003.done.json"]
    assert json.loads((tmp_path / "shard-00003.done.json").read_text()) == written.to_json()


def test_shard_writer_left_on_an_error_leaves_no_file(synth_root, tmp_path):
    records = from_coco(load_coco(synth_root / "annotations.json")).images
    (tmp_path / "shard-00000.done.json").write_text("{}")  # an earlier build's record goes first
    with pytest.raises(KeyboardInterrupt), writer.ShardWriter(tmp_path, 0, fingerprint="f") as shard:
        shard.add(records[0], 0, writer.encode_sample(records[0], 0, synth_root / "images", CacheConfig()))
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_resume_with_another_config_rebuilds_everything(synth_root, synth_cache, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(synth_cache, out)
    _build_synth(synth_root, out, resume=True, config={"samples_per_shard": 8, "label_compression": 0})
    assert load_manifest(out).label_compression == 0
    assert set(_shard_hashes(out).values()).isdisjoint(_shard_hashes(synth_cache).values())


def test_build_refuses_a_folder_with_foreign_files(synth_root, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not part of a fastload cache"):
        _build_synth(synth_root, tmp_path)


# ----------------------------------------------------------------------------------------------- multi-node


def test_node_split_and_merge_equal_a_single_build(synth_root, synth_cache, tmp_path):
    out = tmp_path / "cache"
    parts = [_build_synth(synth_root, out, node_rank=r, num_nodes=2) for r in (1, 0)]
    assert sorted(p.name for p in parts) == ["manifest.part-00000-of-00002.json", "manifest.part-00001-of-00002.json"]
    assert not (out / "manifest.json").exists()
    merge_cache(out)
    assert _shard_hashes(out) == _shard_hashes(synth_cache)
    assert (out / "manifest.json").read_bytes() == (synth_cache / "manifest.json").read_bytes()


def test_merge_names_the_missing_node(synth_root, tmp_path):
    out = tmp_path / "cache"
    _build_synth(synth_root, out, node_rank=0, num_nodes=3)
    with pytest.raises(CacheError, match=r"node rank\(s\) \[1, 2\] of 3"):
        merge_cache(out)
    with pytest.raises(CacheError, match="cache merge"):
        open_cache(out)


def test_merge_names_a_malformed_part_and_a_rank_that_does_not_exist(synth_root, tmp_path):
    out = tmp_path / "cache"
    for rank in (0, 1):
        _build_synth(synth_root, out, node_rank=rank, num_nodes=2)
    paths = [out / f"manifest.part-0000{rank}-of-00002.json" for rank in (0, 1)]
    for num_shards, message in (
        (10**15, r"node 0's partial manifest lists shards \[0, 2\], expected \[0, 2, 4, 6, 8, 10, 12, 14\]"),  # no huge list
        ("3", r"a partial manifest or completion record is malformed \(TypeError"),
    ):
        for path in paths:  # both nodes agree on the false count
            part = json.loads(path.read_text())
            part["header"]["num_shards"] = num_shards
            path.write_text(json.dumps(part))
        with pytest.raises(CacheError, match=message):
            merge_cache(out)
    (out / "manifest.part-00002-of-00002.json").write_text("{}")
    with pytest.raises(CacheError, match=r"node rank 2 of a 2-node build does not exist"):
        merge_cache(out)


def test_merge_refuses_parts_built_with_different_configs(synth_root, tmp_path):
    out = tmp_path / "cache"
    _build_synth(synth_root, out, node_rank=0, num_nodes=2)
    _build_synth(synth_root, out, node_rank=1, num_nodes=2, config={"samples_per_shard": 8, "label_compression": 1})
    with pytest.raises(CacheError, match="disagrees with node 0's on .*config"):
        merge_cache(out)


def test_arguments_are_checked(synth_root, tmp_path):
    with pytest.raises(ConfigError, match="both"):
        _build_synth(synth_root, tmp_path / "a", node_rank=0)
    with pytest.raises(ConfigError, match="node_rank < num_nodes"):
        _build_synth(synth_root, tmp_path / "b", node_rank=2, num_nodes=2)
    with pytest.raises(ConfigError, match=r"\['fail', 'skip'\]"):
        _build_synth(synth_root, tmp_path / "c", on_error="ignore")
    with pytest.raises(ConfigError, match="workers"):
        _build_synth(synth_root, tmp_path / "d", workers=0)
    with pytest.raises(ConfigError, match="unknown key"):
        _build_synth(synth_root, tmp_path / "e", config={"sample_per_shard": 2})


# ----------------------------------------------------------------------------------------------- ids


def test_ids_at_the_int64_limits_survive_the_cache(tmp_path):
    coco = CocoFactory(tmp_path / "data")
    coco.category(2**63 - 1, "last")
    coco.image("a.png", image_id=2**63 - 1)
    coco.image("b.png", image_id=-(2**63), write_pixels=False)
    write_image(coco.image_root / "b.png", 32, 48)
    coco.polygon(2**63 - 1, 2**63 - 1, [(1, 1), (9, 1), (9, 9)], ann_id=-(2**63))
    out = build_cache(coco=coco.write(), images=coco.image_root, out=tmp_path / "cache", progress=False)
    cache = open_cache(out.parent)
    assert [cache.image_id(i) for i in range(len(cache))] == [2**63 - 1, -(2**63)]
    [inst] = cache[0]["meta"]["instances"]
    assert (inst["annotation_id"], inst["category_id"]) == (-(2**63), 2**63 - 1)
    assert cache.manifest.categories[0].coco_id == 2**63 - 1


def test_an_image_id_beyond_int64_is_skipped_and_the_cache_opens(tmp_path):
    # it used to build and verify, then open_cache raised a bare OverflowError (the int64 image-id table)
    coco = CocoFactory(tmp_path / "data")
    coco.category(1)
    coco.image("fine.png", image_id=1)
    coco.image("huge.png", image_id=2**63 + 5)
    path = coco.write()
    with pytest.raises(AnnotationError, match=r"image 9223372036854775813: id .* outside the 64-bit signed range"):
        build_cache(coco=path, images=coco.image_root, out=tmp_path / "failed", progress=False)
    assert not (tmp_path / "failed").exists()  # refused while loading the COCO file, before any shard
    build_cache(coco=path, images=coco.image_root, out=tmp_path / "cache", on_error="skip", progress=False)
    cache = open_cache(tmp_path / "cache")
    assert [cache.image_id(i) for i in range(len(cache))] == [1]
    [skip] = cache.manifest.skips
    assert (skip.image_id, skip.file_name) == (None, "huge.png") and "9223372036854775813" in skip.reason


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_a_negative_category_id_stops_the_build_before_it_writes(tmp_path, on_error):
    # writer and reader agree: the manifest holds category ids >= 0, and the build refuses -1 up front
    coco = CocoFactory(tmp_path / "data")
    coco.category(-1, "void")
    coco.image("a.png", image_id=1)
    with pytest.raises(AnnotationError, match=r"category id -1 \('void'\) is outside 0..2\*\*63-1"):
        build_cache(coco=coco.write(), images=coco.image_root, out=tmp_path / "cache", on_error=on_error, progress=False)
    assert not (tmp_path / "cache").exists()
