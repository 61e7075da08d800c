"""The OpenCV engine ("opencv-workers": `CpuLoader`, and `Loader` without a GPU): torch DataLoader worker processes running the NumPy/OpenCV reference kernels.

It is the benchmark's "before" and the reference the DALI backend is checked against, so it is made a good
one. The loader shell (`fastload.loader.CpuLoader`) hands it an iterator of `BatchPlan`s; a batch sampler turns
each into a `Work` item (the plan's ``(cache index, SampleParams)`` pairs, and the indices of the plans this
worker will most likely get next: enough of them to keep ``io_threads`` reads busy); a worker

1. reads the batch's samples concurrently on a small thread pool (one CRC-checked ``pread`` each; ``pread``
   releases the GIL), and keeps reading its next batches' samples while it works on this one and while it
   waits for its next work item, so N workers do not mean N reads in flight; with ``num_workers=0`` the
   calling process does the same, so the next batch is read while the caller trains;
2. decodes the image (OpenCV) and the LZ4 masks, applies `fastload.augment.reference.augment_sample`, and
   writes the results into one preallocated array per key;
3. hands over uint8 images, uint8 semantic and int16 instance masks (1.5 MB per 512x512 sample, where the
   finished image and masks take 6 MB): for a CUDA loader the main process finishes them on the GPU
   (`fastload.pipeline.batch`); for a CPU loader the worker also renders the targets after augmentation
   (NumPy, faster on the CPU than the torch twin, and spread over the workers) and the main process only
   normalises and widens (`widen_batch`, into huge-page memory: cheaper than the worker writing the finished,
   four times larger arrays into fresh shared memory; `benchmarks/host_work.py` measures both sides). Arrays
   are written straight into shared memory, so the hand-over to the main process copies nothing.

Workers start with ``forkserver``: a fresh process forked from a clean server, which inherits nothing of the
parent's threads or objects (a forked worker copied DALI pipelines and their half-dead threads and could hang).
They are persistent: started at the first `iterate`, they serve every later one (one per epoch) until `close`,
so the start cost is paid once per loader. A new `iterate` may start while the previous one was abandoned
half-way: torch's iterator reset drains the batches still in flight, and the abandoned generator stops instead
of stealing the new epoch's batches.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fastload.advice import rebuild_shard
from fastload.augment.config import AugmentConfig
from fastload.augment.params import map_hw
from fastload.augment.reference import augment_sample
from fastload.cache.reader import decode_members
from fastload.errors import CacheError, FastloadError, add_note
from fastload.pipeline.batch import finish_batch, numpy_targets, target_layout, widen_batch
from fastload.pipeline.native import check_native, pad_sample, padded_hw, valid_mask, zero_padding
from fastload.pipeline.nvtx import nvtx_range
from fastload.pipeline.plan import BatchPlan, Passes, batch_keys
from fastload.pipeline.prefetch import DEFAULT_IO_THREADS, DEFAULT_MAX_BYTES, Prefetcher, plans_for
from fastload.pipeline.work_sampler import Work, WorkSampler
from fastload.pipeline.workers import MAIN_GUARD_HINT, mp_context
from fastload.procs import keep_freed_memory


class AugmentedBatches(Dataset):
    """Map-style dataset whose "indices" are `Work` items; ``__getitems__`` builds a whole batch at once.

    ``finish`` (the loader's device is the CPU): the worker also renders the targets (NumPy,
    `fastload.pipeline.batch.numpy_targets`), so that the work is spread over the workers; the main process
    normalises the compact uint8 image and widens the masks. Otherwise (CUDA) the main process finishes the
    compact image and masks on the GPU, targets included. Either way the arrays are written straight into shared memory (as torch's own
    collate does in a worker), so handing a batch to the main process copies nothing.
    """

    def __init__(
        self,
        cache: Sequence,
        augment: AugmentConfig,
        out_hw: tuple[int, int],
        *,
        finish: bool,
        io_threads: int,
        max_read_bytes: int,
    ) -> None:
        self.cache = cache
        self.augment = augment
        self.out_hw = out_hw
        self.finish = finish
        self.io_threads = io_threads
        self.max_read_bytes = max_read_bytes
        self._reads: Prefetcher | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reads"] = None  # threads are per process
        return state

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, item):  # pragma: no cover - torch calls __getitems__ with a batch sampler
        raise TypeError("AugmentedBatches is indexed by whole batches (__getitems__)")

    def layout(self, n: int, out_hw: tuple[int, int]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """What a worker hands over for ``n`` samples of ``out_hw``: key → (shape, dtype)."""
        oh, ow = out_hw
        compact = {
            "image": ((n, oh, ow, 3), torch.uint8),
            "semantic": ((n, oh, ow), torch.uint8),
            "instance": ((n, oh, ow), torch.int16),
        }
        if not self.finish:
            return compact
        targets = target_layout(out_hw, self.augment.targets, n)
        return {**compact, **{key: (shape, torch.float32) for key, shape in targets.items()}}

    def __getitems__(self, work: Work) -> dict[str, torch.Tensor]:
        if self._reads is None:
            self._reads = Prefetcher.of_cache(self.cache, io_threads=self.io_threads, max_bytes=self.max_read_bytes)
        indices = work.plan.indices.tolist()
        self._reads.focus(indices, work.ahead.tolist())
        cfg, max_id, native = self.augment, 0, self.out_hw is None
        hws = np.array([self.cache.image_size(i) for i in indices], np.int64).reshape(len(indices), 2) if native else None
        out_hw = padded_hw(hws, cfg.map_stride) if native else self.out_hw
        batch = {key: _shared_empty(shape, dtype) for key, (shape, dtype) in self.layout(len(indices), out_hw).items()}
        rows = {key: tensor.numpy() for key, tensor in batch.items()}
        params = [None] * len(indices) if native else work.plan.sample_params(cfg).samples()
        for k, (index, sample_params) in enumerate(zip(indices, params, strict=True)):
            sample = self._load(index)
            max_id = max(max_id, int(sample.pop("instances")))
            with nvtx_range("fastload/augment"):
                if native:  # each sample at its own size: padded, nothing warped (fastload.pipeline.native)
                    augmented = pad_sample(sample, out_hw)
                else:
                    augmented = augment_sample(sample, sample_params, cfg, out_hw=out_hw)
            if self.finish:
                with nvtx_range("fastload/targets"):
                    augmented.update(numpy_targets(augmented["semantic"], augmented["instance"], cfg.targets))
            for key, row in rows.items():
                row[k] = augmented[key]
        batch["index"] = torch.as_tensor(indices, dtype=torch.int64).reshape(len(indices))
        batch["max_id"] = torch.tensor(max_id, dtype=torch.int64)
        if native:
            batch["hw"] = torch.from_numpy(hws)
        return batch

    def _load(self, index: int) -> dict[str, Any]:
        try:
            with nvtx_range("fastload/read_decode"):
                members = self._reads.take(index)  # a CacheError from the read names shard and sample already
                try:
                    sample = decode_members(members, self.cache.image_size(index))
                except CacheError as exc:
                    raise CacheError(
                        f"shard {members.shard}, sample {members.key} (cache index {index}): {exc}; {rebuild_shard()}"
                    ) from None
        except Exception as exc:
            # every other error gets the cache index, which survives torch's re-raise in the main process (it
            # formats the worker's traceback, notes included)
            if not isinstance(exc, FastloadError):
                add_note(exc, f"while loading cache sample {index} in the CPU backend")
            raise
        # uint16 ids <= 32767 (the cache's limit) are the same numbers as int16: half the bytes of int32
        return {
            "image": sample["image"],
            "semantic": sample["semantic"],
            "instance": sample["instance"].view(np.int16),
            "instances": members.instance_count,
        }

    def close(self) -> None:
        if self._reads is not None:
            self._reads.close()
            self._reads = None


def _collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch  # __getitems__ already built the batch


def _shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor, in shared memory when made in a DataLoader worker (what torch's collate does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = math.prod(shape)
    template = torch.empty(0, dtype=dtype)
    # torch has no public call that allocates an empty tensor in shared memory (share_memory_() copies an existing
    # one into it); this is the call torch's own default_collate makes in a worker
    storage = template._typed_storage()._new_shared(numel, device=template.device)
    return template.new(storage).resize_(shape)


def _worker_init(worker_id: int, user_init: Callable[[int], None] | None = None) -> None:
    # one OpenCV thread per worker: the parallelism is the worker processes (torch limits its own threads).
    # The worker is a fresh process (forkserver), so setting it here is safe.
    import cv2

    from fastload.procs import die_with_parent

    die_with_parent()  # SIGKILL when the fork server ends (it ends with the training process)
    cv2.setNumThreads(1)
    keep_freed_memory()
    if user_init is not None:  # the loader's worker_init_fn (DataLoader's), after fastload's own set-up
        user_init(worker_id)


class OpencvBackend:
    """Turns batch plans into batches with torch DataLoader workers and the CPU reference kernels.

    Parameters
    ----------
    cache : the opened cache (``read_members``, ``image_size``, ``span_bytes``)
    out_size : (H, W) output size, divisible by the targets' stride; None: each sample at its own size, batches
        padded (`fastload.pipeline.native`; the config may not augment)
    augment : the augmentation configuration (geometry, photometric, normalisation, targets)
    device : where batches are finished and delivered; for CUDA the compact batch is pinned and copied
    batch_size : the largest batch a plan holds (the DataLoader itself takes the plans as they come)
    num_workers : worker processes; 0 loads in the calling process
    prefetch : batches prepared ahead, at least one per worker
    io_threads : concurrent reads per worker process (or in the calling process with ``num_workers=0``)
    max_read_bytes : bytes a worker reads ahead for its next batches, at most (its current batch is read whole)
    worker_init_fn : called with the worker id in each worker process after fastload's own set-up (picklable)
    """

    def __init__(
        self,
        *,
        cache: Sequence,
        out_size: tuple[int, int] | None,
        augment: AugmentConfig,
        device: torch.device,
        batch_size: int,
        num_workers: int,
        prefetch: int,
        io_threads: int = DEFAULT_IO_THREADS,
        max_read_bytes: int = DEFAULT_MAX_BYTES,
        worker_init_fn: Callable[[int], None] | None = None,
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 (in-process) or a positive integer, got {num_workers!r}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be a positive integer, got {prefetch!r}")
        if out_size is None:
            check_native(augment, loader="OpencvBackend")
            out_hw = None
        else:
            out_hw = (int(out_size[0]), int(out_size[1]))
            map_hw(out_hw, augment.map_stride)  # ConfigError unless divisible
        self.augment = augment
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self._feed = WorkSampler(self.num_workers, depth=plans_for(io_threads, self.batch_size))
        self._passes = Passes("OpencvBackend")
        workers = self.num_workers > 0
        self._dataset = AugmentedBatches(
            cache,
            augment,
            out_hw,
            finish=self.device.type == "cpu",
            io_threads=io_threads,
            max_read_bytes=max_read_bytes,
        )
        context = None
        if workers:
            # a clean process forked from a server that never ran DALI, torch threads or OpenCV threads, with
            # fastload preloaded (fastload.pipeline.workers: the one start method of every fastload worker)
            context = mp_context()
        self._loader: DataLoader | None = DataLoader(
            self._dataset,
            batch_sampler=self._feed,
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=functools.partial(_worker_init, user_init=worker_init_fn) if workers else None,
            multiprocessing_context=context,
            # DataLoader's prefetch is per worker: -(-a // b) = ceil, so `prefetch` batches are in flight in all
            prefetch_factor=max(1, -(-prefetch // self.num_workers)) if workers else None,
            persistent_workers=workers,
        )

    def iterate(self, batches: Iterator[BatchPlan]) -> Iterator[dict[str, torch.Tensor]]:
        """Yield one batch dict (keys `batch_keys(augment)`, on ``device``) per plan, in plan order."""
        if self._loader is None:
            raise RuntimeError("OpencvBackend.iterate() after close(); make a new backend")
        native = self._dataset.out_hw is None
        token, keys = self._passes.start(), batch_keys(self.augment, native=native)
        self._feed.source = iter(batches)
        # with persistent workers this resets the one iterator: batches of an abandoned pass still in flight
        # are drained and dropped
        it = iter(self._loader)
        # checked before every next(): a newer iterate() owns the (shared) iterator, and an abandoned
        # generator resumed later must not take its batches
        first = True
        while self._passes.current(token):
            try:
                raw = next(it, None)
            except RuntimeError as exc:
                if first and "exited unexpectedly" in str(exc):
                    add_note(exc, MAIN_GUARD_HINT)
                raise
            except (EOFError, ConnectionError) as exc:
                # a worker killed while it handed over a batch: torch's own check has not noticed yet, and the
                # tensors' file descriptors cannot be fetched from the dead process
                raise RuntimeError(
                    f"DataLoader worker exited unexpectedly while handing over a batch ({type(exc).__name__}): a "
                    "CpuLoader worker process died (killed from outside, e.g. by the out-of-memory killer); "
                    "close() the loader, and use fewer workers (num_threads) or a smaller batch if memory is short"
                ) from exc
            first = False
            if raw is None:
                return
            hws = raw.get("hw")  # native size: each sample's own (H, W)
            if self._dataset.finish:  # targets rendered by the workers: normalise and widen here
                raw.update(widen_batch(image=raw["image"], semantic=raw["semantic"], instance=raw["instance"], cfg=self.augment))
            else:  # compact uint8 batch: finish it on the device
                raw = finish_batch(
                    image=raw["image"],
                    semantic=raw["semantic"],
                    instance=raw["instance"],
                    index=raw["index"],
                    cfg=self.augment,
                    device=self.device,
                    max_id=int(raw["max_id"]),
                )
            if native:  # the padding: 0 in the normalised image, and `valid` (fastload.pipeline.native)
                raw["valid"] = valid_mask(hws.to(self.device), tuple(raw["image"].shape[-2:]))
                zero_padding(raw["image"], raw["valid"])
            yield {key: raw[key] for key in keys}
        # a newer iterate() (or close()) took the workers: this pass cannot go on without stealing its batches
        self._passes.check(token)

    def close(self) -> None:
        """Stop the worker processes and the reader threads. Idempotent."""
        loader, self._loader = self._loader, None
        self._passes.end_all()
        if loader is None:
            return
        # torch's DataLoader has no public call that stops persistent workers (they end when its iterator is
        # garbage-collected, whenever that is): its iterator's own _shutdown_workers, what that collection calls
        iterator = getattr(loader, "_iterator", None)  # the persistent workers' iterator, if started
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._feed.source = iter(())
        self._dataset.close()  # the in-process reader threads (num_workers=0)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing useful left to report
            pass
