"""`ReadAhead` on its own: order, errors in order, the bounds on reads and bytes in flight, close().

The per-sample function here is a test double: it sleeps a seeded random time (so that samples finish out of
the order they started in) and records how many calls, and how many bytes, are in flight at once.
"""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from fastload.pipeline.plan import BatchPlan
from fastload.pipeline.readahead import ReadAhead, plans_for


def plans(batches: list[list[int]]) -> list[BatchPlan]:
    return [
        BatchPlan(indices=np.asarray(b, dtype=np.int64), params=tuple(f"p{i}" for i in b)) for b in batches
    ]


class Reads:
    """``prepare(index, params)``: sleeps up to ``max_delay`` s (seeded), raises for ``bad``, meters concurrency."""

    def __init__(self, *, sizes=None, max_delay=0.004, bad=(), seed=0, slow=None) -> None:
        self.sizes = sizes or {}
        self.max_delay, self.bad, self.slow = max_delay, set(bad), slow or {}
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.running = self.peak = self.bytes = self.peak_bytes = self.calls = 0
        self.started: list[int] = []

    def size(self, index: int) -> int:
        return self.sizes.get(index, 1)

    def __call__(self, index: int, params):
        with self.lock:
            self.calls += 1
            self.started.append(index)
            self.running += 1
            self.bytes += self.size(index)
            self.peak, self.peak_bytes = max(self.peak, self.running), max(self.peak_bytes, self.bytes)
            delay = self.slow.get(index, self.rng.uniform(0, self.max_delay))
        try:
            time.sleep(delay)
            if index in self.bad:
                raise KeyError(f"bad sample {index}")
            return index, params
        finally:
            with self.lock:
                self.running -= 1
                self.bytes -= self.size(index)


def _io_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fastload-io")]


def test_plans_come_out_in_order_with_every_sample_at_its_position():
    batches = [list(range(k * 5, k * 5 + 5)) for k in range(12)] + [[]] + [[60, 61]]
    reads = Reads()
    before = set(_io_threads())
    ahead = ReadAhead(iter(plans(batches)), reads, sample_bytes=reads.size, io_threads=6, max_plans=4)
    out = list(ahead)
    assert not set(_io_threads()) - before  # the last plan handed out closed the pool
    assert [list(plan.indices) for plan, _ in out] == batches
    for plan, samples in out:
        assert samples == [(int(i), f"p{i}") for i in plan.indices]
    assert reads.calls == 62 and reads.peak <= 6


def test_reads_overlap_up_to_io_threads_and_never_beyond():
    # batch 2, 8 threads: plans_for says 4 plans keep them busy; with 5 in the window they all are
    reads = Reads(max_delay=0.02)
    batches = [[2 * k, 2 * k + 1] for k in range(20)]
    assert plans_for(8, 2) == 4 and plans_for(16, 8) == 2 and plans_for(3, 8) == 1
    with ReadAhead(iter(plans(batches)), reads, sample_bytes=reads.size, io_threads=8, max_plans=5) as ahead:
        assert [list(p.indices) for p, _ in ahead] == batches
    assert reads.peak == 8


def test_the_first_bad_sample_of_a_plan_is_raised_after_the_plans_before_it():
    # 13 is slow and bad, 14 fast and bad: 13 comes first in the plan, so 13 is the error, whatever finished first
    reads = Reads(bad={13, 14}, slow={13: 0.05, 14: 0.0})
    batches = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17]]
    ahead = ReadAhead(iter(plans(batches)), reads, sample_bytes=reads.size, io_threads=4, max_plans=4)
    got = [list(next(ahead)[0].indices) for _ in range(3)]
    assert got == batches[:3]
    with pytest.raises(KeyError, match="bad sample 13"):
        next(ahead)
    ahead.close()


def test_an_error_of_the_plan_iterator_comes_at_its_place():
    def source():
        yield from plans([[0, 1], [2, 3]])
        raise ValueError("the plans ran into trouble")

    reads = Reads()
    ahead = ReadAhead(source(), reads, sample_bytes=reads.size, io_threads=4)
    assert [list(next(ahead)[0].indices) for _ in range(2)] == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="ran into trouble"):
        next(ahead)
    ahead.close()


@pytest.mark.parametrize(
    "sizes, max_bytes, bound",
    [
        pytest.param({}, 6, 6, id="many-plans-within-the-bound"),
        pytest.param({i: 3 for i in range(40)}, 7, 7, id="a-plan-larger-than-the-bound"),
        pytest.param({5: 50}, 10, 50, id="one-sample-larger-than-the-bound"),
    ],
)
def test_bytes_in_flight_stay_within_max_bytes(sizes, max_bytes, bound):
    reads = Reads(sizes=sizes, max_delay=0.01)
    batches = [list(range(k * 4, k * 4 + 4)) for k in range(10)]
    held = []
    out = []
    with ReadAhead(
        iter(plans(batches)), reads, sample_bytes=reads.size, io_threads=8, max_bytes=max_bytes, max_plans=8
    ) as ahead:
        for _plan, samples in ahead:
            held.append(ahead.bytes_held)
            out.append(samples)
    assert [[i for i, _ in s] for s in out] == batches
    assert reads.peak_bytes <= bound, (reads.peak_bytes, bound)
    # what is read ahead and not yet handed out: within the bound, or one plan that alone exceeds it
    largest_plan = max(sum(reads.size(i) for i in b) for b in batches)
    assert max(held) <= max(max_bytes, largest_plan)


def test_close_with_reads_in_flight_leaves_no_thread_and_starts_nothing_more():
    reads = Reads(max_delay=0.0, slow={i: 0.1 for i in range(100)})
    batches = [list(range(k * 4, k * 4 + 4)) for k in range(25)]
    before = set(_io_threads())  # another test's loader may still be waiting for the garbage collector
    ahead = ReadAhead(iter(plans(batches)), reads, sample_bytes=reads.size, io_threads=8, max_plans=6)
    next(ahead)
    assert reads.running > 0  # reads of the next plans are in flight
    ahead.close()
    assert reads.running == 0 and not set(_io_threads()) - before
    calls = reads.calls
    time.sleep(0.15)
    assert reads.calls == calls and calls < 100  # the queued reads were cancelled, not run
    with pytest.raises(StopIteration):
        next(ahead)
    ahead.close()  # idempotent


@pytest.mark.parametrize("name", ["io_threads", "max_bytes", "max_plans"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bounds_must_be_positive_integers(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        ReadAhead(iter(()), Reads(), sample_bytes=lambda i: 1, **{name: value})
