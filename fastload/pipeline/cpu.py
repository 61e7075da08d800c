"""The CPU backend: torch DataLoader worker processes running the NumPy/OpenCV reference kernels.

It is the benchmark's "before" and the reference the DALI backend is checked against. The loader shell
(`fastload.loader.CpuLoader`) hands it an iterator of `BatchPlan`s; a batch sampler pulls those plans and
gives each worker a batch of ``(cache index, SampleParams)`` pairs; the worker decodes (``cache[i]``),
augments (`fastload.augment.reference.augment_sample`) and collates; the main process moves the batch to
the device.

Workers are persistent: they start at the first `iterate` and serve every later one (one per epoch) until
`close`. A new `iterate` may start while the previous one was abandoned half-way: torch's iterator reset
drains the batches still in flight, and the abandoned generator stops instead of stealing the new
epoch's batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fastload.augment.config import AugmentConfig
from fastload.augment.params import SampleParams, map_hw
from fastload.augment.reference import augment_sample
from fastload.errors import FastloadError, add_note
from fastload.pipeline.nvtx import nvtx_range
from fastload.pipeline.plan import BatchPlan

# dtype and shape (without N) of every batch entry, in BATCH_KEYS order (a test checks the keys); hw is the
# output size, mhw the map size (output size / stride)
_LAYOUT = {
    "image": (torch.float32, lambda hw, mhw: (3, *hw)),
    "semantic": (torch.int64, lambda hw, mhw: hw),
    "instance": (torch.int32, lambda hw, mhw: hw),
    "heatmap": (torch.float32, lambda hw, mhw: (1, *mhw)),
    "offset": (torch.float32, lambda hw, mhw: (2, *mhw)),
    "index": (torch.int64, lambda hw, mhw: ()),
}


class _AugmentedSamples(Dataset):
    """Map-style dataset whose "indices" are ``(cache index, SampleParams)`` pairs."""

    def __init__(self, cache: Sequence, augment: AugmentConfig, out_hw: tuple[int, int], stride: int) -> None:
        self.cache = cache
        self.augment = augment
        self.out_hw = out_hw
        self.stride = stride

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, item: tuple[int, SampleParams]) -> dict[str, Any]:
        index, params = item
        try:
            with nvtx_range("fastload/read_decode"):
                sample = self.cache[index]
            with nvtx_range("fastload/augment"):
                out = augment_sample(sample, params, self.augment, out_hw=self.out_hw, stride=self.stride)
        except Exception as exc:
            # CacheError already names shard and sample; every error gets the cache index, which survives
            # torch's re-raise in the main process (it formats the worker's traceback, notes included)
            if not isinstance(exc, FastloadError) or str(index) not in str(exc):
                add_note(exc, f"while loading cache sample {index} in the CPU backend")
            raise
        out["index"] = np.int64(index)
        return out


class _Collate:
    """Stack samples into the batch dict; an empty batch gives correctly shaped empty tensors."""

    def __init__(self, out_hw: tuple[int, int], map_size: tuple[int, int]) -> None:
        self.out_hw = out_hw
        self.map_size = map_size

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {}
        for key, (dtype, shape) in _LAYOUT.items():
            if samples:
                batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]))
            else:
                batch[key] = torch.empty((0, *shape(self.out_hw, self.map_size)), dtype=dtype)
        return batch


class _PlanFeed:
    """Batch sampler: yields each plan of the current source as a list of ``(index, params)`` pairs."""

    def __init__(self) -> None:
        self.source: Iterator[BatchPlan] = iter(())

    def __iter__(self) -> Iterator[list[tuple[int, SampleParams]]]:
        return self._pairs(self.source)  # bound now: a later iterate() swaps the source for later iterators

    @staticmethod
    def _pairs(source: Iterator[BatchPlan]) -> Iterator[list[tuple[int, SampleParams]]]:
        for plan in source:
            yield list(zip(plan.indices.tolist(), plan.params, strict=True))


def _worker_init(_worker_id: int) -> None:
    # one OpenCV thread per worker: the parallelism is the worker processes (torch limits its own threads).
    # A forked worker already has one (see _forking_with_single_threaded_opencv) and must not call
    # setNumThreads: OpenCV's pthreads pool, set up in the parent, can hang it. A spawned worker is fresh.
    import cv2

    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


@contextmanager
def _forking_with_single_threaded_opencv() -> Iterator[None]:
    """Start (fork) workers while OpenCV is set to one thread, then give the parent its setting back."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


