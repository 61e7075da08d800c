"""Slow storage on a fast disk: a cache whose every sample read takes a fixed extra time, as on a NAS.

A random read of one sample on a NAS takes 1-10 ms where a local disk takes ~0.1 ms. `DelayedCache` adds a
latency to each ``pread`` (`CacheDataset.read_bytes`, the one place sample bytes come off the disk), so
``fastload bench --read-latency-ms`` and ``benchmarks/test_bench_storage.py`` show what storage latency costs each
loader, and how many reads in flight hide it. The sleep releases the GIL, as a real ``pread`` waiting on the
network does, so concurrent reads overlap exactly as they would on the NAS.

It also counts, per process, the reads in flight and the bytes they ask for (``reads_in_flight``,
``peak_reads``, ``peak_bytes``, ``reads``): what a loader really keeps outstanding against the storage.

`drop_page_cache` asks the kernel to forget a cache's shard pages (``posix_fadvise(POSIX_FADV_DONTNEED)``, no
root needed, unlike ``/proc/sys/vm/drop_caches``), so that an epoch can be measured cold and the next one warm:
reads stay plain buffered ``pread``s (no ``O_DIRECT``), and a cache that fits in RAM is served from the page
cache from the second epoch on.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from fastload.cache.manifest import load_manifest
from fastload.samples import CacheSamples


def drop_page_cache(root: str | Path) -> int:
    """Ask the kernel to drop the cached pages of every shard of the cache at ``root``; returns the bytes advised.

    ``POSIX_FADV_DONTNEED`` drops clean pages that no process maps, which is what a shard read with ``pread``
    leaves behind; the next read of them goes to the disk (or the NAS) again. A hint, not a guarantee: pages in
    use elsewhere stay.
    """
    manifest = load_manifest(Path(root))
    advised = 0
    for shard in manifest.shards:
        fd = os.open(Path(root) / shard.file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            advised += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return advised


class DelayedCache(CacheSamples):
    """An opened cache whose sample reads each take ``latency_s`` (+ up to ``jitter_s``) seconds longer.

    Picklable: DataLoader workers get a copy, with the same latency and their own counters.

    Parameters
    ----------
    root : the cache folder
    latency_s : added to every sample read (>= 0)
    jitter_s : a further delay drawn uniformly from [0, jitter_s] per read (>= 0), so that reads finish out of
        the order they started in; drawn from a generator seeded with ``seed`` (each process draws its own
        sequence from the same seed, and threads take their draws in the order they read)
    sigma, stride : as `fastload.open_cache`
    """

    def __init__(
        self,
        root: str | Path,
        *,
        latency_s: float,
        jitter_s: float = 0.0,
        seed: int = 0,
        sigma: float = 8.0,
        stride: int = 1,
    ) -> None:
        for name, value in (("latency_s", latency_s), ("jitter_s", jitter_s)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value < float("inf")
            ):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        super().__init__(root, sigma=sigma, stride=stride)
        self.latency_s = float(latency_s)
        self.jitter_s = float(jitter_s)
        self.seed = int(seed)
        self._meter_reset()

    @classmethod
    def from_ms(cls, root: str | Path, latency_ms: float, **kwargs: Any) -> DelayedCache:
        """What ``fastload bench --read-latency-ms`` opens: this cache with ``latency_ms`` per read (0: none)."""
        return cls(root, latency_s=float(latency_ms) / 1000, **kwargs)

    # --- the delay ----------------------------------------------------------------------------------------
    def read_bytes(self, fd: int, length: int, start: int) -> bytes:
        self._meter_own()
        with self._meter_lock:
            self.reads += 1
            self.reads_in_flight += 1
            self._bytes_in_flight += length
            self.peak_reads = max(self.peak_reads, self.reads_in_flight)
            self.peak_bytes = max(self.peak_bytes, self._bytes_in_flight)
            delay = self.latency_s + (self._rng.uniform(0.0, self.jitter_s) if self.jitter_s else 0.0)
        try:
            if delay:
                time.sleep(delay)
            return super().read_bytes(fd, length, start)
        finally:
            with self._meter_lock:
                self.reads_in_flight -= 1
                self._bytes_in_flight -= length

    # --- the meter (per process) --------------------------------------------------------------------------
    def _meter_reset(self) -> None:
        self._meter_pid = os.getpid()
        self._meter_lock = threading.Lock()
        self._rng = random.Random(self.seed)
        self.reads = self.reads_in_flight = self.peak_reads = 0
        self._bytes_in_flight = self.peak_bytes = 0

    def _meter_own(self) -> None:
        if self._meter_pid != os.getpid():  # forked: the counts (and the lock) were the parent's
            self._meter_reset()

    def reset_peaks(self) -> None:
        """Forget the peaks and the read count of this process (the reads in flight keep counting)."""
        self._meter_own()
        with self._meter_lock:
            self.reads, self.peak_reads, self.peak_bytes = 0, self.reads_in_flight, self._bytes_in_flight

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        del state["_meter_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._meter_reset()

    def __repr__(self) -> str:
        jitter = f", jitter_s={self.jitter_s}" if self.jitter_s else ""
        return f"DelayedCache({str(self.root)!r}, samples={len(self)}, latency_s={self.latency_s}{jitter})"
