"""Read ahead: many reads in flight, so storage latency (a NAS: 1-10 ms per read) never sets the pace.

`ReadAhead` runs a per-sample function (read the sample's bytes with one ``pread``, check its CRCs, decode what
the host must decode) on a pool of threads for the samples of the next batch plans, and hands the plans back
in order with their samples in order. ``pread`` and the LZ4 decoder release the GIL, so the reads overlap each
other and the consumer's work. Bounds:

- reads in flight: at most ``io_threads`` at a time (the pool's size);
- bytes held: samples submitted but not yet handed to the consumer hold their bytes (from the cache index,
  known before the read); no new sample is submitted while ``max_bytes`` are held, except that the plan the
  consumer waits for is always completed (a batch larger than ``max_bytes`` may exceed the bound on its own);
- bytes in flight: the reads submitted and not finished hold at most ``max_bytes``, even for such a batch (its
  samples are then submitted as earlier ones finish), unless one sample alone is larger;
- plans ahead: at most ``max_plans``; `plans_for` says how many plans keep ``io_threads`` reads busy.

Order and errors: plans come out in order, each sample at its position; a sample whose function raised makes
its plan raise that error — the first failing sample of the plan in plan order — after every earlier plan was
handed out. An error of the plan iterator itself is raised at its place in the order too. `close` cancels what
has not started, waits for the reads in progress, and leaves no thread behind; the last plan handed out closes
the read-ahead by itself.

Little's law gives the default depth: reads in flight = samples/s × latency, so 16 reads hide 2 ms per read at
8,000 samples/s (a GPU loader's rate), 5 ms at 3,200 samples/s or 20 ms at 800 samples/s. Threads that wait on
a read cost ~nothing (a sleeping thread and its stack), so the default errs on the deep side.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fastload.pipeline.plan import BatchPlan

T = TypeVar("T")

DEFAULT_IO_THREADS = 16
DEFAULT_MAX_BYTES = 64 << 20  # 64 MiB: ~250 samples of 800x600 photos, several batches of 48


def plans_for(io_threads: int, batch_size: int) -> int:
    """The plans (batches) whose samples keep ``io_threads`` reads in flight: ceil(io_threads / batch_size), >= 1.

    A read-ahead that holds fewer plans than this caps the reads in flight below ``io_threads`` (batch 8 with
    one plan ahead: at most 8 reads at once, whatever the pool's size).
    """
    return max(1, -(-int(io_threads) // max(1, int(batch_size))))


def wait_for_room(reads: Callable[[], Iterable[tuple[Future, int]]], size: int, max_bytes: int) -> None:
    """Block until a read of ``size`` bytes fits beside the unfinished ones of ``reads()`` (future, bytes) within
    ``max_bytes``, or none is left unfinished (a sample larger than the bound alone is then read on its own)."""
    while True:
        running = [(future, nbytes) for future, nbytes in reads() if not future.done()]
        if not running or sum(nbytes for _, nbytes in running) + size <= max_bytes:
            return
        wait([future for future, _ in running], return_when=FIRST_COMPLETED)


@dataclass
class _Slot:
    """One plan in the window: its futures (one per sample submitted so far) and the bytes they hold."""

    plan: BatchPlan | None
    futures: list[Future] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # bytes of each submitted sample, as futures
    held: int = 0
    error: BaseException | None = None  # the plan iterator failed here

    @property
    def complete(self) -> bool:
        return self.plan is None or len(self.futures) == len(self.plan.indices)


class ReadAhead(Generic[T]):
    """Iterate ``(plan, [prepare(index, params) for each sample])`` in plan order, prepared on a thread pool.

    Parameters
    ----------
    plans : the batch plans, consumed lazily (at most ``max_plans`` ahead of the consumer)
    prepare : ``prepare(index, params) -> T``, run on a pool thread per sample; may raise
    sample_bytes : ``sample_bytes(index) -> int``, the bytes a sample's read holds (from the cache index)
    io_threads : threads, i.e. reads in flight at most (>= 1)
    max_bytes : bytes held by submitted, not yet consumed samples (>= 1)
    max_plans : plans submitted ahead of the consumer, the one it waits for included (>= 1)
    """

    def __init__(
        self,
        plans: Iterator[BatchPlan],
        prepare: Callable[[int, Any], T],
        *,
        sample_bytes: Callable[[int], int],
        io_threads: int = DEFAULT_IO_THREADS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_plans: int = 4,
    ) -> None:
        for name, value in (("io_threads", io_threads), ("max_bytes", max_bytes), ("max_plans", max_plans)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._plans = plans
        self._prepare = prepare
        self._sample_bytes = sample_bytes
        self._max_bytes = max_bytes
        self._max_plans = max_plans
        self._pool = ThreadPoolExecutor(io_threads, thread_name_prefix="fastload-io")
        self._window: deque[_Slot] = deque()
        self._held = 0  # bytes held by every slot in the window
        self._exhausted = False
        self._closed = False

    @property
    def bytes_held(self) -> int:
        """Bytes of the samples submitted and not yet handed out (the bound's measure)."""
        return self._held

    def __iter__(self) -> Iterator[tuple[BatchPlan, list[T]]]:
        return self

    def __next__(self) -> tuple[BatchPlan, list[T]]:
        if self._closed:
            raise StopIteration
        self._fill()
        if not self._window:
            self.close()  # every plan handed out: the threads end now, not when the consumer gets to close()
            raise StopIteration
        head = self._window[0]
        if head.error is not None:
            self._window.popleft()
            raise head.error
        self._submit_rest(head)  # the plan the consumer waits for is completed whatever the byte bound
        try:
            # the first failing sample raises, in plan order, whichever read failed first
            results = [future.result() for future in head.futures]
        finally:
            self._window.popleft()
            self._held -= head.held
        self._fill()  # bytes were freed: queue more before the consumer goes off to work
        return head.plan, results

    def _fill(self) -> None:
        """Submit samples of the window's plans, then of new plans, while the bounds allow."""
        for slot in self._window:
            if not self._submit_within_bound(slot):
                return
        while not self._exhausted and len(self._window) < self._max_plans:
            try:
                plan = next(self._plans)
            except StopIteration:
                self._exhausted = True
                return
            except Exception as exc:  # noqa: BLE001 - raised in order, when the consumer reaches it
                self._exhausted = True
                self._window.append(_Slot(None, error=exc))
                return
            slot = _Slot(plan)
            self._window.append(slot)
            if not self._submit_within_bound(slot):
                return

    def _submit_within_bound(self, slot: _Slot) -> bool:
        """Submit the slot's next samples while bytes allow; True when the slot is complete."""
        while not slot.complete:
            index = int(slot.plan.indices[len(slot.futures)])
            size = self._sample_bytes(index)
            if self._held and self._held + size > self._max_bytes:
                return False
            self._submit(slot, index, size)
        return True

    def _submit_rest(self, slot: _Slot) -> None:
        """Complete the head plan whatever the bytes held, keeping the bytes of its reads in flight bounded."""
        while not slot.complete:
            index = int(slot.plan.indices[len(slot.futures)])
            size = self._sample_bytes(index)
            # only the head plan is in the window when it is incomplete (`_fill` stops at the first incomplete
            # slot), so its unfinished reads are all the reads in flight
            wait_for_room(lambda: zip(slot.futures, slot.sizes, strict=True), size, self._max_bytes)
            self._submit(slot, index, size)

    def _submit(self, slot: _Slot, index: int, size: int) -> None:
        params = slot.plan.params[len(slot.futures)]
        slot.futures.append(self._pool.submit(self._prepare, index, params))
        slot.sizes.append(size)
        slot.held += size
        self._held += size

    def close(self) -> None:
        """Cancel what has not started, wait for the reads in progress, stop the threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for slot in self._window:
            for future in slot.futures:
                future.cancel()
        self._window.clear()
        self._held = 0
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