class TorchBackend:
    """Turns batch plans into batches with torch DataLoader workers and the CPU reference kernels.

    Parameters
    ----------
    cache : the opened cache (``cache[i]`` → decoded arrays; ``cache.manifest.stride``)
    out_size : (H, W) output size, divisible by the stride
    augment : the augmentation configuration (``fit`` and ``normalize`` are read from it)
    device : where batches go; for CUDA, batches are pinned and copied non-blocking
    batch_size : the largest batch a plan holds (the DataLoader itself takes the plans as they come)
    num_workers : worker processes; 0 loads in the calling process
    prefetch : batches prepared ahead, at least one per worker
    """

    def __init__(
        self,
        *,
        cache: Sequence,
        out_size: tuple[int, int],
        augment: AugmentConfig,
        device: torch.device,
        batch_size: int,
        num_workers: int,
        prefetch: int,
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 (in-process) or a positive integer, got {num_workers!r}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be a positive integer, got {prefetch!r}")
        stride = int(cache.manifest.stride)
        out_hw = (int(out_size[0]), int(out_size[1]))
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self._feed = _PlanFeed()
        self._generation = 0
        cuda = self.device.type == "cuda"
        workers = self.num_workers > 0
        self._loader: DataLoader | None = DataLoader(
            _AugmentedSamples(cache, augment, out_hw, stride),
            batch_sampler=self._feed,
            num_workers=self.num_workers,
            collate_fn=_Collate(out_hw, map_hw(out_hw, stride)),
            pin_memory=cuda,
            worker_init_fn=_worker_init if workers else None,
            # DataLoader's prefetch is per worker: -(-a // b) = ceil, so `prefetch` batches are in flight in all
            prefetch_factor=max(1, -(-prefetch // self.num_workers)) if workers else None,
            persistent_workers=workers,
        )

    def iterate(self, batches: Iterator[BatchPlan]) -> Iterator[dict[str, torch.Tensor]]:
        """Yield one batch dict (keys `BATCH_KEYS`, on ``device``) per plan, in plan order."""
        if self._loader is None:
            raise RuntimeError("TorchBackend.iterate() after close(); make a new backend")
        self._generation += 1
        generation = self._generation
        self._feed.source = iter(batches)
        # with persistent workers this resets the one iterator: batches of an abandoned pass still in flight
        # are drained and dropped
        if self.num_workers > 0 and getattr(self._loader, "_iterator", None) is None:
            with _forking_with_single_threaded_opencv():  # the workers start here, once
                it = iter(self._loader)
        else:
            it = iter(self._loader)
        cuda = self.device.type == "cuda"
        move = self.device.type != "cpu"
        # checked before every next(): a newer iterate() owns the (shared) iterator, and an abandoned
        # generator resumed later must not take its batches
        while generation == self._generation:
            batch = next(it, None)
            if batch is None:
                return
            if move:
                batch = {k: v.to(self.device, non_blocking=cuda) for k, v in batch.items()}
            yield batch

    def close(self) -> None:
        """Stop the worker processes. Idempotent."""
        loader, self._loader = self._loader, None
        self._generation += 1
        if loader is None:
            return
        iterator = getattr(loader, "_iterator", None)  # the persistent workers' iterator, if started
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._feed.source = iter(())

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing useful left to report
            pass
