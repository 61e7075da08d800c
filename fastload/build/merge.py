"""`merge_cache`: join the partial manifests of a multi-node build into the one ``manifest.json``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastload.build.assemble import assemble_manifest, done_name, pretty_json, write_atomic
from fastload.build.lock import build_lock, storage_error
from fastload.cache.format import SCHEMA_VERSION
from fastload.cache.manifest import MANIFEST_NAME, read_json
from fastload.errors import CacheError, FastloadError

_PART = re.compile(r"^manifest\.part-(\d{5})-of-(\d{5})\.json$")


def _read_parts(root: Path) -> dict[int, dict[str, Any]]:
    found = sorted(((m, p) for p in root.iterdir() if (m := _PART.match(p.name))), key=lambda mp: mp[1].name)
    if not found:
        raise CacheError(f"{root} has no partial manifests (manifest.part-*.json); run `fastload cache build --node-rank i --num-nodes n` on every node first")
    totals = {int(m.group(2)) for m, _ in found}
    if len(totals) != 1:
        raise CacheError(f"{root} holds partial manifests of builds with different node counts {sorted(totals)}; rebuild with one --num-nodes")
    num_nodes = totals.pop()
    parts = {}
    for m, path in found:
        if int(m.group(1)) >= num_nodes:
            raise CacheError(f"{path.name}: node rank {int(m.group(1))} of a {num_nodes}-node build does not exist; remove the file")
        part = read_json(path, what="partial manifest")
        if not isinstance(part, dict) or part.get("schema_version") != SCHEMA_VERSION:
            raise CacheError(f"{path.name}: unknown schema (written by another fastload version?); rebuild that node")
        parts[int(m.group(1))] = part
    missing = sorted(set(range(num_nodes)) - set(parts))
    if missing:
        raise CacheError(f"{root}: node rank(s) {missing} of {num_nodes} have not finished (no partial manifest); wait for them or rerun them with --resume")
    return parts


def merge_cache(path: str | Path) -> Path:
    """Check that every node's part is present and consistent, then write ``manifest.json``.

    Consistent: the same build header (config, categories, COCO file hash, image count, fastload version),
    each node's records cover exactly its shards (k % n == rank), and every shard's completion record on disk
    agrees with its node's part. Returns the manifest's path. Shard hashes are not recomputed here
    (`fastload cache verify` does that).
    """
    root = Path(path)
    if not root.is_dir():
        raise CacheError(f"cache directory {str(root)!r} does not exist")
    again = f"run `fastload cache merge {root}` again"
    with build_lock(root, what="cache merge", then=again):  # refused while a node still builds into the folder
        try:
            return _merge(root)
        except OSError as exc:
            if isinstance(exc, FastloadError):
                raise
            raise storage_error(exc, root, then=again) from exc


def _merge(root: Path) -> Path:
    try:
        return _merge_parts(root)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # valid JSON of another shape: edited, damaged
        raise CacheError(
            f"{root}: a partial manifest or completion record is malformed ({type(exc).__name__}: {exc}); rerun the "
            "nodes with --resume, then merge again"
        ) from None


def _merge_parts(root: Path) -> Path:
    parts = _read_parts(root)
    num_nodes = len(parts)
    header = parts[0]["header"]
    records = []
    for rank, part in sorted(parts.items()):
        if part["header"] != header:
            diff = sorted(k for k in set(header) | set(part["header"]) if header.get(k) != part["header"].get(k))
            raise CacheError(
                f"node {rank}'s partial manifest disagrees with node 0's on {diff}: the nodes built from different "
                "inputs or configs; rebuild them with the same arguments"
            )
        got = [r["shard"] for r in part["records"]]
        expected = range(rank, header["num_shards"], num_nodes)  # lazy: a false count allocates nothing
        if len(got) != len(expected) or got != list(expected):
            raise CacheError(
                f"node {rank}'s partial manifest lists shards {got[:8]}, expected {list(expected[:8])}; rebuild that node"
            )
        for record in part["records"]:
            on_disk = _done_record(root, record["shard"])
            if on_disk != record:
                raise CacheError(
                    f"{done_name(record['shard'])} differs from node {rank}'s partial manifest (rebuilt since?); "
                    f"rerun node {rank} with --resume"
                )
        records.extend(part["records"])
    manifest = assemble_manifest(header, records)
    out = root / MANIFEST_NAME
    write_atomic(out, pretty_json(manifest))
    return out


def _done_record(root: Path, shard: int) -> Any:
    try:
        return read_json(root / done_name(shard), what="completion record")
    except FileNotFoundError:
        raise CacheError(f"{done_name(shard)} is missing: shard {shard} is not complete; rerun its node with --resume") from None
