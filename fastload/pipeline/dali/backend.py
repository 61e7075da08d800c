"""`DaliBackend`: the DALI engine's lifecycle — the feed workers, the pipeline, one pass per `iterate`."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from fastload import validation
from fastload.augment.config import AugmentConfig
from fastload.pipeline.batch import render_batch_targets, widen_mask
from fastload.pipeline.dali.failures import named_failure
from fastload.pipeline.dali.feed import FeedJob, InputFeed
from fastload.pipeline.dali.graph import build_pipeline, dali_modules, shutdown_pipeline
from fastload.pipeline.dali.nvcomp import nvcomp_available, nvcomp_missing
from fastload.pipeline.dali.spec import OUTPUTS, GraphSpec
from fastload.pipeline.native import valid_mask
from fastload.pipeline.nvtx import nvtx_range
from fastload.pipeline.plan import BatchPlan, Passes, batch_keys
from fastload.pipeline.prefetch import DEFAULT_IO_THREADS, DEFAULT_MAX_BYTES
from fastload.pipeline.workers import WorkerPool

DEVICES = ("cpu", "cuda")  # device types


class _Switch:
    """The callable DALI holds for the pipeline's lifetime; each pass plugs in its own feed."""

    def __init__(self) -> None:
        self.feed: InputFeed | None = None

    def __call__(self):
        if self.feed is None:
            raise StopIteration
        return self.feed()


