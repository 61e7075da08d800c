"""Cache read throughput: raw member reads (one pread + CRC per sample), full decode, and each member's decode.

Run: ``pytest benchmarks/test_bench_cache.py --benchmark-only`` (``--benchmark-columns=mean,ops``).
``extra_info["samples_per_s"]`` holds the throughput of the whole-cache passes. Data: the real 800x600
sample photos (``fastload.sample_data()``, or ``FASTLOAD_SAMPLE_DATA``) and 32 synthetic 512x512 images.
"""

from __future__ import annotations

import pytest

from fastload.cache import format as fmt


def _all(fn, n):
    def run():
        for i in range(n):
            fn(i)

    return run


def test_read_members(benchmark, cache):
    n = len(cache)
    benchmark(_all(cache.read_members, n))
    benchmark.extra_info["samples_per_s"] = n / benchmark.stats.stats.mean


def test_full_decode(benchmark, cache):
    n = len(cache)
    benchmark(_all(cache.__getitem__, n))
    benchmark.extra_info["samples_per_s"] = n / benchmark.stats.stats.mean


DECODERS = {
    "image": lambda m: fmt.decode_image(m.image),
    "sem": lambda m: fmt.decode_label(m.semantic, kind="sem"),
    "ins": lambda m: fmt.decode_label(m.instance, kind="ins"),
}


@pytest.mark.parametrize("member", list(DECODERS))
def test_decode_member(benchmark, cache, member):
    """Decoding cost per sample on the CPU; the labels are what the DALI CPU fallback's reader threads decode."""
    members = [cache.read_members(i) for i in range(len(cache))]
    decode = DECODERS[member]

    def each() -> None:
        # each result dropped before the next, as the loaders do: keeping all alive would mostly measure the
        # kernel handing out fresh pages (first-touch page faults)
        for m in members:
            decode(m)

    benchmark(each)
    benchmark.extra_info["ms_per_sample"] = 1000 * benchmark.stats.stats.mean / len(members)


def test_feed_work_per_sample_on_the_gpu_path(benchmark, cache):
    """What a feed worker does per sample when DALI runs on the GPU: one read (CRC-checked), the two label headers
    checked and turned into inflate's band tables, the parameters drawn and turned into the graph's columns. It
    runs in the feed worker processes, not in the training process (benchmarks/host_work.py measures both)."""
    import numpy as np

    from fastload.augment.config import AugmentConfig
    from fastload.pipeline.dali.feed import FeedJob
    from fastload.pipeline.dali.spec import GraphSpec
    from fastload.pipeline.plan import BatchPlan

    cfg = AugmentConfig.default()
    spec = GraphSpec.create(out_size=(512, 512), augment=cfg, device="gpu")
    job = FeedJob(cache=cache, spec=spec, augment=cfg, io_threads=16, max_read_bytes=64 << 20)
    job.open()
    plan = BatchPlan(np.arange(len(cache)))
    benchmark(job.run, plan, [])
    job.close()
    benchmark.extra_info["ms_per_sample"] = 1000 * benchmark.stats.stats.mean / len(cache)
