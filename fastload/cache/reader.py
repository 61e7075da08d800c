"""`open_cache`: a built cache as a random-access `Sequence` of samples.

Opening reads ``manifest.json`` and every shard's JSON index (no tar data). A sample is then one ``pread``
of its members' contiguous span, CRC-checked per member. File handles are opened lazily, per process, and
never pickled, so a `CacheDataset` can be handed to torch DataLoader workers (fork or spawn).
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastload.cache.format import (
    IMAGE_EXTENSIONS,
    LABEL_EXTENSIONS,
    MEMBER_KINDS,
    SCHEMA_VERSION,
    SampleMembers,
    decode_heatmap,
    decode_image,
    decode_instance,
    decode_meta,
    decode_offset,
    decode_semantic,
    map_shape,
)
from fastload.cache.manifest import Manifest, ShardInfo, load_manifest
from fastload.errors import CacheError

_FIX = "run `fastload cache verify {root}` and rebuild with `fastload cache build ... --resume`"
# shard files a process keeps open (least recently used closed first): a shuffled epoch reads every shard,
# and a cache of more shards than the common soft limit of 1024 descriptors would otherwise hit EMFILE
MAX_OPEN_SHARDS = 64


class CacheDataset(Sequence):
    """The samples of a cache, in order (shard by shard). Build with `open_cache`.

    ``ds[i]`` decodes sample ``i`` (negative indices count from the end; out of range → IndexError)::

        image     uint8   (H, W, 3)  RGB, the source pixels
        semantic  uint8   (H, W)     train ids, 0 background, 255 ignore
        instance  int32   (H, W)     instance ids 1..N, 0 background
        heatmap   float32 (H', W')   centre heat in [0, 1], quantised to 1/255
        offset    float32 (2, H', W') (dy, dx) to the instance centre in map pixels, quantised to 1/offset_scale
        meta      dict    {image_id, file_name, height, width, instances: [{id, annotation_id, category_id,
                           train_id, bbox, area, centre}, ...]}

    with ``(H', W') = (ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(self, root: str | Path) -> None:
        self._root = Path(root)
        self._manifest = load_manifest(self._root)
        self._load_indexes()
        self._fds: OrderedDict[int, int] = OrderedDict()  # shard → descriptor, least recently used first
        self._lock = threading.Lock()  # an evicted descriptor must not be closed under another thread's read
        self._pid = os.getpid()

    # ------------------------------------------------------------------------------------------ opening

    def _load_indexes(self) -> None:
        shards = self._manifest.shards
        n = sum(s.samples for s in shards)
        if n != self._manifest.samples:
            raise CacheError(f"{self._root}/manifest.json: shards hold {n} samples, counts say {self._manifest.samples}; rebuild the cache")
        kinds = len(MEMBER_KINDS)
        self._shard_of = np.empty(n, np.int32)
        self._span = np.empty((n, 2), np.int64)  # absolute start of the first member's data, span length
        self._member = np.empty((n, kinds, 2), np.int64)  # (offset within span, size)
        self._crc = np.empty((n, kinds), np.uint32)
        self._hw = np.empty((n, 2), np.int32)
        self._image_id = np.empty(n, np.int64)
        self._position = np.empty(n, np.int64)
        self._image_ext = np.empty(n, np.uint8)
        i = 0
        for s, shard in enumerate(shards):
            self._check_tar(shard)
            for sample in self._read_index(shard):
                self._add_sample(i, s, shard, sample)
                i += 1

    def _check_tar(self, shard: ShardInfo) -> None:
        path = self._root / shard.file
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CacheError(f"shard {shard.file} is missing from {self._root}; rebuild it with `fastload cache build ... --resume`") from None
        if size != shard.bytes:
            raise CacheError(
                f"shard {shard.file} has {size} bytes, the manifest says {shard.bytes} (truncated or replaced); "
                + _FIX.format(root=self._root)
            )

    def _read_index(self, shard: ShardInfo) -> list[dict[str, Any]]:
        path = self._root / shard.index_file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CacheError(f"shard index {shard.index_file} is missing; " + _FIX.format(root=self._root)) from None
        # an edited or damaged index can still be valid JSON with plausible offsets and sizes, which the
        # members' CRC-32s do not cover (a wrong height/width would warp the sample wrongly): check its hash
        if hashlib.sha256(data).hexdigest() != shard.index_sha256:
            raise CacheError(
                f"shard index {shard.index_file} of {shard.file}: sha256 differs from the manifest (damaged or "
                "edited); " + _FIX.format(root=self._root)
            )
        try:
            index = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CacheError(f"shard index {shard.index_file} is not JSON ({exc}); " + _FIX.format(root=self._root)) from exc
        if not isinstance(index, dict) or index.get("schema_version") != SCHEMA_VERSION:
            raise CacheError(f"shard index {shard.index_file} has an unknown schema; " + _FIX.format(root=self._root))
        samples = index.get("samples")
        if not isinstance(samples, list) or len(samples) != shard.samples:
            raise CacheError(f"shard index {shard.index_file} does not list {shard.samples} samples; " + _FIX.format(root=self._root))
        return samples

    def _add_sample(self, i: int, s: int, shard: ShardInfo, sample: dict[str, Any]) -> None:
        try:
            members = sample["members"]
            if [m["kind"] for m in members] != list(MEMBER_KINDS):
                raise ValueError(f"members {[m['kind'] for m in members]}, expected {list(MEMBER_KINDS)}")
            start = members[0]["offset"]
            end = members[-1]["offset"] + members[-1]["size"]
            self._shard_of[i] = s
            self._span[i] = (start, end - start)
            for k, m in enumerate(members):
                self._member[i, k] = (m["offset"] - start, m["size"])
                self._crc[i, k] = m["crc32"]
            self._hw[i] = (sample["height"], sample["width"])
            self._image_id[i] = sample["image_id"]
            self._position[i] = int(sample["key"])
            self._image_ext[i] = IMAGE_EXTENSIONS.index(members[0]["name"].split(".", 1)[1])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CacheError(
                f"shard index {shard.index_file}: sample {sample.get('key', '?') if isinstance(sample, dict) else '?'} "
                f"is malformed ({exc}); " + _FIX.format(root=self._root)
            ) from exc

    # ------------------------------------------------------------------------------------------ pickling

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fds"] = OrderedDict()  # descriptors are per process; the new owner opens its own
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _pread(self, s: int, length: int, start: int) -> bytes:
        """``length`` bytes of shard ``s`` from ``start``, through this process's (bounded) set of open files."""
        if self._pid != os.getpid():  # forked: the parent's descriptors and lock are not ours to share
            self._fds, self._lock, self._pid = OrderedDict(), threading.Lock(), os.getpid()
        with self._lock:
            fd = self._fds.get(s)
            if fd is None:
                shard = self._manifest.shards[s]
                try:
                    fd = os.open(self._root / shard.file, os.O_RDONLY)
                except FileNotFoundError:
                    raise CacheError(f"shard {shard.file} is missing from {self._root}; rebuild it with --resume") from None
                self._fds[s] = fd
                if len(self._fds) > MAX_OPEN_SHARDS:
                    os.close(self._fds.popitem(last=False)[1])
            else:
                self._fds.move_to_end(s)
            return os.pread(fd, length, start)

    def close(self) -> None:
        """Close this process's shard files (they reopen on the next read)."""
        if self._pid != os.getpid():
            self._fds = OrderedDict()
            return
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds = OrderedDict()

    def __enter__(self) -> CacheDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: os may already be gone; nothing to report to anyone
            return

    # ------------------------------------------------------------------------------------------ access

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def root(self) -> Path:
        return self._root

    def __len__(self) -> int:
        return len(self._shard_of)

    def __repr__(self) -> str:
        return f"CacheDataset({str(self._root)!r}, samples={len(self)}, shards={len(self._manifest.shards)})"

    def _index(self, i: Any) -> int:
        i = operator.index(i)  # ints and NumPy integers; slices are not supported
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"cache index {i} out of range for {n} samples")
        return i

    def image_size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of sample ``i`` from the index (no tar read)."""
        i = self._index(i)
        return int(self._hw[i, 0]), int(self._hw[i, 1])

    def key(self, i: int) -> str:
        """Sample key (the image's position in the COCO list, ``%08d``)."""
        return f"{int(self._position[self._index(i)]):08d}"

    def image_id(self, i: int) -> int:
        return int(self._image_id[self._index(i)])

    def _where(self, i: int) -> str:
        return f"shard {self._manifest.shards[self._shard_of[i]].file}, sample {self.key(i)} (cache index {i})"

    def read_members(self, i: int) -> SampleMembers:
        """The encoded members of sample ``i``: one read, each member's CRC-32 checked.

        Raises
        ------
        CacheError
            Naming the shard file and the sample, when the shard is missing or short or a CRC disagrees.
        """
        i = self._index(i)
        s = int(self._shard_of[i])
        start, length = (int(v) for v in self._span[i])
        try:
            buf = self._pread(s, length, start)
        except CacheError as exc:  # the shard file is gone (opened lazily, so this is where it shows)
            raise CacheError(f"{self._where(i)}: {exc}") from None
        except OSError as exc:
            raise CacheError(f"{self._where(i)}: read failed ({exc}); " + _FIX.format(root=self._root)) from exc
        if len(buf) != length:
            raise CacheError(
                f"{self._where(i)}: the shard ends early (got {len(buf)} of {length} bytes at offset {start}); "
                + _FIX.format(root=self._root)
            )
        view = memoryview(buf)
        parts = []
        for k, kind in enumerate(MEMBER_KINDS):
            off, size = (int(v) for v in self._member[i, k])
            data = view[off : off + size]
            if zlib.crc32(data) != int(self._crc[i, k]):
                ext = IMAGE_EXTENSIONS[self._image_ext[i]] if kind == "image" else LABEL_EXTENSIONS[kind]
                raise CacheError(
                    f"{self._where(i)}: member {self.key(i)}.{ext} fails its CRC-32 check (corrupt data); "
                    + _FIX.format(root=self._root)
                )
            parts.append(bytes(data))
        image, sem, ins, off_png, heat, meta = parts
        try:
            meta_dict = decode_meta(meta)
        except CacheError as exc:
            raise CacheError(f"{self._where(i)}: {exc}") from None
        return SampleMembers(
            shard=self._manifest.shards[s].file,
            key=self.key(i),
            image=image,
            image_ext=IMAGE_EXTENSIONS[self._image_ext[i]],
            semantic=sem,
            instance=ins,
            offset=off_png,
            heatmap=heat,
            meta=meta_dict,
        )

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        i = self._index(i)
        members = self.read_members(i)
        height, width = self.image_size(i)
        try:
            sample = decode_members(members, offset_scale=self._manifest.offset_scale)
            check_shapes(sample, height, width, self._manifest.stride)
        except CacheError as exc:
            raise CacheError(f"{self._where(i)}: {exc}; " + _FIX.format(root=self._root)) from None
        return sample


def decode_members(members: SampleMembers, *, offset_scale: int) -> dict[str, Any]:
    """Decode every member of a sample (see `CacheDataset` for the dict's keys, dtypes and shapes)."""
    return {
        "image": decode_image(members.image),
        "semantic": decode_semantic(members.semantic),
        "instance": decode_instance(members.instance),
        "heatmap": decode_heatmap(members.heatmap),
        "offset": decode_offset(members.offset, offset_scale=offset_scale),
        "meta": members.meta,
    }


def check_shapes(sample: dict[str, Any], height: int, width: int, stride: int) -> None:
    """Raise CacheError when a decoded sample's arrays disagree with its size and the stride."""
    map_hw = map_shape(height, width, stride)
    expected = {
        "image": (height, width, 3),
        "semantic": (height, width),
        "instance": (height, width),
        "heatmap": map_hw,
        "offset": (2, *map_hw),
    }
    for name, shape in expected.items():
        if sample[name].shape != shape:
            raise CacheError(f"{name} has shape {sample[name].shape}, expected {shape}")
    meta = sample["meta"]
    if (meta.get("height"), meta.get("width")) != (height, width):
        raise CacheError(f"meta says {meta.get('height')} x {meta.get('width')}, the index {height} x {width}")


def open_cache(path: str | Path) -> CacheDataset:
    """Open a built cache folder (see `CacheDataset`).

    Raises
    ------
    CacheError
        No manifest (the build did not finish: resume it or merge the nodes' parts), a manifest from a newer
        fastload (upgrade), or a missing / short shard or shard index (named).
    """
    return CacheDataset(path)
