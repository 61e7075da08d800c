"""Read ahead, keyed by sample: many reads in flight, so storage latency (a NAS: 1-20 ms per read) never sets the pace.

Both engines read through one `Prefetcher` per reading process (a CpuLoader worker, a DALI feed worker, or the
calling process when it loads in-process). The process says which samples it needs now and which next
(``want``), takes each sample when it gets to it (``take``), and the prefetcher keeps reads in flight on a thread
pool: one blocking ``pread`` per thread, which releases the GIL, so reads overlap each other and the process's
work. Ordering is the caller's (it takes the samples in its own order); an error of a read is raised by the
``take`` of that sample.

How many reads in flight: by Little's law a process needs *rate x latency* of them (2,000 samples/s from a NAS
answering in 20 ms: 40). The prefetcher measures both — each read's duration, and the rate at which the process
takes samples — and keeps ``depth = 2 x rate x latency + 2`` reads of the wanted-ahead samples in flight, at least
`MIN_DEPTH` and at most ``io_threads`` (the user's upper bound; threads start only as they are needed). Before it
has measured anything it keeps `START_DEPTH`. The samples needed now are read at once, whatever the depth.

Bounds, per process:

- reads in flight: at most ``io_threads`` (the pool's size);
- bytes in flight: reads submitted and not finished hold at most ``max_bytes`` (sizes from the cache index, known
  before the read), unless one sample alone is larger;
- bytes held: samples read ahead and not yet taken stay within ``max_bytes``, except the samples needed now, which
  are always read.

`close` cancels what has not started, waits for the reads in progress, and leaves no thread behind.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")

DEFAULT_IO_THREADS = 64
"""Reads in flight per reading process at most: 20 ms reads at 3,200 samples/s per process."""
DEFAULT_MAX_BYTES = 64 << 20
"""64 MiB per reading process: ~250 samples of 800x600 photos, several batches of 48."""
MIN_DEPTH = 4
START_DEPTH = 16
INLINE_WAIT = 100e-6
"""Reads that wait less than this (seconds, measured: a read's wall time minus its own CPU time; a page-cache hit)
cost less on the calling thread than handing them to a pool thread does — the CPU part (CRCs, checks) holds the
GIL either way; reads that wait longer (a disk, a NAS) go to the pool, as many at once as Little's law asks."""
_RATE_WINDOW = 64  # takes over which the consumer's rate is measured
_LATENCY_WEIGHT = 0.2  # of each new read in the running mean of read durations


def plans_for(reads: int, batch_size: int) -> int:
    """The plans (batches) whose samples keep ``reads`` reads in flight: ceil(reads / batch_size), >= 1."""
    return max(1, -(-int(reads) // max(1, int(batch_size))))


def little_depth(*, rate: float | None, latency: float | None, io_threads: int) -> int:
    """Reads to keep in flight for a consumer taking ``rate`` samples/s from reads of ``latency`` s (Little's law,
    twice over, + 2), within [`MIN_DEPTH`, ``io_threads``]; `START_DEPTH` until both are measured."""
    if rate is None or latency is None:
        return min(START_DEPTH, io_threads)
    return max(min(MIN_DEPTH, io_threads), min(io_threads, math.ceil(2 * rate * latency) + 2))


class Prefetcher(Generic[T]):
    """Reads samples on a thread pool ahead of their `take`, as many at once as Little's law asks.

    Parameters
    ----------
    read : ``read(index) -> T``, run on a pool thread per sample (e.g. the cache's ``read_members``); may raise
    sample_bytes : ``sample_bytes(index) -> int``, what a read holds (from the cache index, before reading)
    io_threads : reads in flight at most (>= 1)
    max_bytes : bytes in flight and read ahead at most (>= 1); see the module docstring
    """

    def __init__(self, read: Callable[[int], T], *, sample_bytes: Callable[[int], int], io_threads: int, max_bytes: int) -> None:
        for name, value in (("io_threads", io_threads), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._read, self._sample_bytes = read, sample_bytes
        self.io_threads, self.max_bytes = io_threads, max_bytes
        self._pool = ThreadPoolExecutor(io_threads, thread_name_prefix="fastload-io")
        # reentrant: cancelling a future runs its done-callback (`_finished`) at once, in the cancelling thread
        self._lock = threading.RLock()
        self._room = threading.Condition(self._lock)  # notified whenever a read finishes
        self._reads: dict[int, tuple[Future, int]] = {}  # submitted, not taken: future and bytes
        self._now: dict[int, None] = {}  # wanted now, not yet submitted (an ordered set)
        self._ahead: dict[int, None] = {}  # wanted ahead, not yet submitted
        self._held = 0  # bytes of the reads in _reads
        self._flying = 0  # bytes of the reads submitted and not finished
        self._running = 0
        self._latency: float | None = None  # running mean of read durations, seconds
        self._wait: float | None = None  # running mean of the part of a read spent off the CPU, seconds
        self._takes: deque[float] = deque(maxlen=_RATE_WINDOW)
        self._closed = False

    @classmethod
    def of_cache(cls, cache: Any, *, io_threads: int, max_bytes: int) -> Prefetcher:
        """A prefetcher of an opened cache's samples (``read_members``, sized by ``span_bytes``)."""
        return cls(cache.read_members, sample_bytes=cache.span_bytes, io_threads=io_threads, max_bytes=max_bytes)

    # --- what the process wants ------------------------------------------------------------------------------
    def focus(self, now: Sequence[int], ahead: Sequence[int]) -> None:
        """A batch's turn: its samples ``now``, the next ones ``ahead``; every other read or wish is dropped."""
        self.forget_except(set(now) | set(ahead))
        self.want(now, now=True)
        self.want(ahead, now=False)

    def want(self, indices: Sequence[int], *, now: bool) -> None:
        """Samples to read: needed ``now`` (read at once, bytes in flight permitting), or ahead (as depth allows).

        While reads hardly wait (`INLINE_WAIT`: the page cache), the wishes are only noted and `take` reads on the
        calling thread; the first read that waits turns the pool on, for these wishes too.
        """
        with self._lock:
            wishes = self._now if now else self._ahead
            for i in indices:
                i = int(i)
                if i not in self._reads and i not in self._now:
                    self._ahead.pop(i, None)
                    wishes[i] = None
        if not self.inline:
            self._submit_wishes()

    def take(self, index: int) -> T:
        """Sample ``index``: the read's result (or its error); read here and now if it was not read ahead."""
        index = int(index)
        self._takes.append(time.monotonic())
        with self._lock:
            entry = self._reads.pop(index, None)
            if entry is not None:
                self._held -= entry[1]
            else:
                self._now.pop(index, None)
                self._ahead.pop(index, None)
        if entry is None:
            try:
                return self._timed_read(index)
            finally:
                if not self.inline:  # this read waited: the others wanted go to the pool now
                    self._submit_wishes()
        try:
            return entry[0].result()
        finally:
            self._pump()

    def _submit_wishes(self) -> None:
        """Submit the samples wanted now (bytes in flight permitting), then read ahead as depth allows."""
        while True:
            with self._lock:
                if not self._now or self._closed:
                    break
                index = next(iter(self._now))
            size = self._sample_bytes(index)
            with self._lock:
                if index not in self._now:  # taken meanwhile
                    continue
                del self._now[index]
                while self._flying and self._flying + size > self.max_bytes:
                    self._room.wait()
                self._submit(index, size)
        self._pump()

    def forget_except(self, keep: set[int]) -> None:
        """Drop reads and wishes outside ``keep`` (a wrong guess about what comes next), freeing their bytes."""
        with self._lock:
            for i in [i for i in self._reads if i not in keep]:
                future, size = self._reads.pop(i)
                future.cancel()
                self._held -= size
            self._ahead = {i: None for i in self._ahead if i in keep}
            self._now = {i: None for i in self._now if i in keep}

    @property
    def depth(self) -> int:
        """Reads of the wanted-ahead samples it keeps in flight now (Little's law on what it measured)."""
        return little_depth(rate=self._rate(), latency=self._latency, io_threads=self.io_threads)

    @property
    def inline(self) -> bool:
        """Whether reads hardly wait, so that `take` reads them on the calling thread instead: until a read is
        measured to wait (the first `take` reads on the calling thread and measures), and while they do not."""
        return self._wait is None or self._wait < INLINE_WAIT

    @property
    def bytes_held(self) -> int:
        return self._held

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Cancel what has not started, wait for the reads in progress, stop the threads. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for future, _ in self._reads.values():
                future.cancel()
            self._reads.clear()
            self._now.clear()
            self._ahead.clear()
            self._held = 0
        self._pool.shutdown(wait=True, cancel_futures=True)

    # --- inside ----------------------------------------------------------------------------------------------
    def _rate(self) -> float | None:
        takes = self._takes
        if len(takes) < 8 or takes[-1] <= takes[0]:
            return None
        return (len(takes) - 1) / (takes[-1] - takes[0])

    def _pump(self) -> None:
        """Submit wanted-ahead samples while fewer than `depth` reads run and the bytes held allow."""
        depth = self.depth
        with self._lock:
            while self._ahead and not self._closed and self._running < depth:
                index = next(iter(self._ahead))
                size = self._sample_bytes(index)
                if self._held and self._held + size > self.max_bytes:
                    return
                del self._ahead[index]
                self._submit(index, size)

    def _submit(self, index: int, size: int) -> None:
        # under the lock
        if self._closed:
            raise RuntimeError("Prefetcher: want() after close()")
        self._running += 1
        self._flying += size
        future = self._pool.submit(self._timed_read, index)
        self._reads[index] = (future, size)
        self._held += size
        future.add_done_callback(lambda _f: self._finished(size))

    def _timed_read(self, index: int) -> T:
        start, cpu = time.monotonic(), time.thread_time()
        try:
            return self._read(index)
        finally:
            took = time.monotonic() - start
            waited = max(0.0, took - (time.thread_time() - cpu))
            self._latency = took if self._latency is None else self._latency + _LATENCY_WEIGHT * (took - self._latency)
            self._wait = waited if self._wait is None else self._wait + _LATENCY_WEIGHT * (waited - self._wait)

    def _finished(self, size: int) -> None:
        with self._lock:
            self._running -= 1
            self._flying -= size
            self._room.notify_all()
        if not self._closed:
            self._pump()
