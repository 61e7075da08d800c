"""Reading a cache: the Sequence contract, named errors for damaged caches, pickle/fork safety."""

from __future__ import annotations

import json
import multiprocessing as mp
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from fastload.cache.reader import CacheDataset
from fastload.errors import CacheError
from fastload.samples import open_cache


@pytest.fixture
def cache_copy(synth_cache: Path, tmp_path: Path) -> Path:
    out = tmp_path / "cache"
    shutil.copytree(synth_cache, out)
    return out


def _flip_byte_in_member(cache: Path, index: int, kind: str) -> str:
    """Flip one byte inside a member's data; return the shard file name."""
    ds = open_cache(cache)
    shard = ds.read_members(index).shard
    entry = json.loads((cache / shard.replace(".tar", ".json")).read_text())
    key = ds.key(index)
    [sample] = [s for s in entry["samples"] if s["key"] == key]
    [member] = [m for m in sample["members"] if m["kind"] == kind]
    data = bytearray((cache / shard).read_bytes())
    data[member["offset"] + member["size"] // 2] ^= 0x01
    (cache / shard).write_bytes(bytes(data))
    return shard


def test_sequence_contract(synth_cache):
    ds = open_cache(synth_cache)
    assert isinstance(ds, CacheDataset) and len(ds) == 24
    assert ds[-1]["meta"]["image_id"] == ds[23]["meta"]["image_id"] == 24
    assert ds[np.int64(2)]["meta"]["image_id"] == 3
    with pytest.raises(IndexError):
        ds[24]
    with pytest.raises(IndexError):
        ds[-25]
    assert sum(1 for _ in ds) == 24


def test_sample_dtypes_and_shapes(synth_cache):
    sample = open_cache(synth_cache)[5]
    expected = {
        "image": (np.uint8, (96, 128, 3)),
        "semantic": (np.uint8, (96, 128)),
        "instance": (np.int32, (96, 128)),
        "heatmap": (np.float32, (96, 128)),
        "offset": (np.float32, (2, 96, 128)),
    }
    for name, (dtype, shape) in expected.items():
        assert sample[name].dtype == dtype and sample[name].shape == shape, name
    meta = sample["meta"]
    assert set(meta) == {"image_id", "file_name", "height", "width", "instances"}
    assert set(meta["instances"][0]) == {"id", "annotation_id", "category_id", "train_id", "bbox", "area", "centre"}
    assert sample["instance"].max() == len(meta["instances"])


def test_manifest_and_image_size_need_no_tar_read(cache_copy):
    ds = open_cache(cache_copy)
    for tar in cache_copy.glob("*.tar"):
        tar.unlink()
    assert ds.image_size(3) == (96, 128) and ds.image_id(3) == 4
    m = ds.manifest
    assert (m.samples_per_shard, m.label_format, m.num_classes) == (8, "FLZ4 v1", 5)
    assert [c.coco_id for c in m.categories] == [3, 8, 21, 42]


def test_missing_manifest_says_the_build_did_not_finish(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(CacheError, match="manifest.json is missing.*did not finish.*--resume"):
        open_cache(tmp_path / "c")
    with pytest.raises(CacheError, match="does not exist"):
        open_cache(tmp_path / "nowhere")


def test_newer_schema_asks_to_upgrade(cache_copy):
    path = cache_copy / "manifest.json"
    path.write_text(path.read_text().replace('"schema_version": 2', '"schema_version": 3'))
    with pytest.raises(CacheError, match="schema_version 3 .*newer fastload.*upgrade fastload"):
        open_cache(cache_copy)


def test_malformed_manifest_is_a_cache_error(cache_copy):
    (cache_copy / "manifest.json").write_text('{"schema_version": 2}')
    with pytest.raises(CacheError, match="malformed manifest"):
        open_cache(cache_copy)
    (cache_copy / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="not JSON"):
        open_cache(cache_copy)


def test_crc_mismatch_names_shard_and_sample(cache_copy):
    shard = _flip_byte_in_member(cache_copy, 10, "ins")
    ds = open_cache(cache_copy)
    with pytest.raises(CacheError, match=rf"{shard}, sample 00000010 \(cache index 10\).*00000010\.ins\.lz4.*CRC-32.*verify"):
        ds.read_members(10)
    with pytest.raises(CacheError, match="00000010"):
        ds[10]
    ds.read_members(11)  # its neighbours are fine


def test_missing_or_truncated_shard_is_named(cache_copy):
    ds = open_cache(cache_copy)
    tar = cache_copy / "shard-00001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(CacheError, match="shard-00001.tar.*ends early"):
        for i in range(len(ds)):
            ds.read_members(i)
    with pytest.raises(CacheError, match="shard-00001.tar has .* bytes, the manifest says"):
        open_cache(cache_copy)
    tar.unlink()
    with pytest.raises(CacheError, match="shard shard-00001.tar is missing"):
        open_cache(cache_copy)


def test_pickle_carries_no_file_handles(synth_cache):
    ds = open_cache(synth_cache)
    first = ds.read_members(0)
    assert ds._fds  # a handle is open in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._fds == {}
    assert clone.read_members(0) == first


def _child_reads(ds: CacheDataset, index: int, conn) -> None:
    conn.send(ds.read_members(index).image)


def test_forked_child_reads_with_its_own_handles(synth_cache):
    ds = open_cache(synth_cache)
    expected = ds.read_members(20).image  # opens handles in the parent before the fork
    parent, child = mp.get_context("fork").Pipe()
    proc = mp.get_context("fork").Process(target=_child_reads, args=(ds, 20, child))
    proc.start()
    assert parent.recv() == expected
    proc.join(timeout=30)
    assert proc.exitcode == 0
    assert ds.read_members(20).image == expected  # the parent's handles still work


def test_torch_dataloader_workers(synth_cache):
    torch = pytest.importorskip("torch")
    ds = open_cache(synth_cache)
    ds[0]  # open a handle before the workers fork
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, collate_fn=lambda s: s["meta"]["image_id"], multiprocessing_context="fork"
    )
    assert sorted(loader) == list(range(1, 25))
