"""DALI reads our shards directly: fn.readers.webdataset on the CPU with the index files the build wrote."""

from __future__ import annotations

import numpy as np
import pytest

from fastload.cache.format import DALI_IMAGE_EXT, LABEL_EXTENSIONS, encode_meta
from fastload.samples import open_cache

dali = pytest.importorskip("nvidia.dali")


def _read_shard_with_dali(tar, idx, samples: int) -> list[list[bytes]]:
    from nvidia.dali import fn, pipeline_def

    exts = [DALI_IMAGE_EXT] + [LABEL_EXTENSIONS[k] for k in ("sem", "ins", "meta")]

    @pipeline_def(batch_size=samples, num_threads=1, device_id=None, seed=0)
    def pipe():
        return tuple(
            fn.readers.webdataset(
                paths=[str(tar)],
                index_paths=[str(idx)],
                ext=exts,
                missing_component_behavior="error",
                random_shuffle=False,
                name="reader",
            )
        )

    p = pipe()
    p.build()
    assert p.epoch_size("reader") == samples
    outputs = p.run()
    return [[np.array(out[s]).tobytes() for out in outputs] for s in range(samples)]


def test_dali_webdataset_reader_gets_the_same_bytes(sample_cache):
    cache = open_cache(sample_cache)
    shard = cache.manifest.shards[1]
    got = _read_shard_with_dali(sample_cache / shard.file, sample_cache / shard.dali_index, shard.samples)
    first = sum(s.samples for s in cache.manifest.shards[:1])
    for s, members in enumerate(got):
        m = cache.read_members(first + s)
        assert members == [m.image, m.semantic, m.instance, encode_meta(m.meta)]


def test_our_index_equals_dali_wds2idx(sample_cache, tmp_path):
    wds2idx = pytest.importorskip("wds2idx")  # ships with DALI; needs the `tar` program or falls back to tarfile
    shard = open_cache(sample_cache).manifest.shards[0]
    creator = wds2idx.IndexCreator(str(sample_cache / shard.file), str(tmp_path / "dali.idx"), verbose=False)
    creator.create_index()
    creator.close()
    assert (tmp_path / "dali.idx").read_bytes() == (sample_cache / shard.dali_index).read_bytes()
