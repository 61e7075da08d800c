"""The CPU engine's batch sampler: each plan of a pass handed to torch's DataLoader as a `Work` item, with the
cache indices of the plans the same worker will get next, so that it reads them ahead.

DataLoader hands batches to its workers in turn (batch k of a pass to worker k mod W, in order), so the plans
W, 2W, ... places later go to the same worker: those are the ones it reads ahead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fastload.pipeline.plan import BatchPlan


@dataclass(frozen=True)
class Work:
    """What the batch sampler hands a worker: a plan, and what to read ahead for its next ones."""

    plan: BatchPlan
    ahead: np.ndarray  # int64: the cache indices of this worker's next plans, in the order it will need them


class WorkSampler:
    """Batch sampler: yields each plan of the current source as a `Work` item, with what to read ahead.

    DataLoader hands batches to its workers in turn (batch k of a pass to worker k mod W, in order), so the
    plans W, 2W, ... places later go to the same worker: those are the ones it reads ahead, ``depth`` of them
    (`fastload.pipeline.prefetch.plans_for`: enough to keep ``io_threads`` reads busy). With W = 0 every batch
    is made in the calling process and the next ``depth`` plans are read ahead. A wrong guess only costs reads
    that are dropped.
    """

    def __init__(self, workers: int, depth: int = 1) -> None:
        self.source: Iterator[BatchPlan] = iter(())
        self.workers = workers
        self.depth = depth

    def __iter__(self) -> Iterator[Work]:
        return self._work(self.source, max(1, self.workers), self.depth)  # bound now: iterate() swaps the source

    @staticmethod
    def _work(source: Iterator[BatchPlan], stride: int, depth: int) -> Iterator[Work]:
        window: deque[BatchPlan] = deque()
        span = stride * depth  # the window holds the plan handed out now and the next `span`
        for plan in source:
            window.append(plan)
            if len(window) > span:
                yield _to_work(window.popleft(), _ahead(window, stride, depth))
        while window:
            yield _to_work(window.popleft(), _ahead(window, stride, depth))


def _ahead(window: deque[BatchPlan], stride: int, depth: int) -> list[BatchPlan]:
    """The plans ``stride``, ``2·stride``, ... ``depth·stride`` places after the one just taken from ``window``."""
    return [window[k * stride - 1] for k in range(1, depth + 1) if k * stride - 1 < len(window)]


def _to_work(plan: BatchPlan, ahead: list[BatchPlan]) -> Work:
    return Work(plan, np.concatenate([p.indices for p in ahead]) if ahead else np.zeros(0, np.int64))
