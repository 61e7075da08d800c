"""`CacheDataset`: a built cache as a random-access `Sequence` of samples, as stored (the storage every path reads).

Opening reads ``manifest.json`` and every shard's JSON index (no tar data: `fastload.cache.index`). A sample is
then one ``pread``
of its members' contiguous span, CRC-checked per member. File handles are opened lazily, per process, and
never pickled, so a `CacheDataset` can be handed to torch DataLoader workers (fork or spawn). Reads from many
threads run concurrently: the lock that guards the table of open files is held only to find a descriptor,
never across a read (a slow disk or a NAS then serves several reads at once).
"""

from __future__ import annotations

import hashlib
import operator
import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastload.advice import rebuild_shard
from fastload.cache.format import (
    IMAGE_EXTENSIONS,
    LABEL_EXTENSIONS,
    MEMBER_KINDS,
    SampleMembers,
    decode_image,
    decode_label,
)
from fastload.cache.index import CacheIndex
from fastload.cache.manifest import Manifest, load_manifest
from fastload.cache.validate import check_instance_ids, checked_sample
from fastload.errors import CacheError

# shard files a process keeps open (least recently used closed first): a shuffled epoch reads every shard,
# and a cache of more shards than the common soft limit of 1024 descriptors would otherwise hit EMFILE
MAX_OPEN_SHARDS = 64


class _Handle:
    """An open shard file and the reads using it: an evicted handle is closed by its last reader."""

    __slots__ = ("fd", "readers", "evicted")

    def __init__(self, fd: int) -> None:
        self.fd, self.readers, self.evicted = fd, 0, False


