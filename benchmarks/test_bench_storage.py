"""Storage latency: each loader's samples/s with 0 and 20 ms added to every sample read, in one run.

A NAS serves a random read of one sample in 1-10 ms where a local disk takes ~0.1 ms. `DelayedCache` adds a
fixed sleep to every ``pread`` (the sleep releases the GIL, as a read waiting on the network does), and each
loader is measured with and without it: 64x64 output, no augmentation (``configs/none.yaml``), batch 8, every
usable core. The goal (issue 11) is that each loader keeps >= 80 % of its samples/s when every read takes
20 ms longer: enough reads in flight that storage latency never sets the pace. Rows: ``dali``
(`fastload.Loader`, DALI's graph; on the CPU without a GPU), ``cpu`` (`fastload.CpuLoader`, one worker process
per core), ``cpu-in-process`` (`fastload.CpuLoader` with ``num_threads=0``).

Run, as a table (``--epochs`` adds an epoch read from the disk, shard pages dropped, vs the next one)::

    python benchmarks/test_bench_storage.py [--latency-ms 20] [--rounds 3] [--workers N] [--cache DIR] [--epochs]
    python -m pytest benchmarks/test_bench_storage.py --benchmark-only -s

Each loader makes ``--rounds`` passes at each latency, interleaved; the table shows the median and the
spread. ``extra_info`` of each pytest-benchmark row holds ``samples_per_s`` (with the latency),
``samples_per_s_no_latency`` and their ``ratio``. Data: 320 synthetic 512x512 JPEGs (``fastload synth``),
built once (``--cache DIR`` keeps them): 40 batches, the first 4 of each pass left out of the timing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pytest

from fastload.cores import usable_cores
from fastload.tools.bench.storage import DelayedCache, drop_page_cache

# fastload.Loader (DALI; on the CPU here), fastload.CpuLoader (one worker process per core), and the CpuLoader
# loading in the calling process (num_threads=0: reads overlap the decoding of the batch before)
KINDS = ("dali", "cpu", "cpu-in-process")
BATCH = 8
SIZE = (64, 64)
LATENCY_MS = 20.0
SAMPLES = 320
ROUNDS = 3  # each loader is measured this often at each latency (interleaved); the median counts
WARMUP = 4  # batches of a pass left out of the timing: pipeline build, worker start, the first reads


def build_bench_cache(root: Path, *, n: int = SAMPLES) -> Path:
    """``n`` synthetic 512x512 images built into ``root/cache`` (reused when it is already there)."""
    from fastload.build.build import build_cache
    from fastload.build.synth import synth_coco

    cache = root / "cache"
    if not (cache / "manifest.json").exists():
        synth_coco(out=root / "data", n=n, size=(512, 512), instances=(5, 20), seed=0)
        build_cache(
            coco=root / "data/annotations.json", images=root / "data/images", out=cache, progress=False
        )
    return cache


def make_loader(kind: str, cache, *, workers: int):
    """The loader under test: DALI's graph ("dali", on the GPU when there is one), or the CpuLoader with
    ``workers`` processes ("cpu") or none ("cpu-in-process")."""
    import fastload

    if kind == "cpu-in-process":
        kind, workers = "cpu", 0
    cls = {"dali": fastload.Loader, "cpu": fastload.CpuLoader}[kind]
    device = "cuda" if kind == "dali" and _cuda() else "cpu"
    return cls(cache, batch_size=BATCH, size=SIZE, augment="none", device=device, num_threads=workers, seed=0)


def timed_pass(loader, *, skip: int = 0) -> float:
    """Samples/s of one pass of ``loader``, the first ``skip`` batches left out of the timing."""
    n, start = 0, time.perf_counter() if skip == 0 else None
    for k, batch in enumerate(loader):
        if k == skip and skip:
            start = time.perf_counter()
        if k >= skip:
            n += len(batch["index"])
    if start is None or n == 0:
        raise ValueError(f"a pass of {len(loader)} batches is too short to leave {skip} out of the timing")
    return n / (time.perf_counter() - start)


def samples_per_s(kind: str, cache_root: Path, *, latency_ms: float, workers: int) -> float:
    """One pass over the cache with ``latency_ms`` added to every read; samples/s after `WARMUP` batches."""
    cache = DelayedCache.from_ms(cache_root, latency_ms)
    loader = make_loader(kind, cache, workers=workers)
    try:
        return timed_pass(loader, skip=WARMUP)
    finally:
        loader.close()
        cache.close()


def cold_and_warm(kind: str, cache_root: Path, *, workers: int) -> tuple[float, float]:
    """Samples/s of an epoch read from the disk (shard pages dropped) and of the next, from the page cache.

    A first, untimed pass starts the loader (pipeline, worker processes); then the shards' pages are dropped
    (`drop_page_cache`) and two whole passes are timed, each including its own first batch.
    """
    from fastload.samples import open_cache

    cache = open_cache(cache_root)
    loader = make_loader(kind, cache, workers=workers)
    try:
        timed_pass(loader)
        drop_page_cache(cache_root)
        return timed_pass(loader), timed_pass(loader)
    finally:
        loader.close()
        cache.close()


def read_ms_cold_and_warm(cache_root: Path) -> tuple[float, float]:
    """Milliseconds per sample read (one ``pread`` + CRC checks, one thread, shuffled order): from the disk
    (shard pages dropped) and again from the page cache."""
    import numpy as np

    from fastload.samples import open_cache

    cache = open_cache(cache_root)
    order = np.random.default_rng(0).permutation(len(cache))
    try:
        drop_page_cache(cache_root)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            for i in order:
                cache.read_members(int(i))
            times.append(1000 * (time.perf_counter() - start) / len(order))
        return times[0], times[1]
    finally:
        cache.close()


def with_and_without(
    kind: str, cache_root: Path, *, latency_ms: float, workers: int, rounds: int = ROUNDS
) -> tuple[list[float], list[float]]:
    """Samples/s of ``rounds`` passes without, and ``rounds`` with the latency, interleaved (a busy spell of a
    shared machine then hits both)."""
    base, slow = [], []
    for _ in range(rounds):
        base.append(samples_per_s(kind, cache_root, latency_ms=0.0, workers=workers))
        slow.append(samples_per_s(kind, cache_root, latency_ms=latency_ms, workers=workers))
    return base, slow


def measure(
    cache_root: Path, *, latency_ms: float = LATENCY_MS, workers: int | None = None, rounds: int = ROUNDS
) -> list[dict]:
    """Rows ``{loader, latency_ms, samples_per_s, spread, ratio}``: each loader without and with the latency;
    ``samples_per_s`` is the median of ``rounds`` passes, ``spread`` their (min, max)."""
    workers = usable_cores() if workers is None else workers
    rows = []
    for kind in KINDS:
        base, slow = with_and_without(kind, cache_root, latency_ms=latency_ms, workers=workers, rounds=rounds)
        for ms, got in ((0.0, base), (latency_ms, slow)):
            rows.append(
                {
                    "loader": kind,
                    "latency_ms": ms,
                    "samples_per_s": statistics.median(got),
                    "spread": (min(got), max(got)),
                    "ratio": statistics.median(got) / statistics.median(base),
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| loader | added per read | samples/s (median) | min-max | vs no latency |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["spread"]
        lines.append(
            f"| {r['loader']} | {r['latency_ms']:g} ms | {r['samples_per_s']:.1f} | {low:.0f}-{high:.0f} "
            f"| {100 * r['ratio']:.0f} % |"
        )
    return "\n".join(lines)


def epoch_table(cache_root: Path, *, workers: int | None = None) -> str:
    workers = usable_cores() if workers is None else workers
    lines = ["| loader | epoch from disk (samples/s) | next epoch, page cache (samples/s) |", "|---|---|---|"]
    for kind in KINDS:
        cold, warm = cold_and_warm(kind, cache_root, workers=workers)
        lines.append(f"| {kind} | {cold:.1f} | {warm:.1f} |")
    cold, warm = read_ms_cold_and_warm(cache_root)
    lines.append(f"| one sample read (pread + CRC), ms | {cold:.3f} | {warm:.3f} |")
    return "\n".join(lines)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------------------------ pytest-benchmark


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return build_bench_cache(tmp_path_factory.mktemp("storage-bench"))


@pytest.mark.parametrize("kind", KINDS)
def test_read_latency(benchmark, cache_root, kind):
    """Samples/s without and with 20 ms per read, `ROUNDS` passes each (medians); timed: all the passes."""
    base, slow = benchmark.pedantic(
        with_and_without,
        args=(kind, cache_root),
        kwargs={"latency_ms": LATENCY_MS, "workers": usable_cores()},
        rounds=1,
    )
    base, slow = statistics.median(base), statistics.median(slow)
    benchmark.extra_info.update(
        samples_per_s_no_latency=base, samples_per_s=slow, latency_ms=LATENCY_MS, ratio=slow / base
    )
    print(
        f"\n{kind}: {base:.1f} samples/s, {slow:.1f} with {LATENCY_MS:g} ms per read ({100 * slow / base:.0f} %)"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_second_epoch_from_the_page_cache(benchmark, cache_root, kind):
    """An epoch after the shards' pages were dropped, then the next one; the benchmark's time is the pair."""
    cold, warm = benchmark.pedantic(
        cold_and_warm, args=(kind, cache_root), kwargs={"workers": usable_cores()}, rounds=1
    )
    read_cold, read_warm = read_ms_cold_and_warm(cache_root)
    benchmark.extra_info.update(
        samples_per_s_cold=cold, samples_per_s_warm=warm, read_ms_cold=read_cold, read_ms_warm=read_warm
    )
    print(
        f"\n{kind}: {cold:.1f} samples/s from the disk, {warm:.1f} from the page cache; one read "
        f"{read_cold:.3f} ms from the disk, {read_warm:.3f} ms from the page cache"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=LATENCY_MS, help="added to every sample read")
    parser.add_argument(
        "--workers", type=int, default=None, help="DALI threads / CpuLoader workers (default: cores)"
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="passes per loader and latency (median)")
    parser.add_argument("--cache", type=Path, default=None, help="a folder to build (or reuse) the cache in")
    parser.add_argument(
        "--epochs", action="store_true", help="also time an epoch from the disk and the next one"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = build_bench_cache(args.cache or Path(tmp))
        print(table(measure(root, latency_ms=args.latency_ms, workers=args.workers, rounds=args.rounds)))
        if args.epochs:
            print()
            print(epoch_table(root, workers=args.workers))


if __name__ == "__main__":  # CpuLoader workers import this module: keep the run under the guard
    main()
