"""Caches edited the way a careful, hostile user edits them: a member replaced and every hash made to agree.

    forge_sample(cache, 5, image=other_jpeg)           # new bytes; CRC-32, offsets, both indexes, sha256s redone
    forge_sample(cache, 5, height=600, width=800)      # the index entry's size (and the labels' shapes) too
    label_member(height=..., width=..., ...)            # an FLZ4 label member with any header fields
    read_bounded(cache, clean, ["open_cache", "dali"])  # read it in a child with bounded memory and CPU time

After `forge_sample` the cache passes every integrity check (`open_cache` opens it, `fastload cache verify`
finds no hash or CRC problem): only the content lies, which is what `fastload.cache.validate` must catch.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import lz4.block
import numpy as np

from fastload.cache.format import (
    LABEL_EXTENSIONS,
    LABEL_MAGIC,
    LABEL_VERSION,
    MEMBER_KINDS,
    TarWriter,
    dali_index_text,
    sniff_image_format,
)
from fastload.cache.jsonio import dumps_canonical

REPO = Path(__file__).resolve().parents[1]


def _shard_of(manifest: dict, index: int) -> tuple[dict, int]:
    for shard in manifest["shards"]:
        if index < shard["samples"]:
            return shard, index
        index -= shard["samples"]
    raise IndexError(index)


def forge_sample(
    cache: Path,
    index: int,
    *,
    image: bytes | None = None,
    sem: bytes | None = None,
    ins: bytes | None = None,
    meta: bytes | None = None,
    height: int | None = None,
    width: int | None = None,
) -> tuple[str, str]:
    """Replace members (and the index's size) of sample ``index``; rewrite its shard's tar, JSON index and DALI
    index, and the manifest's sizes and sha256s, so that every hash agrees. Returns (shard file, sample key)."""
    manifest_path = cache / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    shard, local = _shard_of(manifest, index)
    blob = (cache / shard["file"]).read_bytes()
    index_doc = json.loads((cache / shard["index_file"]).read_bytes())
    tar_tmp = cache / (shard["file"] + ".forge")
    dali = []
    with open(tar_tmp, "wb") as fh:
        writer = TarWriter(fh)
        for j, entry in enumerate(index_doc["samples"]):
            data = {m["kind"]: blob[m["offset"] : m["offset"] + m["size"]] for m in entry["members"]}
            if j == local:
                new = {"image": image, "sem": sem, "ins": ins, "meta": meta}
                data.update({kind: value for kind, value in new.items() if value is not None})
                entry["height"] = entry["height"] if height is None else height
                entry["width"] = entry["width"] if width is None else width
            members, row = [], []
            for m in entry["members"]:
                payload = data[m["kind"]]
                if m["kind"] == "image":
                    ext = sniff_image_format(payload) or m["name"].split(".", 1)[1]
                else:
                    ext = LABEL_EXTENSIONS[m["kind"]]
                name = f"{entry['key']}.{ext}"
                offset = writer.add(name, payload)
                m = {**m, "name": name, "offset": offset, "size": len(payload), "crc32": zlib.crc32(payload)}
                if "shape" in m:
                    m["shape"] = [entry["height"], entry["width"]]
                members.append(m)
                row.append((ext, offset, len(payload), name))
            entry["members"] = members
            dali.append(row)
        size, sha = writer.finish()
    tar_tmp.replace(cache / shard["file"])
    index_bytes = dumps_canonical(index_doc)
    idx_bytes = dali_index_text(dali).encode("ascii")
    (cache / shard["index_file"]).write_bytes(index_bytes)
    (cache / shard["dali_index"]).write_bytes(idx_bytes)
    shard.update(
        bytes=size,
        sha256=sha,
        index_sha256=hashlib.sha256(index_bytes).hexdigest(),
        dali_index_sha256=hashlib.sha256(idx_bytes).hexdigest(),
    )
    manifest_path.write_text(json.dumps(manifest, indent=1))
    entry = index_doc["samples"][local]
    assert [m["kind"] for m in entry["members"]] == list(MEMBER_KINDS)
    return shard["file"], entry["key"]


def read_member(cache: Path, index: int, kind: str) -> bytes:
    """The stored bytes of one member (no checks)."""
    manifest = json.loads((cache / "manifest.json").read_text())
    shard, local = _shard_of(manifest, index)
    entry = json.loads((cache / shard["index_file"]).read_bytes())["samples"][local]
    [m] = [m for m in entry["members"] if m["kind"] == kind]
    with open(cache / shard["file"], "rb") as fh:
        fh.seek(m["offset"])
        return fh.read(m["size"])


def label_member(
    *,
    height: int,
    width: int,
    rows: int,
    bands: list[bytes],
    code: int = 2,
    declared_bands: int | None = None,
) -> bytes:
    """An FLZ4 label member with these header fields and these (already compressed) band blocks, laid out as
    `fastload.cache.format.encode_label` lays them out; ``declared_bands`` overrides the header's band count."""
    count = len(bands) if declared_bands is None else declared_bands
    parts = [struct.pack("<4sHHIIII", LABEL_MAGIC, LABEL_VERSION, code, height, width, rows, count)]
    parts.append(np.array([len(b) for b in bands], dtype="<u4").tobytes())
    parts += [b + b"\0" * (-len(b) % 4) for b in bands]
    return b"".join(parts)


def lz4_band(raw: bytes) -> bytes:
    return lz4.block.compress(raw, mode="default", store_size=False)


LOADER_ARGS = dict(batch_size=2, shuffle=False, size=(32, 32), device="cpu", augment="default", seed=3)


def read_through(path: str, cache: str | Path) -> None:
    """Read every sample of ``cache`` through one path until it raises (a verify problem is raised as a
    CacheError): "open_cache" (``cache[i]``), "cpu" (CpuLoader in process), "cpu-worker" (one worker process),
    "dali" (``Loader(device="cpu")``: DALI's graph on the CPU), "verify" (`verify_cache`)."""
    from fastload import CpuLoader, Loader
    from fastload.cache.verify import verify_cache
    from fastload.errors import CacheError
    from fastload.samples import open_cache

    if path == "open_cache":
        ds = open_cache(cache)
        for i in range(len(ds)):
            ds[i]
    elif path == "verify":
        report = verify_cache(cache)
        if report.problems:
            raise CacheError("\n".join(report.problems))
    else:
        kind, threads = {"cpu": (CpuLoader, 0), "cpu-worker": (CpuLoader, 1), "dali": (Loader, 2)}[path]
        loader = kind(cache, num_threads=threads, **LOADER_ARGS)
        try:
            for _ in loader:
                pass
        finally:
            loader.close()


# The child sets its limits after its imports and warm-up (for the readers: a pass over the undamaged cache
# through each path, so DALI's pipeline and thread pools exist by then), so they bound only what the code under
# test costs: address space grows by at most MEMORY bytes (a runaway gets a MemoryError or a failed allocation
# instead of the machine's memory) and CPU time by at most CPU seconds per step (SIGXCPU kills a runaway, and the
# test fails). Each step's outcome is recorded in `out[step]`.
_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {tests!r})
{setup}
def _status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key + ":"))
_base = _status("VmSize")
resource.setrlimit(resource.RLIMIT_AS, (_base + {memory}, _base + {memory}))
resource.setrlimit(resource.RLIMIT_CPU, (int(time.process_time() + {cpu} * len(STEPS)) + 1, resource.RLIM_INFINITY))
out = {{}}
for name, step in STEPS.items():
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        step()
        out[name] = {{"error": None}}
    except BaseException as exc:
        out[name] = {{"error": type(exc).__name__, "message": str(exc)}}
    out[name].update(cpu_s=time.process_time() - cpu0, wall_s=time.perf_counter() - wall0)
