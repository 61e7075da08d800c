"""`verify_cache`: re-hash every shard against the manifest and decode every sample completely."""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastload.cache.format import MEMBER_KINDS, SCHEMA_VERSION, SampleMembers, dali_index_text
from fastload.cache.manifest import Manifest, ShardInfo, load_manifest, read_json, sha256_file
from fastload.cache.reader import decode_members
from fastload.cache.validate import checked_sample, shard_path
from fastload.errors import CacheError
from fastload.labels import IGNORE


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_cache` checked and every problem found (each names the shard file and sample)."""

    shards: int
    samples: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_cache(path: str | Path, *, progress: bool = False) -> VerifyReport:
    """Check a cache end to end; problems are collected, not raised, so one run lists them all.

    Per shard: the tar, our JSON index and DALI's index lie inside the cache folder (symlinks followed) and
    exist with the manifest's sizes and sha256, and DALI's index equals the one our index implies. Per sample:
    each member lies inside the tar, its tar header names it with the right size, its CRC-32 matches, the
    members pass the loaders' own checks (`fastload.cache.validate.checked_sample`: headers, sizes, bounds),
    every member decodes to the sample's height and width, the instance mask holds no id beyond the instance
    table, the semantic mask only train ids of the manifest (or 255), and instance ids only cover pixels of thing
    classes, whose train ids alone the instance table names (`instances_off_things`). A hostile sample is
    reported like a damaged one, and the run goes on.

    Raises
    ------
    CacheError
        Only when there is no readable manifest (nothing to verify against).
    """
    from tqdm import tqdm

    root = Path(path)
    manifest = load_manifest(root)
    problems: list[str] = []
    checked = 0
    with tqdm(total=manifest.samples, unit="sample", desc="verify", disable=not progress) as bar:
        for shard in manifest.shards:
            samples = _check_shard_files(root, shard, problems)
            if samples is None:
                bar.update(shard.samples)
                continue
            with open(shard_path(root, shard.file), "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                for sample in samples:
                    problem = _check_sample(fh, size, sample, manifest)
                    if problem:
                        problems.append(f"{shard.file} sample {sample.get('key', '?')}: {problem}")
                    checked += 1
                    bar.update(1)
    total = sum(s.samples for s in manifest.shards)
    if total != manifest.samples:
        problems.append(f"manifest.json: shards hold {total} samples, counts say {manifest.samples}")
    return VerifyReport(shards=len(manifest.shards), samples=checked, problems=tuple(problems))


def _check_shard_files(root: Path, shard: ShardInfo, problems: list[str]) -> list[dict[str, Any]] | None:
    """Hash-check a shard's three files; return its index's samples when the tar is readable at all."""
    try:
        tar, index_path, dali = (shard_path(root, name) for name in (shard.file, shard.index_file, shard.dali_index))
    except CacheError as exc:
        problems.append(f"{shard.file}: {exc}")
        return None
    if not tar.is_file():
        problems.append(f"{shard.file}: missing")
        return None
    size = tar.stat().st_size
    if size != shard.bytes:
        problems.append(f"{shard.file}: {size} bytes, the manifest says {shard.bytes} (truncated or replaced)")
    elif sha256_file(tar) != shard.sha256:
        problems.append(f"{shard.file}: sha256 differs from the manifest (corrupt data; see the samples below)")
    if not index_path.is_file():
        problems.append(f"{shard.index_file}: missing (index of {shard.file})")
        return None
    if hashlib.sha256(index_path.read_bytes()).hexdigest() != shard.index_sha256:
        problems.append(f"{shard.index_file}: sha256 differs from the manifest")
    try:
        index = read_json(index_path, what="shard index")
        samples = index["samples"]
        if index.get("schema_version") != SCHEMA_VERSION or len(samples) != shard.samples:
            raise ValueError(f"expected schema_version {SCHEMA_VERSION} and {shard.samples} samples")
        expected_idx = dali_index_text(
            [(m["name"].split(".", 1)[1], m["offset"], m["size"], m["name"]) for m in s["members"]] for s in samples
        ).encode("ascii")
    except (CacheError, KeyError, TypeError, ValueError) as exc:
        problems.append(f"{shard.index_file}: malformed ({exc})")
        return None
    if not dali.is_file():
        problems.append(f"{shard.dali_index}: missing (DALI index of {shard.file})")
    elif dali.read_bytes() != expected_idx:
        problems.append(f"{shard.dali_index}: does not match {shard.index_file} (DALI would read the wrong bytes)")
    return samples


def _check_sample(fh: Any, tar_bytes: int, sample: dict[str, Any], manifest: Manifest) -> str | None:
    try:
        members = sample["members"]
        if [m["kind"] for m in members] != list(MEMBER_KINDS):
            return f"members {[m['kind'] for m in members]}, expected {list(MEMBER_KINDS)}"
        data = {}
        for m in members:
            payload = _read_member(fh, tar_bytes, m)
            if isinstance(payload, str):
                return payload
            data[m["kind"]] = payload
        checked = checked_sample(
            image=data["image"],
            semantic=data["sem"],
            instance=data["ins"],
            meta=data["meta"],
            hw=(sample["height"], sample["width"]),
            image_id=sample["image_id"],
            max_pixels=manifest.max_image_pixels,
        )
        members_obj = SampleMembers(
            shard="",
            key=sample["key"],
            image=data["image"],
            image_ext=members[0]["name"].split(".", 1)[1],
            semantic=data["sem"],
            instance=data["ins"],
            meta=checked.meta,
            layouts=(checked.semantic, checked.instance),
        )
        decoded = decode_members(members_obj, (sample["height"], sample["width"]))
        labels = set(np.unique(decoded["semantic"]).tolist()) - {IGNORE}
        if labels and max(labels) >= manifest.num_classes:
            return f"semantic mask holds train id {max(labels)}; the manifest has {manifest.num_classes - 1} classes"
        problem = instances_off_things(decoded["semantic"], decoded["instance"], checked.meta["instances"], manifest)
        if problem:
            return problem
    except (CacheError, tarfile.TarError) as exc:
        return str(exc)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return f"index entry malformed ({type(exc).__name__}: {exc})"
    return None


def instances_off_things(semantic: np.ndarray, instance: np.ndarray, table: list[Any], manifest: Manifest) -> str | None:
    """Why a sample's instances are not all things, or None: an instance pixel must lie on a thing class (not
    on stuff, background or ignore: those have instance 0), and each instance-table row must name a thing."""
    things = manifest.thing_train_ids
    names = dict(enumerate(manifest.classes)) | {IGNORE: "ignore"}
    rows = [row.get("train_id") for row in table]
    bad_rows = sorted({t for t in rows if t not in things}, key=str)
    if bad_rows:
        return f"instance table rows name train id(s) {bad_rows[:5]}, which are not thing classes (things: {list(things)[:10]})"
    lut = np.ones(256, bool)
    lut[list(things)] = False  # True: not a thing
    off = (instance > 0) & lut[semantic]
    if not off.any():
        return None
    values, counts = np.unique(semantic[off], return_counts=True)
    where = ", ".join(
        f"{int(n)} px on {int(v)} ({names.get(int(v), '?')}, {_kind(int(v), manifest)})" for v, n in zip(values[:5], counts[:5], strict=True)
    )
    ids = np.unique(instance[off])[:5].tolist()
    return f"instance mask: instance(s) {ids} cover pixels whose class is not a thing: {where}; stuff, background and ignore have instance 0"


def _kind(value: int, manifest: Manifest) -> str:
    if value in manifest.stuff_train_ids:
        return "stuff"
    return "ignore" if value == IGNORE else "background" if value == 0 else "not a class"


def _read_member(fh: Any, tar_bytes: int, m: dict[str, Any]) -> bytes | str:
    """A member's bytes, its tar header and CRC-32 checked; or the problem. Reads only inside the tar."""
    offset, size = m["offset"], m["size"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (offset, size)):
        return f"member {m['name']}: offset and size must be integers, got {offset!r} and {size!r}"
    if offset < 512 or size < 0 or offset + size > tar_bytes:
        return f"member {m['name']}: {size} bytes at offset {offset} do not lie inside the {tar_bytes}-byte tar"
    fh.seek(offset - 512)
    raw = fh.read(512 + size)
    if len(raw) != 512 + size:
        return f"member {m['name']}: the shard ends early"
    try:
        header = tarfile.TarInfo.frombuf(raw[:512], "utf-8", "strict")
    except tarfile.HeaderError as exc:
        return f"member {m['name']}: its tar header is corrupt ({exc})"
    if header.name != m["name"] or header.size != size:
        return f"member {m['name']}: tar header says {header.name!r} of {header.size} bytes"
    payload = raw[512:]
    if zlib.crc32(payload) != m["crc32"]:
        return f"member {m['name']}: CRC-32 mismatch (corrupt data)"
    return payload
