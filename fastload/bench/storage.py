"""Slow storage on a fast disk: a cache whose every sample read takes a fixed extra time, as on a NAS.

A random read of one sample on a NAS takes 1-10 ms where a local disk takes ~0.1 ms. `DelayedCache` adds a
fixed latency to each ``pread`` (`CacheDataset.read_bytes`, the one place sample bytes come off the disk), so
``fastload bench --read-latency-ms`` and ``benchmarks/test_bench_storage.py`` show what storage latency costs each
loader, and how many reads in flight hide it. The sleep releases the GIL, as a real ``pread`` waiting on the
network does, so concurrent reads overlap exactly as they would on the NAS.
"""

from __future__ import annotations

import time
from pathlib import Path

from fastload.cache.reader import CacheDataset


class DelayedCache(CacheDataset):
    """An opened cache whose sample reads each take ``latency_s`` seconds longer (picklable: workers keep it).

    Parameters
    ----------
    root : the cache folder
    latency_s : added to every sample read (>= 0)
    sigma, stride : as `fastload.open_cache`
    """

    def __init__(self, root: str | Path, *, latency_s: float, sigma: float = 8.0, stride: int = 1) -> None:
        if not latency_s >= 0:
            raise ValueError(f"latency_s must be >= 0 seconds, got {latency_s!r}")
        super().__init__(root, sigma=sigma, stride=stride)
        self.latency_s = float(latency_s)

    def read_bytes(self, fd: int, length: int, start: int) -> bytes:
        time.sleep(self.latency_s)
        return super().read_bytes(fd, length, start)

    def __repr__(self) -> str:
        return f"DelayedCache({str(self.root)!r}, samples={len(self)}, latency_s={self.latency_s})"
