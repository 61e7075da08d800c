"""Long runs and resource hygiene: memory, file descriptors, threads and processes.

The 20-epoch soaks are marked ``slow`` (``pytest -m slow``); the descriptor and worker-death checks run in
the default suite.
"""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from statistics import median

import numpy as np
import psutil
import pytest
from loader_kit import LOADER_KINDS, loader_processes, make_loader, make_synth_cache, start_mp_helpers

from fastload.cache.reader import MAX_OPEN_SHARDS
from fastload.samples import open_cache

EPOCHS = 20
SOAK_ARGS = dict(batch_size=8, size=(64, 64), augment="default", seed=1)
MiB = 2**20

# RSS bound, after the steady state is reached (epoch 2: worker processes started, DALI's pipeline and
# buffers allocated, the allocator's arenas warm). Measured here over 20 epochs: CpuLoader's process tree
# is flat to the 0.1 MiB; the DALI Loader's RSS wanders by +-5 MiB (glibc arenas of its worker threads)
# with no trend over 80 epochs. 32 MiB over 18 epochs (216 steps) is above that noise, and below what a
# real leak costs: one batch per step (8 x ~150 KiB of outputs) is ~250 MiB, one sample's decoded source
# arrays per step (~245 KiB at 96 x 128) ~50 MiB. Growth is taken between medians of three epochs, so one
# noisy reading at either end does not decide it.
RSS_GROWTH_BOUND = 32 * MiB


@pytest.fixture(scope="module")
def soak_cache(tmp_path_factory) -> Path:
    return make_synth_cache(tmp_path_factory.mktemp("soak"), n=96, size=(96, 128), samples_per_shard=16)


def open_fds() -> dict[str, str]:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return fds


def tree_rss(proc: psutil.Process) -> int:
    """RSS of a process and its children (the CPU loader's workers hold most of its memory)."""
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def _fastload_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("fastload")]


@pytest.mark.slow
@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_twenty_epochs_hold_memory_descriptors_threads_and_processes(kind, soak_cache):
    me = psutil.Process()
    start_mp_helpers()
    gc.collect()
    fds_before = open_fds()
    children_before = loader_processes()
    threads_before = threading.active_count()

    cache = open_cache(soak_cache)
    loader = make_loader(kind, cache, num_threads=2, **SOAK_ARGS)
    rss, seconds = [], []
    for epoch in range(EPOCHS):
        start = time.monotonic()
        seen = []
        for batch in loader:
            seen.append(batch["index"].numpy().copy())
        del batch  # a batch's tensors from worker processes hold shared-memory descriptors
        seconds.append(time.monotonic() - start)
        assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(cache))), f"epoch {epoch}: not exactly once"
        gc.collect()
        rss.append(tree_rss(me))
    steady, end = median(rss[1:4]), median(rss[-3:])
    print(f"{kind}: RSS after epochs 2-4 {steady / MiB:.1f} MiB, after 18-20 {end / MiB:.1f} MiB; "
          f"{sum(seconds):.1f} s for {EPOCHS} epochs of {len(loader)} batches")  # fmt: skip
    assert end - steady <= RSS_GROWTH_BOUND, [round(r / MiB, 1) for r in rss]

    # while running: the shard files of the cache and the loader's own (pipes to workers, DALI) only
    during = set(open_fds()) - set(fds_before)
    assert len(during) <= MAX_OPEN_SHARDS + 32, sorted(open_fds()[fd] for fd in during)

    loader.close()
    cache.close()
    del loader
    gc.collect()
    deadline = time.monotonic() + 10  # worker processes are joined by close(); give the OS a moment
    while time.monotonic() < deadline and (loader_processes() - children_before):
        time.sleep(0.05)
    assert not (loader_processes() - children_before), "processes left after close()"
    leaked = {fd: target for fd, target in open_fds().items() if fds_before.get(fd) != target}
    assert not leaked, f"descriptors left after close(): {leaked}"
    assert not _fastload_threads() and threading.active_count() <= threads_before


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_close_releases_the_shard_files_of_a_cache_the_loader_opened(kind, soak_cache):
    gc.collect()
    before = open_fds()
    loader = make_loader(kind, soak_cache, batch_size=16, shuffle=False, num_threads=2)  # opens the cache itself
    for batch in loader:
        del batch
    loader.close()
    gc.collect()
    shards = {fd: t for fd, t in open_fds().items() if before.get(fd) != t and t.endswith(".tar")}
    assert not shards, f"shard files still open after close(): {sorted(shards.values())}"
    assert len(list(loader)) == len(loader)  # usable again: the files reopen on demand
    loader.close()


def test_a_cache_of_many_shards_stays_within_a_low_descriptor_limit(tmp_path):
    # one descriptor per shard ever read used to stay open: a shuffled pass over a cache of more shards than
    # the soft RLIMIT_NOFILE (often 1024) failed with EMFILE ("Too many open files") in the DALI reader or a
    # CPU worker. Here: 150 one-sample shards read in a process limited to 100 descriptors.
    cache = make_synth_cache(tmp_path, n=150, size=(16, 24), samples_per_shard=1)
    code = textwrap.dedent(
        f"""
        import os, resource
        import numpy as np
        from fastload.cache.reader import MAX_OPEN_SHARDS
        from fastload.samples import open_cache
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        ds = open_cache({str(cache)!r})
        for i in np.random.default_rng(0).permutation(len(ds)).tolist() * 2:
            ds[i]
        assert len(ds._fds) == MAX_OPEN_SHARDS, len(ds._fds)
        print("ok", len(os.listdir("/proc/self/fd")))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-2000:]


def test_a_cpu_worker_killed_mid_epoch_raises_and_close_leaves_no_process(soak_cache):
    before = loader_processes()
    loader = make_loader("cpu", soak_cache, num_threads=2, **SOAK_ARGS)
    error = None
    start = time.monotonic()
    try:
        for k, batch in enumerate(loader):
            del batch
            if k == 1:
                workers = sorted(loader_processes() - before)
                assert len(workers) == 2
                psutil.Process(workers[0]).kill()  # the out-of-memory killer's way
    except RuntimeError as exc:
        error = exc
    # torch words it "exited unexpectedly" or "is killed by signal: Killed", depending on who notices first
    assert error is not None and re.search(r"DataLoader worker .*(exited unexpectedly|killed by signal)", str(error)), error
    assert time.monotonic() - start < 60  # torch checks its workers every few seconds; never a hang
    loader.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (loader_processes() - before):
        time.sleep(0.05)
    assert not (loader_processes() - before)