class DaliBackend:
    """Runs batch plans through the DALI graph (on the GPU, or the same graph on the CPU); yields torch tensors.

    Parameters
    ----------
    cache : an opened cache (``fastload.open_cache``): ``read_members``, ``image_size``, ``span_bytes``; picklable
        (it travels to the feed workers)
    out_size : (H, W) of the outputs; divisible by the targets' stride; None: each sample at its own size, batches
        padded (`fastload.pipeline.native`; the config may not augment)
    augment : the AugmentConfig the plans' parameters come from (it decides which ops the graph holds, the
        normalisation and the targets)
    device : "cuda:N": decode and augment on that GPU, tensors on it; "cpu": DALI on the CPU, CPU tensors
    batch_size : the largest N of a plan
    num_threads : DALI CPU threads
    prefetch : batches DALI prepares ahead of the one being consumed (``prefetch_queue_depth``)
    workers : feed worker processes (0: the feed runs in this process, for tests and tiny machines)
    io_threads : reads in flight at most, per feed worker (`fastload.pipeline.prefetch`)
    max_read_bytes : bytes read ahead and not yet used, at most, per feed worker (one batch may exceed it)

    `iterate` yields dicts with `batch_keys(augment)` (dtypes and shapes: docs/design.md, "Loader"); ``index`` comes
    from the plan. On "cuda" every tensor is on the GPU, ready on torch's current stream (no host sync).
    """

    def __init__(
        self,
        *,
        cache: Any,
        out_size: Sequence[int] | None,
        augment: AugmentConfig,
        device: torch.device | str,
        batch_size: int,
        num_threads: int,
        prefetch: int,
        workers: int = 1,
        io_threads: int = DEFAULT_IO_THREADS,
        max_read_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        asked = device
        try:
            device = torch.device(asked)
        except (RuntimeError, TypeError):
            device = None
        if device is None or device.type not in DEVICES or (device.type == "cuda" and device.index is None):
            raise ValueError(
                "device must be one of ['cpu', 'cuda:N'] (a CUDA device with its index; fastload.pipeline.devices."
                f"resolve_device resolves 'auto' and 'cuda'), got {validation.short_repr(asked)}"
            )
        for name, value, least in (
            ("batch_size", batch_size, 1),
            ("num_threads", num_threads, 1),
            ("prefetch", prefetch, 1),
            ("workers", workers, 0),
            ("io_threads", io_threads, 1),
            ("max_read_bytes", max_read_bytes, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        dali_modules()  # fail now, with the install hint, not at the first batch
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device={str(device)!r} but torch sees no CUDA device; pass device='cpu'")
            if not nvcomp_available():  # a warning, not an error: DALI may still find it where we do not look
                logging.getLogger("fastload").warning(nvcomp_missing("fastload cannot find it where DALI looks"))
        self.cache = cache
        self.augment = augment
        self.spec = GraphSpec.create(out_size=out_size, augment=augment, device="gpu" if device.type == "cuda" else "cpu")
        self.native = self.spec.out_size is None  # each sample at its own size (fastload.pipeline.native)
        self.device = device
        self.batch_size = int(batch_size)
        self.num_threads = int(num_threads)
        self.prefetch = int(prefetch)
        self.workers = int(workers)
        self.io_threads = int(io_threads)
        self.max_read_bytes = int(max_read_bytes)
        self._switch = _Switch()
        self._pool: WorkerPool | None = None
        self._pipe = None
        self._dirty = False  # a pass left batches in flight: drain (or rebuild) before the next one
        self._passes = Passes("DaliBackend")

    def iterate(self, batches: Iterator[BatchPlan]) -> Iterator[dict[str, torch.Tensor]]:
        """One batch dict per plan, in order. A later call supersedes an unfinished earlier iterator."""
        return self._pass(iter(batches), self._passes.start())

    def close(self) -> None:
        """Stop the feed workers and shut the pipeline down now. Iterating again starts new ones."""
        self._passes.end_all()
        self._stop_feed()
        self._discard_pipeline()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    @property
    def worker_pids(self) -> list[int]:
        """The feed workers' process ids (empty before the first pass, after close, or with workers=0)."""
        return self._pool.pids if self._pool is not None else []

    # --- one pass -----------------------------------------------------------------------------------------
    def _pass(self, plans: Iterator[BatchPlan], token: int) -> Iterator[dict[str, torch.Tensor]]:
        pool = self._ready_pool()
        pipe = self._ready_pipeline()
        feed = InputFeed(pool, plans, self.spec.inputs)
        self._switch.feed = feed
        self._dirty = True
        try:
            pipe.schedule_run()  # the first call queues `prefetch` plans
            while feed.pending:
                self._passes.check(token)
                plan, ticket, info = feed.pending.popleft()
                if ticket is None:
                    yield self._empty_batch()
                    continue
                batch = self._collect(pipe, plan, ticket, info)
                pipe.schedule_run()  # queues the next plan while the caller uses this batch
                yield batch
            if feed.failure is not None:
                raise feed.failure  # after every batch before the plan that failed
            pipe.reset()  # the plans ran out and every batch was consumed: reusable without draining
            self._switch.feed = None
            self._dirty = False
        except GeneratorExit:  # abandoned (break, a new pass): the next pass drains the pipeline and reuses it
            raise
        except BaseException:
            # a failed pass (a bad sample, DALI's own error): nothing of it may keep running, in this process or
            # in one forked later, and nothing of it stays open (an exception kept by the caller keeps this backend
            # alive); the next pass starts a fresh pipeline and fresh workers
            if self._passes.current(token):
                self.close()
            raise

    def _collect(self, pipe, plan: BatchPlan, ticket: int, info: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Wait for one batch, make torch tensors of it, hand DALI its buffers back, render the targets."""
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        try:
            with nvtx_range("fastload/dali_outputs"):
                # with a stream, DALI orders its outputs before work queued on it: no host synchronisation
                outputs = pipe.share_outputs(stream) if stream is not None else pipe.share_outputs()
        except RuntimeError as exc:
            failure = named_failure(info["names"], exc)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            self._pool.release(ticket)  # DALI has taken its inputs: the worker's slot may take a new batch
        with nvtx_range("fastload/h2d" if stream is not None else "fastload/to_torch"):
            image, semantic, instance = (
                self._to_torch(out, dtype, stream) for dtype, out in zip(OUTPUTS.values(), outputs, strict=True)
            )
            batch = {
                "image": image,
                "semantic": widen_mask(semantic[..., 0], torch.int64),
                "instance": widen_mask(instance[..., 0], torch.int32),
            }
        pipe.release_outputs()
        batch.update(render_batch_targets(batch["semantic"], batch["instance"], self.augment.targets, max_id=info["max_id"]))
        if self.native:  # the graph padded the image with 0 already
            batch["valid"] = valid_mask(self._to_device(info["hw"]), tuple(batch["semantic"].shape[1:]))
        batch["index"] = self._to_device(np.asarray(plan.indices, dtype=np.int64))
        return {key: batch[key] for key in batch_keys(self.augment, native=self.native)}

    # --- lifecycle ----------------------------------------------------------------------------------------
    def _ready_pool(self) -> WorkerPool:
        if self._pool is not None and self._pool.dead:  # a worker died in an earlier pass: start afresh
            self._pool.close()
            self._pool = None
        if self._pool is None:
            job = FeedJob(
                cache=self.cache,
                spec=self.spec,
                augment=self.augment,
                io_threads=self.io_threads,
                max_read_bytes=self.max_read_bytes,
            )
            # slots for the batches DALI holds (prefetch + the one consumed) and two in the making per worker
            slots = math.ceil((self.prefetch + 1) / max(1, self.workers)) + 2
            self._pool = WorkerPool(job, workers=self.workers, slots=slots, name="fastload-feed")
        return self._pool

    def _ready_pipeline(self):
        """The pipeline, ready for a pass: built on first use; after an abandoned pass drained or rebuilt."""
        if self._pipe is not None and self._dirty:
            try:
                self._drain()
            except Exception:  # noqa: BLE001 - a pipeline that cannot drain is replaced, never reused
                self._discard_pipeline()
        if self._pipe is None:
            self._pipe = build_pipeline(
                self.spec,
                self._switch,
                device_id=self.device.index,
                batch_size=self.batch_size,
                num_threads=self.num_threads,
                prefetch=self.prefetch,
            )
        self._dirty = False
        return self._pipe

    def _drain(self) -> None:
        """Consume what an abandoned pass left queued, then end DALI's epoch so the next pass prefetches anew."""
        self._stop_feed()
        pipe = self._pipe
        while not pipe.empty():
            pipe.share_outputs()
            pipe.release_outputs()
        pipe.schedule_run()  # the switch has no feed: StopIteration, DALI marks the end of the epoch
        pipe.reset()

    def _stop_feed(self) -> None:
        """Drop the current pass's feed: tasks not yet handed to DALI are cancelled, every slot released."""
        feed, self._switch.feed = self._switch.feed, None
        if feed is not None and self._pool is not None:
            feed.cancel()

    def _discard_pipeline(self) -> None:
        pipe, self._pipe = self._pipe, None
        self._dirty = False
        if pipe is not None:
            shutdown_pipeline(pipe)

    # --- outputs ------------------------------------------------------------------------------------------
    def _to_torch(self, output, dtype: torch.dtype, stream) -> torch.Tensor:
        dense = output.as_tensor()  # (N, ...) view of the batch
        if stream is None:
            # default executor: an output buffer is never recycled once handed out, so the view stays valid
            tensor = torch.from_numpy(np.asarray(dense))
            if tensor.dtype != dtype:
                raise TypeError(f"DALI produced {tensor.dtype} where the graph's outputs say {dtype}")
            return tensor
        from nvidia.dali.plugin.pytorch import feed_ndarray

        tensor = torch.empty(tuple(dense.shape()), dtype=dtype, device=self.device)
        feed_ndarray(dense, tensor, cuda_stream=stream)  # asynchronous, on torch's current stream
        return tensor

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """A small host array (the batch's indices, sizes) as a tensor on the device, without a host sync."""
        tensor = torch.as_tensor(array)
        if self.device.type == "cpu":
            return tensor
        # from pinned memory the copy is asynchronous on the current stream (from pageable memory it would sync)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _empty_batch(self) -> dict[str, torch.Tensor]:
        """A batch with N = 0 (a short last step of a distributed epoch), made without running DALI."""
        h, w = self.spec.out_size or (0, 0)
        batch = {
            "image": torch.empty((0, 3, h, w), dtype=torch.float32, device=self.device),
            "semantic": torch.empty((0, h, w), dtype=torch.int64, device=self.device),
            "instance": torch.empty((0, h, w), dtype=torch.int32, device=self.device),
        }
        batch.update(render_batch_targets(batch["semantic"], batch["instance"], self.augment.targets, max_id=0))
        batch["valid"] = torch.empty((0, h, w), dtype=torch.bool, device=self.device)
        batch["index"] = torch.empty((0,), dtype=torch.int64, device=self.device)
        return {key: batch[key] for key in batch_keys(self.augment, native=self.native)}
