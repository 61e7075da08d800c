"""The DALI engine's feed: batch plans in, the graph's input columns out, all per-sample work in worker processes.

Two halves:

- `FeedJob` runs in the feed workers (`fastload.pipeline.workers.WorkerPool`): for one plan it reads the
  samples (`fastload.pipeline.prefetch.Prefetcher`: CRC-checked ``pread``s, many in flight, the worker's next
  plans read ahead), checks every member before any decoder or GPU sees it, draws the augmentation parameters
  from (seed, epoch, index), and assembles the dense columns of `fastload.pipeline.dali.spec`.
- `InputFeed` is DALI's input callback in the training process, one per pass: it keeps the pool's slots busy with
  the pass's next plans and hands DALI each non-empty plan's columns, in order. Per batch it sends one plan and
  receives one small message; it never touches a sample.

This module must not import DALI or torch's CUDA: the fork server preloads it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastload.advice import rebuild_shard
from fastload.augment.config import AugmentConfig
from fastload.cache.format import SampleMembers
from fastload.errors import CacheError
from fastload.pipeline.dali.inputs import (
    SampleError,
    cpu_label_columns,
    gpu_label_columns,
    padded_bytes,
    param_columns,
)
from fastload.pipeline.dali.spec import GraphSpec
from fastload.pipeline.plan import BatchPlan
from fastload.pipeline.prefetch import Prefetcher
from fastload.pipeline.workers import WorkerPool

_FIX = rebuild_shard()


@dataclass
class FeedJob:
    """One feed worker's work: a batch plan → the graph's input columns (`fastload.pipeline.workers.Job`).

    The info it returns with each batch: ``max_id`` (the largest instance count of the batch's samples, checked
    against what an instance mask can hold: the target renderer's ``max_id``), ``names`` (``shard:key`` of each
    sample, for error messages about the batch) and, at native size, ``hw`` (int32 (N, 2): each sample's size).
    """

    cache: Any
    spec: GraphSpec
    augment: AugmentConfig
    io_threads: int
    max_read_bytes: int
    _reads: Prefetcher | None = field(default=None, init=False, repr=False)

    def open(self) -> None:
        self._reads = Prefetcher.of_cache(self.cache, io_threads=self.io_threads, max_bytes=self.max_read_bytes)

    def close(self) -> None:
        if self._reads is not None:
            self._reads.close()
            self._reads = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reads"] = None  # threads are per process
        return state

    def run(self, plan: BatchPlan, ahead: Sequence[BatchPlan]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        indices = [int(i) for i in plan.indices]
        self._reads.focus(indices, [int(i) for p in ahead for i in p.indices])
        # the cache's read checked every member (fastload.cache.validate; its CacheError names shard and sample)
        samples = [self._reads.take(i) for i in indices]
        hws = np.array([self.cache.image_size(i) for i in indices], np.int32).reshape(len(indices), 2)
        image, image_len = padded_bytes([m.image for m in samples])
        columns = {"image": image, "image_len": image_len}
        semantic, instance = [m.semantic for m in samples], [m.instance for m in samples]
        layouts, counts = [m.layouts for m in samples], [m.instance_count for m in samples]
        if self.spec.device == "gpu":
            columns.update(gpu_label_columns(semantic, instance, layouts))
        else:
            try:
                columns.update(cpu_label_columns(semantic, instance, layouts, counts))
            except SampleError as exc:
                k = exc.position
                raise CacheError(f"{_name(samples[k], indices[k])}: {exc}; {_FIX}") from None
        info = {"max_id": max(counts, default=0), "names": [_name(m, i) for m, i in zip(samples, indices, strict=True)]}
        if self.spec.out_size is None:  # native size: no parameters, the sizes to cut the masks to
            columns["image_hw"] = info["hw"] = hws
        else:
            columns.update(param_columns(plan.sample_params(self.augment), hws, self.spec))
        return {name: columns[name] for name in self.spec.inputs}, info

def _name(members: SampleMembers, index: int) -> str:
    where = f" (cache index {index})" if index >= 0 else ""
    return f"{members.shard}:{members.key}{where}"


class InputFeed:
    """DALI's input callback for one pass: the pass's plans through the worker pool, columns to DALI in order.

    Each call returns the next non-empty plan's columns; every plan is appended to `pending` as
    ``(plan, ticket, info)`` in plan order — ``ticket`` None for an empty plan (N = 0), which never reaches DALI
    (the consumer yields it itself, in its place). The consumer releases each ticket once DALI's outputs of that
    batch are in its hands. An error (a CacheError from a worker, or one from the plans themselves) ends DALI's
    epoch and is kept in `failure`: the consumer raises it, as is, after the batches before it.
    """

    def __init__(self, pool: WorkerPool, plans: Iterator[BatchPlan], inputs: Sequence[str]) -> None:
        self.pool = pool
        self.pending: deque[tuple[BatchPlan, int | None, Any]] = deque()
        self.failure: BaseException | None = None
        self._inputs = tuple(inputs)
        self._plans = plans
        self._submitted: deque[tuple[BatchPlan | None, int | None, BaseException | None]] = deque()
        self._ended = False

    def __call__(self):
        while True:
            self._fill()
            if self._ended or not self._submitted:
                self._ended = True
                raise StopIteration
            plan, ticket, error = self._submitted.popleft()
            if error is not None:
                self._fail(error)
            if ticket is None:
                self.pending.append((plan, None, None))
                continue
            try:
                result = self.pool.take()
            except BaseException as exc:  # noqa: BLE001 - a worker's error: raised by the consumer, in order
                self.pool.release(ticket)
                self._fail(exc)
            self.pending.append((plan, ticket, result.info))
            return tuple(result.arrays[name] for name in self._inputs)

    def _fill(self) -> None:
        """Submit the next plans while the pool has free slots (the next batches are made while DALI works)."""
        while not self._ended and self.pool.outstanding < self.pool.capacity:
            if self._submitted and self._submitted[-1][2] is not None:
                return  # the plans failed: nothing after the failure is submitted
            try:
                plan = next(self._plans)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - raised in order, when the consumer reaches it
                self._submitted.append((None, None, exc))
                return
            ticket = self.pool.submit(plan) if len(plan) else None
            self._submitted.append((plan, ticket, None))

    def _fail(self, exc: BaseException):
        self.failure = exc
        self._ended = True
        raise StopIteration

    def cancel(self) -> None:
        """Drop what was submitted and not handed to DALI: the workers skip it (an abandoned or failed pass)."""
        self._ended = True
        self._submitted.clear()
        self.pool.cancel()
