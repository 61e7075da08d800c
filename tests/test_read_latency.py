"""Both loaders on slow storage: many reads in flight keep every guarantee (issue 11).

The cache is a test double (`fastload.tools.bench.storage.DelayedCache`) whose every read sleeps a seeded random
time, so reads finish out of the order they started in, as on a NAS. Under it, for `Loader` (DALI on the CPU)
and `CpuLoader` in-process and with 2 workers: the batches are bit-identical to those of an undelayed cache
(order, every sample at its position, exactly once per epoch), a corrupt sample is the first bad one of its
batch and comes after the batches before it, a resumed run matches the uninterrupted one bit for bit,
``close()`` with reads in flight leaves no thread or process behind, and the reads in flight stay within
``io_threads`` and ``max_read_bytes`` in every process that reads.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from loader_kit import assert_batches_equal, loader_processes, make_loader, make_synth_cache, start_mp_helpers

from fastload.errors import CacheError
from fastload.samples import open_cache
from fastload.tools.bench.storage import DelayedCache

N, BATCH = 20, 4  # 5 batches per epoch
ARGS = dict(batch_size=BATCH, augment="default", seed=5, io_threads=8)
SETUPS = [
    pytest.param("dali", {}, id="dali"),
    pytest.param("cpu", {"num_threads": 0}, id="cpu-in-process"),
    pytest.param("cpu", {"num_threads": 2}, id="cpu-2-workers"),
]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return make_synth_cache(tmp_path_factory.mktemp("read_latency"), n=N, samples_per_shard=5)


@pytest.fixture(scope="module")
def reference(clean) -> dict[str, list[dict]]:
    """Two epochs of each loader kind on the undelayed cache (CPU batches do not depend on the workers)."""
    out = {}
    for kind in ("cpu", "dali"):
        loader = make_loader(kind, clean, **ARGS)
        out[kind] = [*loader, *loader]
        loader.close()
    return out


def jittery(root: Path, seed: int = 0) -> DelayedCache:
    return DelayedCache(root, latency_s=0.0, jitter_s=0.01, seed=seed)


@pytest.mark.parametrize("kind, extra", SETUPS)
def test_order_and_exactly_once_under_random_read_delays(kind, extra, clean, reference):
    cache = jittery(clean, seed=1)
    loader = make_loader(kind, cache, **ARGS, **extra)
    epochs = [list(loader), list(loader)]
    loader.close()
    assert_batches_equal(epochs[0] + epochs[1], reference[kind])
    for batches in epochs:
        seen = np.concatenate([b["index"].numpy() for b in batches])
        assert np.array_equal(np.sort(seen), np.arange(N)), "not exactly once"


@pytest.mark.parametrize("kind, extra", SETUPS)
def test_resume_under_random_read_delays_is_bit_exact(kind, extra, clean, reference):
    first = make_loader(kind, jittery(clean, seed=2), **ARGS, **extra)
    seen = []
    for batch in first:  # break after 3 of 5 batches, with the next ones read ahead
        seen.append(batch)
        if len(seen) == 3:
            state = first.state_dict()
            break
    first.close()
    resumed = make_loader(kind, jittery(clean, seed=3), **ARGS, **extra)
    resumed.load_state_dict(state)
    rest = [*resumed, *resumed]
    resumed.close()
    assert_batches_equal(seen + rest, reference[kind])


class SlowSample(DelayedCache):
    """Reads of the sample starting at byte ``slow_start`` take 0.2 s more (an attribute: workers get a copy)."""

    slow_start = -1

    def read_bytes(self, fd: int, length: int, start: int) -> bytes:
        if start == self.slow_start:
            time.sleep(0.2)
        return super().read_bytes(fd, length, start)


def flip_image_byte(cache: Path, index: int) -> None:
    ds = open_cache(cache)
    shard = ds.read_members(index).shard
    entry = json.loads((cache / shard.replace(".tar", ".json")).read_text())
    [sample] = [s for s in entry["samples"] if s["key"] == ds.key(index)]
    member = sample["members"][0]  # the image
    with open(cache / shard, "r+b") as fh:
        fh.seek(member["offset"] + member["size"] // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x10]))


@pytest.mark.parametrize("kind, extra", SETUPS)
def test_the_first_bad_sample_of_its_batch_is_reported_after_the_batches_before(
    kind, extra, clean, reference, tmp_path
):
    # samples 9 and 10 of batch 2 (8..11) are corrupt; 9 is slow, so 10 fails first: 9 must still be the error
    root = tmp_path / "cache"
    shutil.copytree(clean, root)
    for index in (9, 10):
        flip_image_byte(root, index)
    cache = SlowSample(root, latency_s=0.0, jitter_s=0.01)
    cache.slow_start = cache.span(9)[0]
    loader = make_loader(kind, cache, **{**ARGS, "shuffle": False}, **extra)
    batches = []
    with pytest.raises(CacheError) as error:
        for batch in loader:
            batches.append(batch)
    loader.close()
    assert re.search(r"sample 00000009 \(cache index 9\)", str(error.value)), str(error.value)
    want = make_loader(kind, clean, **{**ARGS, "shuffle": False})
    assert_batches_equal(batches, [b for _, b in zip(range(2), want, strict=False)])
    want.close()


def _os_threads() -> int:
    return psutil.Process().num_threads()


@pytest.mark.parametrize("kind, extra", SETUPS)
def test_close_with_reads_in_flight_leaves_no_thread_or_process(kind, extra, clean):
    start_mp_helpers()
    gc.collect()  # another test's loader may still hold threads until the garbage collector closes it
    mine_before = set(threading.enumerate())
    # whatever a first loader starts for good (torch's thread pools) is started before counting
    warm = make_loader(kind, clean, **ARGS, **extra)
    next(iter(warm))
    warm.close()
    threads, processes = _os_threads(), loader_processes()

    cache = DelayedCache(clean, latency_s=0.2)
    loader = make_loader(kind, cache, **ARGS, **extra)
    batches = iter(loader)
    next(batches)
    if kind == "cpu" and not extra["num_threads"]:
        assert cache.reads_in_flight > 0  # the next batches' reads are under way in this process
    started = time.monotonic()
    loader.close()
    assert time.monotonic() - started < 5
    assert not [t.name for t in set(threading.enumerate()) - mine_before if t.name.startswith("fastload")]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_os_threads() > threads or loader_processes() - processes):
        time.sleep(0.05)
    assert _os_threads() <= threads, [t.name for t in threading.enumerate()]
    assert not loader_processes() - processes, "worker processes left after close()"


class Metered(DelayedCache):
    """Writes each process's peak reads and bytes in flight to ``meter_dir/<pid>`` (workers are processes)."""

    meter_dir = ""

    def read_bytes(self, fd: int, length: int, start: int) -> bytes:
        try:
            return super().read_bytes(fd, length, start)
        finally:
            peaks = {"reads": self.peak_reads, "bytes": self.peak_bytes}
            Path(self.meter_dir, str(os.getpid())).write_text(json.dumps(peaks))


