"""`Prefetcher` on its own: results by sample, errors at their sample, the bounds on reads and bytes in flight,
reads in flight sized by Little's law, close().

The read function here is a test double: it sleeps a seeded random time (so that samples finish out of the order
they started in) and records how many calls, and how many bytes, are in flight at once.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from fastload.pipeline.prefetch import MIN_DEPTH, START_DEPTH, Prefetcher, little_depth, plans_for


class Reads:
    """``read(index)``: sleeps up to ``max_delay`` s (seeded), raises for ``bad``, meters concurrency."""

    def __init__(self, *, sizes=None, max_delay=0.004, bad=(), seed=0, slow=None) -> None:
        self.sizes = sizes or {}
        self.max_delay, self.bad, self.slow = max_delay, set(bad), {100: 0.1, **(slow or {})}
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.running = self.peak = self.bytes = self.peak_bytes = self.calls = 0

    def size(self, index: int) -> int:
        return self.sizes.get(index, 1)

    def __call__(self, index: int):
        with self.lock:
            self.calls += 1
            self.running += 1
            self.bytes += self.size(index)
            self.peak, self.peak_bytes = max(self.peak, self.running), max(self.peak_bytes, self.bytes)
            delay = self.slow.get(index, self.rng.uniform(0, self.max_delay))
        try:
            time.sleep(delay)
            if index in self.bad:
                raise KeyError(f"bad sample {index}")
            return f"sample {index}"
        finally:
            with self.lock:
                self.running -= 1
                self.bytes -= self.size(index)


def _io_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fastload-io")]


def consume(prefetcher: Prefetcher, batches: list[list[int]], *, ahead: int = 2, work_s: float = 0.0):
    """Take the batches in order, wanting each one now and the next ``ahead`` ones ahead, as a worker does."""
    out = []
    for k, batch in enumerate(batches):
        later = [i for b in batches[k + 1 : k + 1 + ahead] for i in b]
        prefetcher.forget_except(set(batch) | set(later))
        prefetcher.want(batch, now=True)
        prefetcher.want(later, now=False)
        out.append([prefetcher.take(i) for i in batch])
        time.sleep(work_s)
    return out


def test_every_sample_comes_back_at_its_take_whatever_order_reads_finish_in():
    reads = Reads()
    batches = [list(range(k * 5, k * 5 + 5)) for k in range(12)] + [[]] + [[60, 61]]
    before = set(_io_threads())
    with Prefetcher(reads, sample_bytes=reads.size, io_threads=6, max_bytes=1 << 20) as prefetcher:
        out = consume(prefetcher, batches)
    assert out == [[f"sample {i}" for i in b] for b in batches]
    assert reads.calls == 62 and reads.peak <= 6  # each sample read once, never more reads than threads
    assert not set(_io_threads()) - before


def test_a_sample_never_wanted_is_read_at_its_take():
    reads = Reads()
    with Prefetcher(reads, sample_bytes=reads.size, io_threads=2, max_bytes=10) as prefetcher:
        assert prefetcher.take(7) == "sample 7"
    assert reads.calls == 1


def test_a_bad_sample_raises_at_its_own_take_and_the_others_are_unharmed():
    reads = Reads(bad={13}, slow={13: 0.0, 12: 0.03})
    with Prefetcher(reads, sample_bytes=reads.size, io_threads=4, max_bytes=100) as prefetcher:
        prefetcher.want([12, 13, 14], now=True)
        assert prefetcher.take(12) == "sample 12"  # 13 failed first; 12 still comes back, in the caller's order
        with pytest.raises(KeyError, match="bad sample 13"):
            prefetcher.take(13)
        assert prefetcher.take(14) == "sample 14"


def test_reads_overlap_up_to_io_threads_and_never_beyond():
    # batch 2, 8 threads, reads of 20 ms: the depth starts at min(START_DEPTH, io_threads) = 8 reads in flight
    assert plans_for(8, 2) == 4 and plans_for(16, 8) == 2 and plans_for(3, 8) == 1
    reads = Reads(max_delay=0.0, slow={i: 0.02 for i in range(40)})
    batches = [[2 * k, 2 * k + 1] for k in range(20)]
    with Prefetcher(reads, sample_bytes=reads.size, io_threads=8, max_bytes=1 << 20) as prefetcher:
        consume(prefetcher, batches, ahead=4)
    assert reads.peak == 8


def test_depth_is_littles_law_with_headroom_within_its_bounds():
    assert little_depth(rate=2000.0, latency=0.02, io_threads=128) == 82  # 2 x 40 in flight, + 2
    assert little_depth(rate=2000.0, latency=0.02, io_threads=64) == 64  # the user's upper bound
    assert little_depth(rate=100.0, latency=0.0001, io_threads=64) == MIN_DEPTH  # a page-cache read
    assert little_depth(rate=None, latency=None, io_threads=64) == START_DEPTH  # nothing measured yet
    assert little_depth(rate=None, latency=None, io_threads=3) == 3


def test_slow_reads_raise_the_depth_to_keep_the_consumer_fed():
    # reads of 30 ms and a consumer that takes 4 samples every ~5 ms: Little's law asks for ~2 x 800 x 0.03 = 50
    reads = Reads(max_delay=0.0, slow={i: 0.03 for i in range(400)})
    batches = [list(range(k * 4, k * 4 + 4)) for k in range(100)]
    with Prefetcher(reads, sample_bytes=reads.size, io_threads=48, max_bytes=1 << 20) as prefetcher:
        consume(prefetcher, batches, ahead=12, work_s=0.005)
        depth = prefetcher.depth
    assert depth > START_DEPTH and reads.peak > START_DEPTH, (depth, reads.peak)
    assert reads.peak <= 48


@pytest.mark.parametrize(
    "sizes, max_bytes, bound",
    [
        pytest.param({}, 6, 6, id="many-batches-within-the-bound"),
        pytest.param({i: 3 for i in range(40)}, 7, 7, id="a-batch-larger-than-the-bound"),
        pytest.param({5: 50}, 10, 50, id="one-sample-larger-than-the-bound"),
    ],
)
def test_bytes_in_flight_and_held_stay_within_max_bytes(sizes, max_bytes, bound):
    # in flight: max_bytes, or one sample alone when it is larger (`bound`); held: what was read ahead within
    # max_bytes, and the batch wanted now on top (it is always read)
    reads = Reads(sizes=sizes, max_delay=0.01)
    batches = [list(range(k * 4, k * 4 + 4)) for k in range(10)]
    held = []
    with Prefetcher(reads, sample_bytes=reads.size, io_threads=8, max_bytes=max_bytes) as prefetcher:
        for k, batch in enumerate(batches):
            prefetcher.want(batch, now=True)
            prefetcher.want([i for b in batches[k + 1 : k + 4] for i in b], now=False)
            held.append(prefetcher.bytes_held)
            assert [prefetcher.take(i) for i in batch] == [f"sample {i}" for i in batch]
    assert reads.peak_bytes <= max(bound, max_bytes), (reads.peak_bytes, bound)
    assert max(held) <= max_bytes + max(sum(reads.size(i) for i in b) for b in batches)


def test_close_with_reads_in_flight_leaves_no_thread_and_starts_nothing_more():
    reads = Reads(max_delay=0.0, slow={i: 0.1 for i in range(100)})
    before = set(_io_threads())  # another test's loader may still be waiting for the garbage collector
    prefetcher = Prefetcher(reads, sample_bytes=reads.size, io_threads=8, max_bytes=1 << 20)
    prefetcher.take(100)  # read here: it waits, so the pool takes the next wishes
    prefetcher.want(list(range(100)), now=False)
    time.sleep(0.02)
    assert reads.running > 0
    prefetcher.close()
    assert reads.running == 0 and not set(_io_threads()) - before
    calls = reads.calls
    time.sleep(0.15)
    assert reads.calls == calls and calls < 100  # the queued reads were cancelled, not run
    prefetcher.close()  # idempotent


@pytest.mark.parametrize("name", ["io_threads", "max_bytes"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bounds_must_be_positive_integers(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        Prefetcher(Reads(), sample_bytes=lambda i: 1, **{"io_threads": 4, "max_bytes": 10, name: value})


def test_reads_that_do_not_wait_are_done_on_the_calling_thread():
    # a page-cache hit costs CPU, not waiting: handing it to a thread only adds the hand-over (and GIL traffic)
    def busy(index: int):
        end = time.thread_time() + 0.0002  # 0.2 ms of CPU, no waiting
        while time.thread_time() < end:
            pass
        return threading.current_thread().name

    with Prefetcher(busy, sample_bytes=lambda i: 1, io_threads=8, max_bytes=100) as prefetcher:
        names = [name for batch in consume(prefetcher, [[3 * k, 3 * k + 1, 3 * k + 2] for k in range(10)]) for name in batch]
        assert prefetcher.inline
    assert set(names) == {threading.current_thread().name}


def test_the_first_read_that_waits_turns_the_pool_on_for_what_is_wanted():
    reads = Reads(max_delay=0.0, slow={i: 0.03 for i in range(12)})
    with Prefetcher(reads, sample_bytes=reads.size, io_threads=8, max_bytes=1 << 20) as prefetcher:
        assert prefetcher.inline  # nothing measured yet
        out = consume(prefetcher, [list(range(6)), list(range(6, 12))])
        assert not prefetcher.inline
    assert out == [[f"sample {i}" for i in range(6)], [f"sample {i}" for i in range(6, 12)]]
    assert reads.peak > 1  # after the first read, the rest of the batch was read at once
