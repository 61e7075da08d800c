"""Loading overlaps with the model step: while the training loop works on batch k, the loader reads batch k + 1.

That is what makes an epoch take about N·max(S, L) rather than N·(S + L) (S: the step, L: loading a batch). A
cache records every sample it has read as a file (the reads happen in CpuLoader worker processes or in the DALI
feed's threads); the loop, holding batch k and asking for nothing, waits until every sample of batch k + 1 has
been read. A loader that reads only when asked never reads them, and the wait runs into its deadline. Nothing is
timed: the deadline only bounds a failing run (throughput under a real step: `fastload bench`, benchmarks/).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from loader_kit import LOADER_KINDS, make_loader, make_synth_cache

from fastload.cache.reader import CacheDataset

BATCH, STEPS = 4, 4
DEADLINE_S = 60.0  # a failing loader never reads ahead; a working one does within a fraction of a second


class RecordingCache(CacheDataset):
    """A real cache that leaves a file ``read-<index>`` in ``folder`` once it has read a sample (in any process)."""

    def __init__(self, root: Path, *, folder: Path) -> None:
        super().__init__(root)
        self.folder = str(folder)

    def read_members(self, i: int):
        members = super().read_members(i)
        Path(self.folder, f"read-{int(i)}").touch()
        return members


def _unread(folder: Path, wanted: set[str]) -> set[str]:
    """The files of ``wanted`` not in ``folder`` once all are there, or when `DEADLINE_S` has passed."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        missing = wanted - {p.name for p in folder.iterdir()}
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.01)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_synth_cache(tmp_path_factory.mktemp("overlap"), n=BATCH * (STEPS + 1))


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_the_next_batch_is_read_while_the_step_runs(kind, cache, tmp_path):
    reads = tmp_path / "reads"
    reads.mkdir()
    # CpuLoader: one worker process reads ahead of the loop; the DALI loader reads ahead in its feed threads
    recording = RecordingCache(cache, folder=reads)
    loader = make_loader(kind, recording, batch_size=BATCH, shuffle=False, prefetch=2, num_threads=1)
    try:
        batches = iter(loader)
        for k in range(STEPS):
            batch = next(batches)
            assert batch["index"].tolist() == list(range(k * BATCH, (k + 1) * BATCH))
            # the model step on batch k: the loop holds it and asks for nothing while batch k + 1 is read
            missing = _unread(reads, {f"read-{i}" for i in range((k + 1) * BATCH, (k + 2) * BATCH)})
            assert not missing, f"{kind}: batch {k + 1} was not read while the loop held batch {k}: {sorted(missing)}"
    finally:
        loader.close()