def _backend(kind: str, cache, workers: int, io_threads: int, max_read_bytes: int, batch_size: int = BATCH):
    from fastload.augment.config import load_augment

    args = dict(
        cache=cache, out_size=(32, 32), augment=load_augment("none"), batch_size=batch_size, prefetch=2
    )
    if kind == "dali":
        from fastload.pipeline.dali import DaliBackend

        return DaliBackend(**args, device="cpu", num_threads=2, workers=max(1, workers),
                           io_threads=io_threads, max_read_bytes=max_read_bytes)  # fmt: skip
    from fastload.pipeline.opencv import OpencvBackend

    return OpencvBackend(**args, device=torch.device("cpu"), num_workers=workers, io_threads=io_threads,
                        max_read_bytes=max_read_bytes)  # fmt: skip


@pytest.mark.parametrize("kind, extra", SETUPS)
@pytest.mark.parametrize(
    "io_threads, samples_of_bytes", [(3, 100), (8, 2.5)], ids=["3-threads", "8-threads-2.5-samples"]
)
def test_reads_in_flight_stay_within_io_threads_and_max_read_bytes(
    kind, extra, io_threads, samples_of_bytes, clean, tmp_path
):
    cache = Metered(clean, latency_s=0.01, jitter_s=0.01)
    cache.meter_dir = str(tmp_path)
    sizes = [cache.span_bytes(i) for i in range(N)]
    max_bytes = int(samples_of_bytes * min(sizes))  # with 2.5: a batch of 4 exceeds it on its own
    loader = make_loader("cpu", cache, **{**ARGS, "augment": "none"})  # only for its plans
    backend = _backend(kind, cache, extra.get("num_threads", 0), io_threads, max_bytes)
    out = [b["index"].numpy() for b in backend.iterate(loader.plans(0))]
    backend.close()
    assert np.array_equal(np.concatenate(out), np.concatenate([p.indices for p in loader.plans(0)]))
    peaks = [json.loads(p.read_text()) for p in tmp_path.iterdir()]
    assert len(peaks) == (extra.get("num_threads") or 1)
    for peak in peaks:
        assert 2 <= peak["reads"] <= io_threads, peak  # reads overlap, never beyond the pool
        assert peak["bytes"] <= max(max_bytes, max(sizes)), (peak, max_bytes)


