"""Loading overlaps with the model step: an epoch takes about N·max(S, L), not N·(S + L).

A cache wrapper makes reading each batch take L seconds (sleeping, as a slow NAS would); the "model step"
sleeps S seconds. The first batch is left out of the timing (pipeline start-up).
"""

from __future__ import annotations

import time

import pytest
from loader_kit import LOADER_KINDS, make_loader, make_synth_cache

from fastload.cache.reader import CacheDataset

BATCH, STEPS, LOAD_S, STEP_S = 4, 8, 0.08, 0.08


class SlowCache(CacheDataset):
    """A real cache whose every sample read sleeps LOAD_S / BATCH seconds (as a slow disk would)."""

    def read_bytes(self, fd, length, start):
        time.sleep(LOAD_S / BATCH)
        return super().read_bytes(fd, length, start)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_synth_cache(tmp_path_factory.mktemp("overlap"), n=BATCH * (STEPS + 1))


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_epoch_time_is_max_not_sum(kind, cache):
    slow = SlowCache(cache)
    # CpuLoader: one worker process is enough to hide L behind S; the DALI loader reads ahead in a thread
    loader = make_loader(kind, slow, batch_size=BATCH, shuffle=False, prefetch=2, num_threads=1)
    batches = iter(loader)
    next(batches)  # start-up
    start = time.perf_counter()
    for _ in batches:
        time.sleep(STEP_S)  # the model step
    elapsed = time.perf_counter() - start
    serial = STEPS * (LOAD_S + STEP_S)
    overlapped = STEPS * max(LOAD_S, STEP_S)
    print(f"{kind}: {elapsed:.2f}s for {STEPS} steps; serial would be {serial:.2f}s, overlapped {overlapped:.2f}s")
    # well below the serial sum, and not faster than physically possible
    assert overlapped * 0.95 <= elapsed < overlapped + 0.5 * (serial - overlapped)
    loader.close()
