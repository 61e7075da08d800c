"""`build_cache`: COCO + images → sharded cache (tar shards, both indexes, completion records, manifest).

The work is a thin shell around pure functions: ``load_coco`` validates the annotations,
`fastload.build.imagefile.read_checked_image` checks and normalises each image file, ``rasterize_image``
makes the masks and ``instance_table`` the instance table, `fastload.cache.format` encodes them. Each worker process builds whole
shards, so a shard's bytes depend only on its images and the config (never on the worker count), and every
file appears atomically: ``*.tmp`` then ``os.replace``, the shard's ``.done.json`` last, ``manifest.json``
after all shards. A killed build therefore never leaves a shard that looks complete, and ``resume=True``
keeps exactly the shards whose record and hashes check out.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
import queue as queue_mod
import re
import signal
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from tqdm import tqdm

from fastload import __version__
from fastload.build.coco import load_coco, resolve_image_path
from fastload.build.imagefile import read_checked_image
from fastload.build.lock import build_lock, storage_error
from fastload.build.raster import rasterize_image
from fastload.build.split import assign, check_split, split_of
from fastload.build.tables import instance_table
from fastload.cache.config import CacheConfig, as_cache_config
from fastload.cache.format import (
    LABEL_DTYPES,
    LABEL_EXTENSIONS,
    MEMBER_KINDS,
    SCHEMA_VERSION,
    TarWriter,
    dali_index_text,
    dumps_canonical,
    encode_label,
    encode_meta,
    sample_key,
    shard_stem,
)
from fastload.cache.manifest import (
    MANIFEST_NAME,
    assemble_manifest,
    done_name,
    part_name,
    pretty_json,
    read_json,
    sha256_file,
    write_atomic,
)
from fastload.errors import AnnotationError, CacheError, ConfigError, FastloadError, ImageError
from fastload.labels import MAX_INSTANCES
from fastload.procs import die_with_parent
from fastload.validation import MAX_NUM_NODES, MAX_THREADS, check_int, is_int, short_repr

OnError = Literal["fail", "skip"]
FIX_IMAGE = "fix or replace the file (or its COCO entry), or pass --on-error skip"
# names a build may find in (and remove from) its output folder; anything else means "not a cache folder"
_LOCK_FILE = re.compile(r"^build(\.part-\d+-of-\d+)?\.lock$")  # fastload.build.lock: this build's own
_OWN_FILE = re.compile(
    r"^(manifest(\.part-\d+-of-\d+)?\.json|shard-(?P<shard>\d{5,})\.(tar|idx|json|done\.json))(\.tmp)?$|"
    + _LOCK_FILE.pattern
)


# ----------------------------------------------------------------------------------------------- one sample


class _SampleProblem(Exception):
    """Internal: this image cannot be cached; ``kind`` picks ImageError or AnnotationError under "fail"."""

    def __init__(self, kind: Literal["image", "annotation"], reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class EncodedSample:
    """A sample's members in tar order ``(kind, name, bytes)`` and what the manifest counts about it.

    normalised : how the build changed the image's bytes (`fastload.build.imagefile.CheckedImage.normalised`), or None
    """

    members: tuple[tuple[str, str, bytes], ...]
    instances_per_class: dict[int, int]
    normalised: str | None = None


def encode_sample(record: Any, position: int, image_root: Path, cfg: CacheConfig) -> EncodedSample:
    """Check one image and encode all its members (pure apart from reading the image file)."""
    try:
        path = resolve_image_path(image_root, record)
    except AnnotationError as exc:
        raise _SampleProblem("annotation", str(exc)) from None
    try:
        image = read_checked_image(path, record.height, record.width, cfg)
    except ImageError as exc:
        raise _SampleProblem("image", str(exc)) from None
    raster = rasterize_image(record)
    if len(raster.instances) > MAX_INSTANCES:
        raise _SampleProblem(
            "annotation", f"{len(raster.instances)} visible instances; a cache sample holds at most {MAX_INSTANCES}"
        )
    table = instance_table(raster)
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
        ("sem", f"{key}.{LABEL_EXTENSIONS['sem']}", encode_label(raster.semantic, kind="sem", level=level)),
        ("ins", f"{key}.{LABEL_EXTENSIONS['ins']}", encode_label(raster.instance, kind="ins", level=level)),
        ("meta", f"{key}.{LABEL_EXTENSIONS['meta']}", encode_meta(meta)),
    )
    per_class = Counter(int(row["train_id"]) for row in table)
    return EncodedSample(members, dict(per_class), image.normalised)


# ----------------------------------------------------------------------------------------------- one shard


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to build shard ``shard`` (records travel with the task)."""

    shard: int
    items: tuple[tuple[int, Any], ...]  # (position, ImageRecord)
    out: Path
    image_root: Path
    config: CacheConfig
    on_error: OnError
    fingerprint: str