@pytest.mark.parametrize("kind, extra", SETUPS)
def test_small_batches_still_keep_io_threads_reads_in_flight(kind, extra, clean, tmp_path):
    # batch 2, 8 threads: a read-ahead of one or two plans would cap the reads in flight at 2 or 4 per process
    cache = Metered(clean, latency_s=0.03)
    cache.meter_dir = str(tmp_path)
    loader = make_loader("cpu", cache, **{**ARGS, "augment": "none", "batch_size": 2})  # only for its plans
    backend = _backend(kind, cache, extra.get("num_threads", 0), 8, 64 << 20, batch_size=2)
    out = [b["index"].numpy() for b in backend.iterate(loader.plans(0))]
    backend.close()
    assert np.array_equal(np.concatenate(out), np.concatenate([p.indices for p in loader.plans(0)]))
    peaks = [json.loads(p.read_text())["reads"] for p in tmp_path.iterdir()]
    assert peaks == [8] * (extra.get("num_threads") or 1)


def test_delayed_cache_counts_its_reads_and_travels_to_workers_with_its_latency(clean):
    import pickle

    with pytest.raises(ValueError, match="latency_s must be a number of seconds >= 0"):
        DelayedCache(clean, latency_s=-1)
    with pytest.raises(ValueError, match="jitter_s"):
        DelayedCache(clean, latency_s=0, jitter_s=float("nan"))
    cache = DelayedCache.from_ms(clean, 5, jitter_s=0.001, seed=4)
    started = time.perf_counter()
    cache.read_members(3)
    assert time.perf_counter() - started >= 0.005
    assert (cache.reads, cache.peak_reads, cache.peak_bytes, cache.reads_in_flight) == (
        1,
        1,
        cache.span_bytes(3),
        0,
    )
    copy = pickle.loads(pickle.dumps(cache))  # what a DataLoader worker gets: the latency, fresh counters
    assert (copy.latency_s, copy.jitter_s, copy.seed, copy.reads) == (0.005, 0.001, 4, 0)
    assert copy[3]["meta"] == cache[3]["meta"]
    cache.reset_peaks()
    assert (cache.reads, cache.peak_reads) == (0, 0)


def test_drop_page_cache_advises_every_shard(clean):
    from fastload.tools.bench.storage import drop_page_cache

    shards = open_cache(clean).manifest.shards
    assert drop_page_cache(clean) == sum(s.bytes for s in shards)


@pytest.mark.parametrize("workers, depth", [(0, 1), (0, 3), (1, 2), (2, 1), (2, 4), (3, 2)])
def test_each_work_item_names_the_plans_its_worker_gets_next(workers, depth):
    from fastload.pipeline.plan import BatchPlan
    from fastload.pipeline.work_sampler import WorkSampler

    plans = [BatchPlan(indices=np.array([2 * k, 2 * k + 1])) for k in range(11)]
    feed = WorkSampler(workers, depth=depth)
    feed.source = iter(plans)
    items = list(feed)
    stride = max(1, workers)  # DataLoader's round-robin: item k goes to worker k mod W; W = 0: this process
    assert [list(item.plan.indices) for item in items] == [list(p.indices) for p in plans]
    for k, item in enumerate(items):
        later = [plans[j] for j in range(k + stride, min(k + stride * depth, len(plans) - 1) + 1, stride)]
        assert list(item.ahead) == [int(i) for p in later for i in p.indices], k
