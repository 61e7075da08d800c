"""Helpers shared by the loader test modules: small caches and both loaders behind one factory."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import psutil
import torch

from fastload import CpuLoader, Loader
from fastload.build.build import build_cache
from fastload.build.synth import synth_coco
from fastload.cache.config import CacheConfig

# the two loaders under one contract; "dali" runs the real DALI graph on the CPU (CI has no GPU)
LOADER_KINDS = ("cpu", "dali")


def make_synth_cache(root: Path, *, n: int, size=(48, 64), samples_per_shard: int = 5, seed: int = 0) -> Path:
    """A synthetic COCO set of ``n`` images built into a cache under ``root``; returns the cache path."""
    data = root / "data"
    synth_coco(out=data, n=n, size=size, instances=(1, 4), seed=seed)
    cache = root / "cache"
    build_cache(
        coco=data / "annotations.json",
        images=data / "images",
        out=cache,
        config=CacheConfig(samples_per_shard=samples_per_shard),
        progress=False,
    )
    return cache


def make_loader(kind: str, cache, **kwargs):
    """A loader of either kind with test-friendly defaults (small output, CPU)."""
    kwargs.setdefault("size", (32, 32))
    kwargs.setdefault("device", "cpu")
    if kind == "cpu":
        kwargs.setdefault("num_threads", 0)
        return CpuLoader(cache, **kwargs)
    if kind == "dali":
        kwargs.setdefault("num_threads", 2)
        return Loader(cache, **kwargs)
    raise ValueError(f"unknown loader kind {kind!r}")


def epoch_indices(loader) -> list[np.ndarray]:
    """The ``index`` tensor of every batch of one pass, as NumPy arrays."""
    return [batch["index"].cpu().numpy() for batch in loader]


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), f"batch key {key!r} differs"


# multiprocessing's own helpers: one fork server (CpuLoader workers start from it) and one resource tracker per
# Python process, started with the first CpuLoader and kept for the process's life (Python 3.14's default too)
_MP_HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


def is_mp_helper(proc: psutil.Process) -> bool:
    try:
        return any(helper in " ".join(proc.cmdline()) for helper in _MP_HELPERS)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def loader_processes() -> set[int]:
    """PIDs of this process's descendants that a loader started: its workers, never multiprocessing's helpers.

    The helpers are direct children; workers are forked by the fork server (and so carry its command line).
    """
    me = psutil.Process()
    helpers = {p.pid for p in me.children() if is_mp_helper(p)}
    return {p.pid for p in me.children(recursive=True) if p.pid not in helpers}


def start_mp_helpers() -> None:
    """Start the fork server now, so that tests counting processes and descriptors see it before they count."""
    import multiprocessing.forkserver

    from fastload.pipeline.workers import START_METHOD

    assert START_METHOD == "forkserver"
    multiprocessing.forkserver.ensure_running()


def wait_for_no_process(procs: list[psutil.Process], seconds: float = 5.0) -> list[str]:
    """The processes of ``procs`` still running after ``seconds`` ("pid command"; ended ones and zombies do not
    count): for checks that nothing outlives a killed parent by more than a few seconds."""
    deadline = time.monotonic() + seconds
    while _running(procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _running(procs)


def _running(procs: list[psutil.Process]) -> list[str]:
    running = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                running.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
        except psutil.NoSuchProcess:
            pass
    return running


def run_unguarded_script(folder: Path, loader: str):
    """Run a script that makes and iterates ``loader`` (an expression) at its top level, with no
    ``if __name__ == "__main__":`` guard; returns the finished process (stderr as text)."""
    import subprocess
    import sys

    script = folder / "unguarded.py"
    script.write_text(f"import fastload\nloader = {loader}\nfor batch in loader:\n    pass\n")
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