def _skip_entry(record: Any, reason: str) -> dict[str, Any]:
    return {"image_id": record.image_id, "annotation_id": None, "file_name": record.file_name, "reason": reason}


def build_shard(task: ShardTask, progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Build one shard's tar, DALI index and JSON index, then its completion record; return the record."""
    stem = shard_stem(task.shard)
    out = task.out
    done_path = out / done_name(task.shard)
    done_path.unlink(missing_ok=True)  # from here on the shard does not look complete until we finish
    tar_path, tar_tmp = out / f"{stem}.tar", out / f"{stem}.tar.tmp"
    index_entries: list[dict[str, Any]] = []
    dali_entries: list[list[tuple[str, int, int, str]]] = []
    skips: list[dict[str, Any]] = []
    normalised: list[dict[str, Any]] = []
    per_class: Counter[int] = Counter()
    member_bytes = dict.fromkeys(MEMBER_KINDS, 0)
    try:
        with open(tar_tmp, "wb") as fh:
            writer = TarWriter(fh)
            for position, record in task.items:
                try:
                    sample = encode_sample(record, position, task.image_root, task.config)
                except _SampleProblem as problem:
                    if task.on_error == "fail":
                        error = ImageError if problem.kind == "image" else AnnotationError
                        raise error(
                            f"image {record.image_id} (file {record.file_name!r}): {problem.reason}; {FIX_IMAGE}"
                        ) from None
                    skips.append(_skip_entry(record, problem.reason))
                    progress(1)
                    continue
                members, dali_members = [], []
                for kind, name, data in sample.members:
                    offset = writer.add(name, data)
                    entry = {"kind": kind, "name": name, "offset": offset, "size": len(data), "crc32": zlib.crc32(data)}
                    if kind in LABEL_DTYPES:  # what the label decodes to, for readers that never open it
                        entry.update(shape=[record.height, record.width], dtype=LABEL_DTYPES[kind].name)
                    members.append(entry)
                    dali_members.append((name.split(".", 1)[1], offset, len(data), name))
                    member_bytes[kind] += len(data)
                index_entries.append(
                    {
                        "key": sample_key(position),
                        "image_id": record.image_id,
                        "height": record.height,
                        "width": record.width,
                        "members": members,
                    }
                )
                dali_entries.append(dali_members)
                if sample.normalised:
                    normalised.append(
                        {"image_id": record.image_id, "file_name": record.file_name, "what": sample.normalised}
                    )
                per_class.update(sample.instances_per_class)
                progress(1)
            tar_bytes, tar_sha = writer.finish()
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tar_tmp.unlink(missing_ok=True)
        raise
    files = None
    if index_entries:
        index = {"schema_version": SCHEMA_VERSION, "shard": f"{stem}.tar", "samples": index_entries}
        index_bytes = dumps_canonical(index)  # compact: opening a cache parses every shard index
        idx_bytes = dali_index_text(dali_entries).encode("ascii")
        write_atomic(out / f"{stem}.json", index_bytes)
        write_atomic(out / f"{stem}.idx", idx_bytes)
        os.replace(tar_tmp, tar_path)
        files = {
            "tar": {"name": f"{stem}.tar", "bytes": tar_bytes, "sha256": tar_sha},
            "json": {"name": f"{stem}.json", "bytes": len(index_bytes), "sha256": hashlib.sha256(index_bytes).hexdigest()},
            "idx": {"name": f"{stem}.idx", "bytes": len(idx_bytes), "sha256": hashlib.sha256(idx_bytes).hexdigest()},
        }
    else:  # every image skipped: no files (DALI cannot index an empty tar); the record says so
        tar_tmp.unlink(missing_ok=True)
        for suffix in (".tar", ".json", ".idx"):
            (out / f"{stem}{suffix}").unlink(missing_ok=True)
    record = {
        "schema_version": SCHEMA_VERSION,
        "shard": task.shard,
        "fingerprint": task.fingerprint,
        "samples": len(index_entries),
        "instances": sum(per_class.values()),
        "instances_per_class": {str(k): v for k, v in sorted(per_class.items())},
        "member_bytes": member_bytes,
        "skips": skips,
        "normalised": normalised,
        "files": files,
    }
    write_atomic(done_path, pretty_json(record))
    return record


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
    if not isinstance(record.get("normalised"), list):  # a record from before normalisations were recorded
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


# ----------------------------------------------------------------------------------------------- fingerprints


def _instance_summary(inst: Any) -> dict[str, Any]:
    rle = inst.rle
    if rle is not None:
        counts = rle["counts"]
        rle = {"size": list(rle["size"]), "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
    return {
        "annotation_id": inst.annotation_id,
        "category_id": inst.category_id,
        "train_id": inst.train_id,
        "iscrowd": bool(inst.iscrowd),
        # NaN separates rings; JSON cannot hold NaN, and the hash needs the exact float bits anyway
        "polygons": [hashlib.sha256(np.ascontiguousarray(p, dtype="<f8").tobytes()).hexdigest() for p in inst.polygons],
        "rle": rle,
    }


def _file_size(image_root: Path, record: Any) -> int | None:
    try:
        return resolve_image_path(image_root, record).stat().st_size
    except (OSError, AnnotationError):
        return None


def shard_fingerprint(header: dict[str, Any], items: Sequence[tuple[int, Any]], image_root: Path) -> str:
    """sha256 of what a shard's bytes depend on: config, classes, records, and each image file's size.

    Image *contents* are not hashed (that would cost a full read of the data set on every resume): a file
    replaced by one of exactly the same size is not noticed; a fixed, added or removed file is.
    """
    payload = {
        "schema_version": SCHEMA_VERSION,
        "fastload_version": header["fastload_version"],
        "config": header["config"],
        "categories": header["categories"],
        "images": [
            {
                "position": position,
                "image_id": rec.image_id,
                "file_name": rec.file_name,
                "height": rec.height,
                "width": rec.width,
                "file_bytes": _file_size(image_root, rec),
                "instances": [_instance_summary(inst) for inst in rec.instances],
            }
            for position, rec in items
        ],
    }
    return hashlib.sha256(dumps_canonical(payload)).hexdigest()


# ----------------------------------------------------------------------------------------------- the build


_progress_queue: Any = None


def _init_worker(progress_queue: Any, parent: int) -> None:
    global _progress_queue
    die_with_parent(parent)  # a killed build leaves no worker behind
    _progress_queue = progress_queue
    cv2.setNumThreads(1)  # one shard per process; OpenCV's own threads would only compete


def _build_in_worker(task: ShardTask) -> dict[str, Any]:
    return build_shard(task, progress=_progress_queue.put)


def _run_tasks(tasks: list[ShardTask], workers: int, bar: Any) -> None:
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            build_shard(task, progress=bar.update)
        return
    # spawn, not fork: the parent may hold threads (torch, DALI, OpenCV) that a forked child would inherit
    # in an undefined state. A process pool executor, not multiprocessing.Pool: when a worker is killed
    # (SIGKILL, the out-of-memory killer) a Pool loses its shard and waits forever, and may deadlock in
    # terminate() on a queue lock the dead worker held; the executor reports it (BrokenProcessPool).
    ctx = mp.get_context("spawn")
    progress_queue = ctx.Queue()
    before = set(mp.active_children())
    executor = ProcessPoolExecutor(
        min(workers, len(tasks)), mp_context=ctx, initializer=_init_worker, initargs=(progress_queue, os.getpid())
    )
    failed = True
    try:
        pending = {executor.submit(_build_in_worker, task): task.shard for task in tasks}
        started = [p for p in mp.active_children() if p not in before]  # the executor's workers
        while pending:
            _drain(progress_queue, bar, timeout=0.1)
            for future in [f for f in pending if f.done()]:
                shard = pending.pop(future)
                try:
                    future.result()  # re-raises the worker's ImageError / AnnotationError
                except BrokenProcessPool:
                    raise _worker_died(started, [shard, *pending.values()]) from None
        _drain(progress_queue, bar, timeout=0)
        failed = False
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        if failed:  # stop the shards still being built at once: the build has failed anyway
            for proc in mp.active_children():
                if proc not in before:
                    proc.kill()
        executor.shutdown(wait=True)


def _worker_died(started: list[Any], unfinished: list[int]) -> CacheError:
    """The error for a build whose worker died: names the dead workers' signals and the unfinished shards."""
    codes = {p.pid: p.exitcode for p in started if p.exitcode not in (None, 0)}
    # the executor SIGTERMs the other workers once one died: name the cause first
    killed = {pid: code for pid, code in codes.items() if code != -signal.SIGTERM} or codes
    how = ", ".join(
        f"pid {pid}: signal {signal.Signals(-code).name}" if -code in signal.valid_signals() else f"pid {pid}: exit code {code}"
        for pid, code in killed.items()
    )
    return CacheError(
        f"a build worker process died ({how or 'killed'}), killed from outside (the out-of-memory killer?), "
        f"before shard(s) {sorted(unfinished)[:10]} reported back; the shards finished are kept: rerun with "
        "--resume (with fewer --workers if memory is short)"
    )


def _drain(progress_queue: Any, bar: Any, *, timeout: float) -> None:
    try:
        bar.update(progress_queue.get(timeout=timeout) if timeout else progress_queue.get_nowait())
        while True:
            bar.update(progress_queue.get_nowait())
    except queue_mod.Empty:
        pass


def _prepare_out(out: Path, num_shards: int, node_rank: int, num_nodes: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    foreign = sorted(p.name for p in out.iterdir() if not _OWN_FILE.match(p.name))
    if foreign:
        raise CacheError(
            f"refusing to build a cache in {out}: it holds files that are not part of a fastload cache "
            f"({foreign[:5]}); choose an empty or new folder"
        )
    # an older manifest would describe the old shards: it goes first, and comes back only when we finish
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    if num_nodes == 1:
        for part in out.glob("manifest.part-*.json"):
            part.unlink()
    else:
        (out / part_name(node_rank, num_nodes)).unlink(missing_ok=True)
    # this node's leftovers: temporary files of a killed build, shards of an earlier, larger build
    for path in out.glob("shard-*"):
        shard = int(_OWN_FILE.match(path.name)["shard"])
        if shard % num_nodes == node_rank and (shard >= num_shards or path.name.endswith(".tmp")):
            path.unlink()


def _check_nodes(node_rank: int | None, num_nodes: int | None) -> tuple[int, int]:
    if node_rank is None and num_nodes is None:
        return 0, 1
    if node_rank is None or num_nodes is None:
        raise ConfigError("pass both node_rank and num_nodes (--node-rank and --num-nodes), or neither")
    num_nodes = check_int("num_nodes", num_nodes, 1, MAX_NUM_NODES, why="partial manifests have 5-digit node numbers")
    if not is_int(node_rank) or not 0 <= node_rank < num_nodes:
        raise ConfigError(f"need 0 <= node_rank < num_nodes, got node_rank={short_repr(node_rank)} num_nodes={num_nodes}")
    return int(node_rank), num_nodes


def build_cache(
    *,
    coco: str | Path,
    images: str | Path,
    out: str | Path,
    config: CacheConfig | str | Path | dict | None = None,
    workers: int = 1,
    on_error: OnError = "fail",
    resume: bool = False,
    node_rank: int | None = None,
    num_nodes: int | None = None,
    progress: bool = True,
    split: Mapping[str, float] | None = None,
    split_seed: int = 0,
) -> Path:
    """Build (or resume, or build one node's share of) a cache. See docs/design.md "The cache".

    Parameters
    ----------
    coco : the COCO instances JSON
    images : the folder that ``file_name`` entries are relative to
    out : the cache folder (created; must hold nothing but cache files)
    config : a `CacheConfig`, a YAML path or shipped name (``"cache"``), a mapping, or None for the defaults
    workers : processes; each builds whole shards, so the output does not depend on it
    on_error : "fail" raises at the first bad image/annotation (ImageError / AnnotationError naming image id,
        file and fix); "skip" leaves it out and records it in the manifest
    resume : keep shards whose completion record and sha256 check out; rebuild the rest
    node_rank, num_nodes : build only shards k with k % num_nodes == node_rank and write a partial manifest
        (``fastload cache merge`` joins them); both None (the default) = one node
    progress : show a tqdm bar (per image) on stderr
    split : e.g. ``{"val": 0.1}``: one cache per split instead, ``out/train`` and ``out/val``, each image in
        one of them by a hash of (``split_seed``, image id) (`fastload.build.split`); every split keeps the
        whole category map, so train ids and ``num_classes`` agree between them
    split_seed : the seed of that draw

    Returns
    -------
    Path of the manifest written: ``out/manifest.json``, or the node's ``manifest.part-R-of-N.json``; with
    ``split``, the folder ``out`` holding one cache per split.
    """
    if on_error not in ("fail", "skip"):
        raise ConfigError(f"on_error must be one of ['fail', 'skip'], got {short_repr(on_error)}")
    workers = check_int("workers", workers, 1, MAX_THREADS, why="each is a process")
    split_seed = check_int("split_seed", split_seed, 0)
    fractions = check_split(split) if split is not None else None
    nodes = _check_nodes(node_rank, num_nodes)
    cfg = as_cache_config(config)
    coco, image_root, out = Path(coco), Path(images), Path(out)
    with build_lock(out, what="cache build", node=nodes if nodes[1] > 1 else None):  # refuses a second build at once
        if not image_root.is_dir():
            raise ImageError(f"image folder {str(image_root)!r} does not exist; pass the folder the COCO file_names are relative to")
        dataset = load_coco(coco, on_error=on_error)
        if not dataset.images:
            raise CacheError(f"{coco} has no (valid) images; nothing to cache")
        build = _Build(image_root, cfg, workers, on_error, resume, nodes, progress)
        try:
            return _build_caches(build, dataset, coco, out, fractions, split_seed)
        except OSError as exc:  # disk full, quota, permissions, I/O errors: in this process or in a worker
            if isinstance(exc, FastloadError):
                raise
            for folder in (out, *(p for p in out.iterdir() if p.is_dir())):  # a split build's caches too
                _remove_temporary_files(folder, *nodes)  # a full disk gets its space back now
            raise storage_error(exc, out) from exc


def _remove_temporary_files(out: Path, node_rank: int, num_nodes: int) -> None:
    """This node's ``*.tmp`` files (the workers are gone, and the lock keeps other builds out)."""
    mine = {f"{MANIFEST_NAME}.tmp", f"{part_name(node_rank, num_nodes)}.tmp"}
    for path in out.glob("*.tmp"):
        match = _OWN_FILE.match(path.name)
        if path.name in mine or (match and match["shard"] is not None and int(match["shard"]) % num_nodes == node_rank):
            path.unlink(missing_ok=True)


def _build_caches(build: _Build, dataset, coco: Path, out: Path, fractions, split_seed: int) -> Path:
    """The cache of ``dataset`` in ``out``, or with ``fractions`` one cache per split under it."""
    base = {
        "fastload_version": __version__,
        "config": build.cfg.to_dict(),
        "categories": [{"coco_id": c.coco_id, "train_id": c.train_id, "name": c.name} for c in dataset.categories],
        "coco_sha256": sha256_file(coco),
    }
    skips = [
        {"image_id": s.image_id, "annotation_id": s.annotation_id, "file_name": s.file_name, "reason": s.reason}
        for s in dataset.skips
    ]
    if fractions is None:
        return build.run(dataset.images, {**base, "coco_skips": skips}, out)
    parts = assign((r.image_id for r in dataset.images), seed=split_seed, fractions=fractions)
    _check_split_sizes(parts, fractions, split_seed)
    _prepare_split_out(out, list(parts))
    for name, positions in parts.items():
        mine = [s for s in skips if s["image_id"] is None or split_of(s["image_id"], seed=split_seed, fractions=fractions) == name]
        split_info = {"name": name, "fractions": fractions, "seed": split_seed}
        build.run(tuple(dataset.images[k] for k in positions), {**base, "coco_skips": mine, "split": split_info}, out / name)
    return out


def _check_split_sizes(parts: Mapping[str, list[int]], fractions: Mapping[str, float], seed: int) -> None:
    """A split without images cannot be a cache: say so before anything is written."""
    total = sum(len(p) for p in parts.values())
    empty = [name for name, positions in parts.items() if not positions]
    if empty:
        wanted = ", ".join(f"{name}={fraction:g}" for name, fraction in fractions.items())
        raise CacheError(
            f"--split {wanted} --seed {seed} puts none of the {total} images into {empty}: each image's split is "
            "drawn from its id, so a small fraction of a few images can come out empty; use a larger fraction or "
            "another --seed"
        )


def _prepare_split_out(out: Path, names: list[str]) -> None:
    """A split build's folder holds only the split caches (``train``, ``val``, ...), each a cache folder."""
    out.mkdir(parents=True, exist_ok=True)
    foreign = sorted(
        p.name for p in out.iterdir() if (p.name not in names or not p.is_dir()) and not _LOCK_FILE.match(p.name)
    )
    if foreign:
        raise CacheError(
            f"refusing to build split caches in {out}: it holds {foreign[:5]} besides the split folders {names}; "
            "choose an empty or new folder"
        )


@dataclass(frozen=True)
class _Build:
    """The settings of one build command, applied to one cache folder (`run`): the whole COCO file, or a split."""

    image_root: Path
    cfg: CacheConfig
    workers: int
    on_error: OnError
    resume: bool
    nodes: tuple[int, int]  # (node_rank, num_nodes)
    progress: bool

    def run(self, records: Sequence[Any], header: dict[str, Any], out: Path) -> Path:
        """Build ``records`` into ``out``; ``header`` holds everything but ``images`` and ``num_shards``."""
        node_rank, num_nodes = self.nodes
        spp = self.cfg.samples_per_shard
        num_shards = math.ceil(len(records) / spp)
        header = {**header, "images": len(records), "num_shards": num_shards}
        _prepare_out(out, num_shards, node_rank, num_nodes)

        positions = tuple(enumerate(records))
        tasks, kept = [], 0
        for shard in range(node_rank, num_shards, num_nodes):
            items = positions[shard * spp : (shard + 1) * spp]
            fingerprint = shard_fingerprint(header, items, self.image_root)
            if self.resume and check_done_record(out, shard, fingerprint, self.on_error) is not None:
                kept += len(items)
                continue
            tasks.append(ShardTask(shard, items, out, self.image_root, self.cfg, self.on_error, fingerprint))
        total = kept + sum(len(t.items) for t in tasks)
        with tqdm(total=total, initial=kept, unit="img", desc=f"cache {out.name}", disable=not self.progress, file=sys.stderr) as bar:
            _run_tasks(tasks, self.workers, bar)

        records_done = [read_json(out / done_name(k), what="completion record") for k in range(node_rank, num_shards, num_nodes)]
        if num_nodes == 1:
            path = out / MANIFEST_NAME
            write_atomic(path, pretty_json(assemble_manifest(header, records_done)))
        else:
            path = out / part_name(node_rank, num_nodes)
            part = {"schema_version": SCHEMA_VERSION, "node_rank": node_rank, "num_nodes": num_nodes, "header": header, "records": records_done}
            write_atomic(path, pretty_json(part))
        return path