out["vm_growth_mb"] = (_status("VmPeak") - _base) / 2**20
print("RESULT " + json.dumps(out))
"""


def run_bounded(setup: str, *, memory_gb: float = 1.5, cpu_s: float = 5.0) -> dict:
    """Run ``setup`` (Python source: imports, warm-up, and ``STEPS``, a dict of name → function) in a fresh
    Python, then each step with the address space bounded to what it had + ``memory_gb`` and the CPU time to +
    ``cpu_s`` per step. Returns ``{step: {"error": class name or None, "message", "cpu_s", "wall_s"},
    "vm_growth_mb": peak address-space growth}``; a child killed by a limit fails the calling test."""
    source = _CHILD.format(tests=str(REPO / "tests"), setup=setup, memory=int(memory_gb * 2**30), cpu=cpu_s)
    # fewer glibc arenas: each thread's 64 MB reservation would count against the address-space limit
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (
        f"the child died (exit {proc.returncode}; -24 is SIGXCPU: more than {cpu_s} s of CPU per step) or printed "
        f"nothing:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    return json.loads(lines[-1][len("RESULT ") :])


def read_bounded(cache: Path, clean: Path, paths: list[str], *, memory_gb: float = 1.5, cpu_s: float = 5.0) -> dict:
    """`read_through` each path on ``cache`` under `run_bounded`'s limits, after a warm-up pass over ``clean``."""
    setup = (
        "from cacheforge import read_through\n"
        f"for path in {list(paths)!r}:\n    read_through(path, {str(clean)!r})\n"
        f"STEPS = {{path: (lambda path=path: read_through(path, {str(cache)!r})) for path in {list(paths)!r}}}\n"
    )
    return run_bounded(setup, memory_gb=memory_gb, cpu_s=cpu_s)