class CacheDataset(Sequence):
    """The samples of the cache at ``root``, in order (shard by shard), as stored.

    ``ds[i]`` decodes sample ``i`` (negative indices count from the end; out of range → IndexError)::

        image     uint8   (H, W, 3)  RGB, the source pixels
        semantic  uint8   (H, W)     train ids, 0 background, 255 ignore
        instance  int32   (H, W)     instance ids 1..N, 0 background
        meta      dict    {image_id, file_name, height, width, instances: [{id, annotation_id, category_id,
                           train_id, bbox, area, centre}, ...]}

    `fastload.open_cache` gives a `fastload.samples.CacheSamples`, which adds the heatmap and offsets of each
    sample's instance mask: the cache stores masks, and the loaders render the maps after augmentation instead.
    """

    def __init__(self, root: str | Path) -> None:
        self._root = Path(root)
        self._manifest = load_manifest(self._root)
        self._ix = CacheIndex(self._root, self._manifest)
        self._fds: OrderedDict[int, _Handle] = OrderedDict()  # shard → open file, least recently used first
        self._lock = threading.Lock()  # guards _fds only; never held across a read
        self._pid = os.getpid()

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
        """``length`` bytes of shard ``s`` from ``start``, through this process's (bounded) set of open files.

        The lock is held to find (or open) the descriptor and to count this read on it; the read itself runs
        unlocked, so reads from several threads overlap. A descriptor evicted (or closed by `close`) while
        reads use it is closed by the last of them.
        """
        if self._pid != os.getpid():  # forked: the parent's descriptors and lock are not ours to share
            self._fds, self._lock, self._pid = OrderedDict(), threading.Lock(), os.getpid()
        handle = self._acquire(s)
        try:
            return self.read_bytes(handle.fd, length, start)
        finally:
            with self._lock:
                handle.readers -= 1
                if handle.evicted and handle.readers == 0:
                    os.close(handle.fd)

    def read_bytes(self, fd: int, length: int, start: int) -> bytes:
        """One ``pread``: the single place where sample bytes come off the disk.

        Subclasses override it to model slow storage (``fastload bench --read-latency-ms``, the tests)."""
        return os.pread(fd, length, start)

    def _acquire(self, s: int) -> _Handle:
        with self._lock:
            handle = self._fds.get(s)
            if handle is None:
                shard = self._manifest.shards[s]
                try:
                    handle = _Handle(os.open(self._ix.tar_paths[s], os.O_RDONLY))
                except FileNotFoundError:
                    raise CacheError(f"shard {shard.file} is missing from {self._root}; rebuild it with --resume") from None
                self._fds[s] = handle
                if len(self._fds) > MAX_OPEN_SHARDS:
                    self._release(self._fds.popitem(last=False)[1])
            else:
                self._fds.move_to_end(s)
            handle.readers += 1
            return handle

    @staticmethod
    def _release(handle: _Handle) -> None:
        # called under the lock: close now, or let the last reader close it
        handle.evicted = True
        if handle.readers == 0:
            os.close(handle.fd)

    def close(self) -> None:
        """Close this process's shard files (they reopen on the next read; reads in progress finish first)."""
        if self._pid != os.getpid():
            self._fds = OrderedDict()
            return
        with self._lock:
            for handle in self._fds.values():
                self._release(handle)
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
    def fingerprint(self) -> str:
        """The content's identity: a hash of every shard's and shard index's sha256 (from the manifest). Two
        caches built from the same inputs and config share it; a rebuilt or another cache does not."""
        text = "|".join(f"{s.file}:{s.sha256}:{s.index_sha256}" for s in self._manifest.shards)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def root(self) -> Path:
        return self._root

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names by train id: ``classes[0] == "__background__"`` (train id 0), then the K categories
        (train ids 1..K, COCO-id order). The ignore label 255 (crowd regions) is not a class."""
        return self._manifest.classes

    @property
    def num_classes(self) -> int:
        """K + 1, background included: the number of logits a segmentation model needs (``len(classes)``)."""
        return self._manifest.num_classes

    def __len__(self) -> int:
        return len(self._ix.shard_of)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._root)!r}, samples={len(self)}, shards={len(self._manifest.shards)})"

    def _index(self, i: Any) -> int:
        i = operator.index(i)  # ints and NumPy integers; slices are not supported
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"cache index {i} out of range for {n} samples")
        return i

    def span(self, i: int) -> tuple[int, int]:
        """Where sample ``i``'s members lie in its shard's tar: (offset of the first member's data, bytes)."""
        start, length = self._ix.span[self._index(i)]
        return int(start), int(length)

    def span_bytes(self, i: int) -> int:
        """Bytes one `read_members` of sample ``i`` reads (from the index, no tar read)."""
        return int(self._ix.span[self._index(i), 1])

    @property
    def image_sizes(self) -> np.ndarray:
        """int32 (N, 2): every sample's ``(H, W)``, from the index (a read-only view; no tar read)."""
        view = self._ix.hw.view()
        view.flags.writeable = False
        return view

    def image_size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of sample ``i`` from the index (no tar read)."""
        i = self._index(i)
        return int(self._ix.hw[i, 0]), int(self._ix.hw[i, 1])

    def key(self, i: int) -> str:
        """Sample key (the image's position in the COCO list, ``%08d``)."""
        return f"{int(self._ix.position[self._index(i)]):08d}"

    def image_id(self, i: int) -> int:
        return int(self._ix.image_id[self._index(i)])

    def _where(self, i: int) -> str:
        return f"shard {self._manifest.shards[self._ix.shard_of[i]].file}, sample {self.key(i)} (cache index {i})"

    def read_members(self, i: int) -> SampleMembers:
        """The encoded members of sample ``i``: one read, each member's CRC-32 checked, then the members checked
        against each other and the index from their headers (`fastload.cache.validate.checked_sample`), before
        any decoder sees them; ``meta`` is parsed within bounds.

        Raises
        ------
        CacheError
            Naming the shard file and the sample (and the member and field), when the shard is missing or short,
            a CRC disagrees or a check fails.
        """
        i = self._index(i)
        s = int(self._ix.shard_of[i])
        start, length = (int(v) for v in self._ix.span[i])
        try:
            buf = self._pread(s, length, start)
        except CacheError as exc:  # the shard file is gone (opened lazily, so this is where it shows)
            raise CacheError(f"{self._where(i)}: {exc}") from None
        except OSError as exc:
            raise CacheError(f"{self._where(i)}: read failed ({exc}); " + rebuild_shard(self._root)) from exc
        if len(buf) != length:
            raise CacheError(
                f"{self._where(i)}: the shard ends early (got {len(buf)} of {length} bytes at offset {start}); "
                + rebuild_shard(self._root)
            )
        view = memoryview(buf)
        parts = []
        spans, crcs = self._ix.member[i].tolist(), self._ix.crc[i].tolist()  # one conversion for the four members
        for k, kind in enumerate(MEMBER_KINDS):
            off, size = spans[k]
            data = view[off : off + size]
            if zlib.crc32(data) != crcs[k]:
                ext = IMAGE_EXTENSIONS[self._ix.image_ext[i]] if kind == "image" else LABEL_EXTENSIONS[kind]
                raise CacheError(
                    f"{self._where(i)}: member {self.key(i)}.{ext} fails its CRC-32 check (corrupt data); "
                    + rebuild_shard(self._root)
                )
            parts.append(bytes(data))
        image, sem, ins, meta = parts
        try:  # the content, before anything decodes it (fastload.cache.validate)
            checked = checked_sample(
                image=image,
                semantic=sem,
                instance=ins,
                meta=meta,
                hw=self.image_size(i),
                image_id=self.image_id(i),
                max_pixels=self._manifest.max_image_pixels,
            )
        except CacheError as exc:
            raise CacheError(f"{self._where(i)}: {exc}; " + rebuild_shard(self._root)) from None
        return SampleMembers(
            shard=self._manifest.shards[s].file,
            key=self.key(i),
            image=image,
            image_ext=IMAGE_EXTENSIONS[self._ix.image_ext[i]],
            semantic=sem,
            instance=ins,
            meta=checked.meta,
            layouts=(checked.semantic, checked.instance),
        )

    def labels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i``'s masks as stored, without the image or maps: uint8 semantic, uint16 instance (H, W)."""
        i = self._index(i)
        members = self.read_members(i)  # its errors name the shard and the sample already
        try:
            return decode_labels(members, self.image_size(i))
        except CacheError as exc:
            raise CacheError(f"{self._where(i)}: {exc}; " + rebuild_shard(self._root)) from None

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        i = self._index(i)
        members = self.read_members(i)
        height, width = self.image_size(i)
        try:
            sample = decode_members(members, (height, width))
        except CacheError as exc:
            raise CacheError(f"{self._where(i)}: {exc}; " + rebuild_shard(self._root)) from None
        sample["instance"] = sample["instance"].astype(np.int32)  # the dict's contract: int32 ids
        return sample


def decode_labels(members: SampleMembers, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The semantic (uint8) and instance (uint16) masks of a sample, (H, W) each, checked against its size ``hw``
    and, the instance ids, against the meta's instance count (`fastload.cache.validate.check_instance_ids`)."""
    semantic = decode_label(members.semantic, kind="sem", layout=members.layouts[0])  # headers checked by the read
    instance = decode_label(members.instance, kind="ins", layout=members.layouts[1])
    for name, array in (("semantic", semantic), ("instance", instance)):
        if array.shape != tuple(hw):
            raise CacheError(f"{name} mask is {array.shape[0]} x {array.shape[1]}, the sample {hw[0]} x {hw[1]}")
    check_instance_ids(instance, members.instance_count)
    return semantic, instance


def decode_members(members: SampleMembers, hw: tuple[int, int]) -> dict[str, Any]:
    """Decode a sample's members (as `CacheDataset.read_members` checked them): ``image`` uint8 (H, W, 3) RGB,
    ``semantic`` uint8 and ``instance`` uint16 (H, W) as stored, ``meta``.

    Raises CacheError when a member does not decode or disagrees with the sample's size ``hw``.
    """
    image = decode_image(members.image)
    if image.shape[:2] != tuple(hw):
        raise CacheError(f"image decodes to {image.shape[0]} x {image.shape[1]}, the sample is {hw[0]} x {hw[1]}")
    semantic, instance = decode_labels(members, hw)
    return {"image": image, "semantic": semantic, "instance": instance, "meta": members.meta}
