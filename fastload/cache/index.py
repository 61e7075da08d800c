"""A cache's index in memory: where every sample's members lie, their CRC-32s and the sample's size.

Opening a cache reads ``manifest.json`` and every shard's JSON index (no tar data) into a few NumPy arrays, one
row per sample in cache order (shard by shard): what a reader needs to read any sample with one ``pread``. Each
shard's tar must exist with the manifest's size and each index must hash to the manifest's sha256 (an edited
index can be valid JSON with plausible numbers that no CRC covers); every member must lie in order inside its
tar, so that no read ever leaves the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from fastload.advice import rebuild_shard
from fastload.cache.format import IMAGE_EXTENSIONS, LABEL_DTYPES, MEMBER_KINDS, SCHEMA_VERSION
from fastload.cache.jsonio import loads_json
from fastload.cache.manifest import Manifest, ShardInfo
from fastload.cache.validate import shard_path
from fastload.errors import CacheError


class CacheIndex:
    """The index of the cache at ``root`` (its ``manifest``), as arrays with one row per sample.

    shard_of  int32 (N,)          the sample's shard (position in ``manifest.shards``)
    span      int64 (N, 2)        absolute offset of its first member's data, and the bytes up to its last's end
    member    int64 (N, 4, 2)     each member's (offset within the span, size), in `MEMBER_KINDS` order
    crc       uint32 (N, 4)       each member's CRC-32
    hw        int32 (N, 2)        the sample's (height, width)
    image_id  int64 (N,)          the COCO image id
    position  int64 (N,)          the sample key (the image's position in the COCO list)
    image_ext uint8 (N,)          its image member's extension, an index into `IMAGE_EXTENSIONS`
    tar_paths list[Path]          each shard's tar, resolved inside the cache folder
    """

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root, self.manifest = root, manifest
        self._load()

    def _load(self) -> None:
        shards = self.manifest.shards
        n = sum(s.samples for s in shards)
        if n != self.manifest.samples:
            raise CacheError(f"{self.root}/manifest.json: shards hold {n} samples, counts say {self.manifest.samples}; rebuild the cache")
        # the arrays below are sized by the manifest's counts: bound them by the tars' real bytes first
        self.tar_paths = [self._check_tar(shard) for shard in shards]  # real paths, inside the cache folder
        kinds = len(MEMBER_KINDS)
        self.shard_of = np.empty(n, np.int32)
        self.span = np.empty((n, 2), np.int64)  # absolute start of the first member's data, span length
        self.member = np.empty((n, kinds, 2), np.int64)  # (offset within span, size)
        self.crc = np.empty((n, kinds), np.uint32)
        self.hw = np.empty((n, 2), np.int32)
        self.image_id = np.empty(n, np.int64)
        self.position = np.empty(n, np.int64)
        self.image_ext = np.empty(n, np.uint8)
        i = 0
        for s, shard in enumerate(shards):
            for sample in self._read_index(shard):
                self._add_sample(i, s, shard, sample)
                i += 1

    def _check_tar(self, shard: ShardInfo) -> Path:
        path = shard_path(self.root, shard.file)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CacheError(f"shard {shard.file} is missing from {self.root}; rebuild it with `fastload cache build ... --resume`") from None
        if size != shard.bytes:
            raise CacheError(
                f"shard {shard.file} has {size} bytes, the manifest says {shard.bytes} (truncated or replaced); "
                + rebuild_shard(self.root)
            )
        least = shard.samples * len(MEMBER_KINDS) * 512  # a member is at least its 512-byte tar header
        if least > size:
            raise CacheError(
                f"{self.root}/manifest.json: shard {shard.file} claims {shard.samples} samples, which take at least "
                f"{least} bytes; the file has {size}. Rebuild the cache"
            )
        return path

    def _read_index(self, shard: ShardInfo) -> list[dict[str, Any]]:
        path = shard_path(self.root, shard.index_file)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CacheError(f"shard index {shard.index_file} is missing; " + rebuild_shard(self.root)) from None
        # an edited or damaged index can still be valid JSON with plausible offsets and sizes, which the
        # members' CRC-32s do not cover (a wrong height/width would warp the sample wrongly): check its hash
        if hashlib.sha256(data).hexdigest() != shard.index_sha256:
            raise CacheError(
                f"shard index {shard.index_file} of {shard.file}: sha256 differs from the manifest (damaged or "
                "edited); " + rebuild_shard(self.root)
            )
        try:
            index = loads_json(data, what=f"shard index {shard.index_file}")
        except CacheError as exc:
            raise CacheError(f"{exc}; " + rebuild_shard(self.root)) from None
        if not isinstance(index, dict) or index.get("schema_version") != SCHEMA_VERSION:
            raise CacheError(f"shard index {shard.index_file} has an unknown schema; " + rebuild_shard(self.root))
        samples = index.get("samples")
        if not isinstance(samples, list) or len(samples) != shard.samples:
            raise CacheError(f"shard index {shard.index_file} does not list {shard.samples} samples; " + rebuild_shard(self.root))
        return samples

    def _add_sample(self, i: int, s: int, shard: ShardInfo, sample: dict[str, Any]) -> None:
        try:
            members = sample["members"]
            if [m["kind"] for m in members] != list(MEMBER_KINDS):
                raise ValueError(f"members {[m['kind'] for m in members]}, expected {list(MEMBER_KINDS)}")
            _check_spans(members, shard.bytes)
            start = members[0]["offset"]
            end = members[-1]["offset"] + members[-1]["size"]
            self.shard_of[i] = s
            self.span[i] = (start, end - start)
            for k, m in enumerate(members):
                self.member[i, k] = (m["offset"] - start, m["size"])
                self.crc[i, k] = m["crc32"]
                if m["kind"] in LABEL_DTYPES and (
                    m["shape"] != [sample["height"], sample["width"]] or m["dtype"] != LABEL_DTYPES[m["kind"]].name
                ):
                    raise ValueError(f"{m['name']} is {m['dtype']} {m['shape']}, the sample {sample['height']} x {sample['width']}")
            self.hw[i] = (sample["height"], sample["width"])
            self.image_id[i] = sample["image_id"]
            self.position[i] = int(sample["key"])
            self.image_ext[i] = IMAGE_EXTENSIONS.index(members[0]["name"].split(".", 1)[1])
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
            raise CacheError(
                f"shard index {shard.index_file}: sample {sample.get('key', '?') if isinstance(sample, dict) else '?'} "
                f"is malformed ({exc}); " + rebuild_shard(self.root)
            ) from exc



def _check_spans(members: list[dict[str, Any]], tar_bytes: int) -> None:
    """A sample's members lie in order inside the tar (after their 512-byte headers): no read leaves the file."""
    end = 0
    for m in members:
        offset, size = m["offset"], m["size"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (offset, size, m["crc32"])):
            raise ValueError(f"{m['name']}: offset, size and crc32 must be integers")
        if offset < end + 512 or size < 0 or offset + size > tar_bytes:
            raise ValueError(f"{m['name']}: {size} bytes at offset {offset} do not lie in order inside the {tar_bytes}-byte tar")
        end = offset + size
