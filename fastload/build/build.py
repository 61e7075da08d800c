"""`build_cache`: a data set (COCO instances, COCO panoptic, Cityscapes) + images → a sharded cache (tar shards,
both indexes, completion records, manifest).

The orchestration around the shard writer (`fastload.build.writer`): the output folder held by the build lock
(`fastload.build.lock`) and checked to hold nothing but cache files, the annotations (`fastload.build.inputs`)
loaded and validated once,
the shards of this node (``--node-rank``/``--num-nodes``) fingerprinted (`fastload.build.fingerprint`), those
whose completion record checks out kept on ``--resume``, the others built by the worker processes
(`fastload.build.pool`), then ``manifest.json`` (or this node's partial manifest) written after every shard. With
``--split`` one such cache per split (`fastload.build.split`). A storage error (a full disk, a quota) removes this
node's temporary files and becomes the one-line `StorageError` (`fastload.build.lock.storage_error`).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fastload import __version__
from fastload.build.assemble import assemble_manifest, done_name, part_name, pretty_json, write_atomic
from fastload.build.fingerprint import shard_fingerprint
from fastload.build.inputs import BuildInput, select_input
from fastload.build.lock import build_lock, storage_error
from fastload.build.pool import run_tasks
from fastload.build.rules import ON_ERROR_CHOICES, OnError
from fastload.build.sources import LabelDataset, LabelImage
from fastload.build.split import assign, check_split, split_of
from fastload.build.writer import ShardTask, check_done_record
from fastload.cache.config import CacheConfig, as_cache_config
from fastload.cache.format import SCHEMA_VERSION
from fastload.cache.manifest import MANIFEST_NAME, read_json
from fastload.errors import CacheError, ConfigError, FastloadError
from fastload.validation import MAX_NUM_NODES, MAX_THREADS, check_int, is_int, short_repr

# names a build may find in (and remove from) its output folder; anything else means "not a cache folder"
_LOCK_FILE = re.compile(r"^build(\.part-\d+-of-\d+)?\.lock$")  # fastload.build.lock: this build's own
_OWN_FILE = re.compile(
    r"^(manifest(\.part-\d+-of-\d+)?\.json|shard-(?P<shard>\d{5,})\.(tar|idx|json|done\.json))(\.tmp)?$|"
    + _LOCK_FILE.pattern
)


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
    coco: str | Path | None = None,
    images: str | Path | None = None,
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
    panoptic: str | Path | None = None,
    panoptic_masks: str | Path | None = None,
    cityscapes: str | Path | None = None,
    cityscapes_split: str | None = None,
) -> Path:
    """Build (or resume, or build one node's share of) a cache. See docs/design.md "The cache".

    One data set, in one of three formats (`fastload.build.inputs`): ``coco`` (with ``images``), ``panoptic``
    and ``panoptic_masks`` (with ``images``), or ``cityscapes`` (with ``cityscapes_split``). Each gives the same
    schema-2 cache.

    Parameters
    ----------
    coco : the COCO instances JSON
    images : the folder that ``file_name`` entries are relative to (Cityscapes: default the root)
    panoptic, panoptic_masks : a COCO panoptic JSON and the folder of its segment-id PNGs
    cityscapes : a Cityscapes root (holding ``gtFine/`` and ``leftImg8bit/``)
    cityscapes_split : "train" (the default), "val" or "test": the Cityscapes split to read
    out : the cache folder (created; must hold nothing but cache files)
    config : a `CacheConfig`, a YAML path or shipped name (``"cache"``), a mapping, or None for the defaults;
        its ``things`` says which COCO instances categories are things (the other formats say it themselves)
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
    if on_error not in ON_ERROR_CHOICES:
        raise ConfigError(f"on_error must be one of {list(ON_ERROR_CHOICES)}, got {short_repr(on_error)}")
    workers = check_int("workers", workers, 1, MAX_THREADS, why="each is a process")
    split_seed = check_int("split_seed", split_seed, 0)
    fractions = check_split(split) if split is not None else None
    nodes = _check_nodes(node_rank, num_nodes)
    cfg = as_cache_config(config)
    source = select_input(
        coco=coco, panoptic=panoptic, panoptic_masks=panoptic_masks, cityscapes=cityscapes,
        cityscapes_split=cityscapes_split, images=images,
    )  # fmt: skip
    out = Path(out)
    with build_lock(out, what="cache build", node=nodes if nodes[1] > 1 else None):  # refuses a second build at once
        dataset = source.load(on_error=on_error, things=cfg.things)  # checks the input paths first
        if not dataset.images:
            raise CacheError(f"{source.annotations} has no (valid) images; nothing to cache")
        build = _Build(out, source.image_root, cfg, workers, on_error, resume, nodes, progress)
        try:
            return _build_caches(build, dataset, source, out, fractions, split_seed)
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


def _build_caches(build: _Build, dataset: LabelDataset, source: BuildInput, out: Path, fractions, split_seed: int) -> Path:
    """The cache of ``dataset`` in ``out``, or with ``fractions`` one cache per split under it."""
    base = {
        "fastload_version": __version__,
        "config": build.cfg.to_dict(),
        "categories": [asdict(c) for c in dataset.categories],  # coco_id, name, train_id, isthing
        "source": source.manifest_source(dataset),  # format, coco_sha256 (the annotations'), the Cityscapes split
    }
    skips = [asdict(s) for s in dataset.skips]
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
    """The settings of one build command, applied to one cache folder (`run`): the whole data set, or a split."""

    out: Path  # the command's output folder (a split build's caches are folders in it)
    image_root: Path
    cfg: CacheConfig
    workers: int
    on_error: OnError
    resume: bool
    nodes: tuple[int, int]  # (node_rank, num_nodes)
    progress: bool

    def run(self, records: Sequence[LabelImage], header: dict[str, Any], out: Path) -> Path:
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
            run_tasks(tasks, self.workers, bar, out=self.out)

        records_done = [read_json(out / done_name(k), what="completion record") for k in range(node_rank, num_shards, num_nodes)]
        if num_nodes == 1:
            path = out / MANIFEST_NAME
            write_atomic(path, pretty_json(assemble_manifest(header, records_done)))
        else:
            path = out / part_name(node_rank, num_nodes)
            part = {"schema_version": SCHEMA_VERSION, "node_rank": node_rank, "num_nodes": num_nodes, "header": header, "records": records_done}
            write_atomic(path, pretty_json(part))
        return path
