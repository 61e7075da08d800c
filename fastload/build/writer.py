"""One shard of a cache: each image checked and encoded (`encode_sample`), written by a `ShardWriter`.

The work is a thin shell around pure functions: `fastload.build.imagefile.read_checked_image` checks and
normalises each image file, the image's `fastload.build.sources.LabelImage.labels` makes the masks (whatever the
input format) and ``table()`` the instance table, `fastload.cache.format` encodes them. A `ShardWriter` takes the samples one by one (``add``, or ``skip`` for one
left out) and ``close`` returns the typed `ShardRecord` it wrote last: every file appears atomically (``*.tmp``
then ``os.replace``), the tar and both indexes first, the shard's ``.done.json`` last. A killed build therefore
never leaves a shard that looks complete, and a resumed one keeps exactly the shards whose record and hashes
check out (`check_done_record`).
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from fastload.build.assemble import done_name, pretty_json, write_atomic
from fastload.build.imagefile import read_checked_image
from fastload.build.rules import OnError, resolve_image_path
from fastload.build.sources import LabelImage
from fastload.cache.config import CacheConfig
from fastload.cache.format import (
    LABEL_DTYPES,
    LABEL_EXTENSIONS,
    MEMBER_KINDS,
    SCHEMA_VERSION,
    TarWriter,
    dali_index_text,
    encode_label,
    encode_meta,
    sample_key,
    shard_stem,
)
from fastload.cache.jsonio import dumps_canonical
from fastload.cache.manifest import BYTE_KINDS, MemberBytes, NormalisedInfo, SkipInfo, read_json, sha256_file
from fastload.errors import AnnotationError, CacheError, ImageError
from fastload.labels import MAX_INSTANCES
from fastload.validation import is_int

FIX_IMAGE = "fix or replace the file (or its entry in the annotations), or pass --on-error skip"


# ----------------------------------------------------------------------------------------------- one sample


class _SampleProblem(Exception):
    """Internal: this image cannot be cached; ``kind`` picks ImageError or AnnotationError under "fail".

    ``complete``: the reason is a whole message already (a label reader's error names the image, file and fix).
    """

    def __init__(self, kind: Literal["image", "annotation"], reason: str, *, complete: bool = False):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.complete = complete


@dataclass(frozen=True)
class EncodedSample:
    """A sample's members in tar order ``(kind, name, bytes)`` and what the manifest counts about it.

    instances_per_class : train id -> instances (things only: an instance is one)
    pixels_per_class : semantic value (0 background, 1..K, 255 ignore) -> pixels, the values present
    normalised : how the build changed the image's bytes (`fastload.build.imagefile.CheckedImage.normalised`), or None
    """

    members: tuple[tuple[str, str, bytes], ...]
    instances_per_class: dict[int, int]
    pixels_per_class: dict[int, int]
    normalised: str | None = None


def encode_sample(record: LabelImage, position: int, image_root: Path, cfg: CacheConfig) -> EncodedSample:
    """Check one image, compute its masks (`LabelImage.labels`) and encode all its members.

    Pure apart from reading the image file and the label files (a panoptic PNG) it names.
    """
    try:
        path = resolve_image_path(image_root, record)
    except AnnotationError as exc:
        raise _SampleProblem("annotation", str(exc)) from None
    try:
        image = read_checked_image(path, record.height, record.width, cfg)
    except ImageError as exc:
        raise _SampleProblem("image", str(exc)) from None
    try:
        labels = record.labels(max_image_pixels=cfg.max_image_pixels)
    except ImageError as exc:
        raise _SampleProblem("image", str(exc), complete=True) from None
    except AnnotationError as exc:
        raise _SampleProblem("annotation", str(exc), complete=True) from None
    if len(labels.instances) > MAX_INSTANCES:
        raise _SampleProblem(
            "annotation", f"{len(labels.instances)} visible instances; a cache sample holds at most {MAX_INSTANCES}"
        )
    table = labels.table()
    level = cfg.label_compression
    meta = {
        "image_id": record.image_id,
        "file_name": record.file_name,
        "height": record.height,
        "width": record.width,
        "instances": table,
    }
    key = sample_key(position)
    members = (
        ("image", f"{key}.{image.fmt}", image.data),
        ("sem", f"{key}.{LABEL_EXTENSIONS['sem']}", encode_label(labels.semantic, kind="sem", level=level)),
        ("ins", f"{key}.{LABEL_EXTENSIONS['ins']}", encode_label(labels.instance, kind="ins", level=level)),
        ("meta", f"{key}.{LABEL_EXTENSIONS['meta']}", encode_meta(meta)),
    )
    per_class = Counter(int(row["train_id"]) for row in table)
    pixels = np.bincount(labels.semantic.ravel(), minlength=256)
    return EncodedSample(members, dict(per_class), {int(v): int(pixels[v]) for v in np.flatnonzero(pixels)}, image.normalised)


# ----------------------------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class ShardFile:
    """One file of a shard as its completion record lists it (the manifest's `ShardInfo` repeats these)."""

    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardRecord:
    """A shard's completion record, ``shard-XXXXX.done.json``: what the manifest sums, and what resume checks.

    Skips, normalisations and member bytes are the manifest's own records (`fastload.cache.manifest`);
    ``files`` is None when every image of the shard was skipped (no files: DALI cannot index an empty tar).
    """

    shard: int
    fingerprint: str  # `fastload.build.fingerprint.shard_fingerprint`: the inputs the bytes depend on
    samples: int
    instances_per_class: tuple[tuple[int, int], ...]  # (train id, instances), by train id
    pixels_per_class: tuple[tuple[int, int], ...]  # (semantic value 0..255, pixels), by value; values present
    member_bytes: MemberBytes
    skips: tuple[SkipInfo, ...]
    normalised: tuple[NormalisedInfo, ...]
    files: tuple[ShardFile, ShardFile, ShardFile] | None  # the tar, our JSON index, DALI's index

    @property
    def instances(self) -> int:
        return sum(count for _, count in self.instances_per_class)

    def to_json(self) -> dict[str, Any]:
        """The record as written (`fastload.cache.manifest.pretty_json` of this)."""
        files = None if self.files is None else dict(zip(("tar", "json", "idx"), map(asdict, self.files), strict=True))
        return {
            "schema_version": SCHEMA_VERSION,
            "shard": self.shard,
            "fingerprint": self.fingerprint,
            "samples": self.samples,
            "instances": self.instances,
            "instances_per_class": {str(k): v for k, v in self.instances_per_class},
            "pixels_per_class": {str(k): v for k, v in self.pixels_per_class},
            "member_bytes": asdict(self.member_bytes),
            "skips": [asdict(s) for s in self.skips],
            "normalised": [asdict(n) for n in self.normalised],
            "files": files,
        }


def _file_of(name: str, data: bytes) -> ShardFile:
    return ShardFile(name, len(data), hashlib.sha256(data).hexdigest())


# ----------------------------------------------------------------------------------------------- the writer


class ShardWriter:
    """Writes shard ``shard`` of the cache in ``out``: ``add`` each encoded sample, ``close()`` -> `ShardRecord`.

    Opening it removes the shard's completion record first: from then on the shard does not look complete until
    ``close`` has written the tar, both indexes and the new record. Leaving a ``with`` block on an exception
    (``abort``) removes the tar's ``.tmp``.
    """

    def __init__(self, out: Path, shard: int, *, fingerprint: str) -> None:
        self._out, self._shard, self._fingerprint = out, shard, fingerprint
        self._stem = shard_stem(shard)
        self._tmp = out / f"{self._stem}.tar.tmp"
        (out / done_name(shard)).unlink(missing_ok=True)
        self._fh: BinaryIO | None = open(self._tmp, "wb")  # closed by close() or abort()
        self._tar = TarWriter(self._fh)
        self._index: list[dict[str, Any]] = []  # our JSON index: one entry per sample
        self._dali: list[list[tuple[str, int, int, str]]] = []  # DALI's index: one line per sample
        self._skips: list[SkipInfo] = []
        self._normalised: list[NormalisedInfo] = []
        self._per_class: Counter[int] = Counter()
        self._pixels: Counter[int] = Counter()
        self._member_bytes = dict.fromkeys(MEMBER_KINDS, 0)

    def add(self, record: LabelImage, position: int, sample: EncodedSample) -> None:
        """Append one sample's members to the tar and its entries to both indexes."""
        members, dali_members = [], []
        for kind, name, data in sample.members:
            offset = self._tar.add(name, data)
            entry = {"kind": kind, "name": name, "offset": offset, "size": len(data), "crc32": zlib.crc32(data)}
            if kind in LABEL_DTYPES:  # what the label decodes to, for readers that never open it
                entry.update(shape=[record.height, record.width], dtype=LABEL_DTYPES[kind].name)
            members.append(entry)
            dali_members.append((name.split(".", 1)[1], offset, len(data), name))
            self._member_bytes[kind] += len(data)
        key = sample_key(position)
        self._index.append({"key": key, "image_id": record.image_id, "height": record.height, "width": record.width, "members": members})
        self._dali.append(dali_members)
        if sample.normalised:
            self._normalised.append(NormalisedInfo(record.image_id, record.file_name, sample.normalised))
        self._per_class.update(sample.instances_per_class)
        self._pixels.update(sample.pixels_per_class)

    def skip(self, record: LabelImage, reason: str) -> None:
        """Record an image left out (``on_error="skip"``)."""
        self._skips.append(SkipInfo(record.image_id, None, record.file_name, reason))

    def close(self) -> ShardRecord:
        """Finish the tar, write both indexes, put the tar in place, then the completion record; return it."""
        tar_bytes, tar_sha = self._tar.finish()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        out, stem = self._out, self._stem
        files = None
        if self._index:
            index = dumps_canonical({"schema_version": SCHEMA_VERSION, "shard": f"{stem}.tar", "samples": self._index})
            dali = dali_index_text(self._dali).encode("ascii")  # compact JSON above: opening a cache parses them all
            write_atomic(out / f"{stem}.json", index)
            write_atomic(out / f"{stem}.idx", dali)
            os.replace(self._tmp, out / f"{stem}.tar")
            files = (ShardFile(f"{stem}.tar", tar_bytes, tar_sha), _file_of(f"{stem}.json", index), _file_of(f"{stem}.idx", dali))
        else:  # every image skipped: no files; the record says so
            self._tmp.unlink(missing_ok=True)
            for suffix in (".tar", ".json", ".idx"):
                (out / f"{stem}{suffix}").unlink(missing_ok=True)
        record = ShardRecord(
            shard=self._shard,
            fingerprint=self._fingerprint,
            samples=len(self._index),
            instances_per_class=tuple(sorted(self._per_class.items())),
            pixels_per_class=tuple(sorted(self._pixels.items())),
            member_bytes=MemberBytes(**self._member_bytes),
            skips=tuple(self._skips),
            normalised=tuple(self._normalised),
            files=files,
        )
        write_atomic(out / done_name(self._shard), pretty_json(record.to_json()))
        return record

    def abort(self) -> None:
        """Stop without a shard: close and remove the tar's ``.tmp`` (the other files appear only in ``close``)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self.abort()


# ----------------------------------------------------------------------------------------------- one shard


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to build shard ``shard`` (records travel with the task)."""

    shard: int
    items: tuple[tuple[int, LabelImage], ...]  # (position, image)
    out: Path
    image_root: Path
    config: CacheConfig
    on_error: OnError
    fingerprint: str


def build_shard(task: ShardTask, progress: Callable[[int], None] = lambda n: None) -> ShardRecord:
    """Encode every image of the task into one shard (`ShardWriter`); return its completion record."""
    with ShardWriter(task.out, task.shard, fingerprint=task.fingerprint) as writer:
        for position, record in task.items:
            try:
                sample = encode_sample(record, position, task.image_root, task.config)
            except _SampleProblem as problem:
                if task.on_error == "fail":
                    error = ImageError if problem.kind == "image" else AnnotationError
                    if problem.complete:
                        raise error(problem.reason) from None
                    raise error(f"image {record.image_id} (file {record.file_name!r}): {problem.reason}; {FIX_IMAGE}") from None
                writer.skip(record, problem.reason)
            else:
                writer.add(record, position, sample)
            progress(1)
        return writer.close()


def _summable(record: dict[str, Any]) -> bool:
    """The fields `fastload.build.assemble.assemble_manifest` sums have their shapes: counts, per-class and
    per-member tables of integers, lists of skips and normalisations."""
    tables = (record.get("instances_per_class"), record.get("pixels_per_class"))
    member_bytes = record.get("member_bytes")
    return (
        all(is_int(record.get(k)) and record[k] >= 0 for k in ("samples", "instances"))
        and all(isinstance(t, dict) and all(is_int(v) for v in t.values()) for t in tables)
        and isinstance(member_bytes, dict)
        and all(is_int(member_bytes.get(kind)) for kind in BYTE_KINDS)
        and all(isinstance(record.get(k), list) and all(isinstance(e, dict) for e in record[k]) for k in ("skips", "normalised"))
    )


def check_done_record(out: Path, shard: int, fingerprint: str, on_error: OnError) -> dict[str, Any] | None:
    """The shard's completion record if the shard can be kept as is (resume), else ``None``.

    Kept when: the record parses, was made from the same inputs and config (fingerprint), its files exist
    with the recorded sha256, and it skipped nothing unless ``on_error="skip"`` (under "fail" a shard with
    skips is rebuilt so that the error is raised).
    """
    try:
        record = read_json(out / done_name(shard), what="completion record")
    except (FileNotFoundError, CacheError):
        return None
    if not isinstance(record, dict) or record.get("schema_version") != SCHEMA_VERSION:
        return None
    if record.get("shard") != shard or record.get("fingerprint") != fingerprint:
        return None
    if record.get("skips") and on_error == "fail":
        return None
    if not _summable(record):  # from before normalisations and pixel counts were recorded, or edited: rebuild
        return None
    files = record.get("files")
    if files is None:
        return record if record.get("samples") == 0 else None
    try:
        for kind in ("tar", "json", "idx"):
            entry = files[kind]
            path = out / entry["name"]
            if path.name != entry["name"] or not path.is_file():
                return None
            if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
                return None
    except (KeyError, TypeError, AttributeError):  # valid JSON of another shape (damaged, edited): rebuild
        return None
    return record
