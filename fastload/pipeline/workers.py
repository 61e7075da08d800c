"""Worker processes that turn tasks into batches of arrays, handed over through reusable shared memory.

The DALI engine's feed runs here: every per-sample step that is Python (reading and CRC-checking the sample,
validating its members, drawing its augmentation parameters, assembling the graph's input columns) leaves the
training process, whose share of a batch is one small message in, one small message out, and NumPy views of
memory that is already mapped. A `WorkerPool` owns ``workers`` persistent processes, each with ``slots``
shared-memory slots it writes its batches into:

- tasks go round-robin: ticket ``t`` to worker ``t % workers``, into that worker's slot ``(t // workers) % slots``;
  a worker answers its tasks in order, so the pool hands results back in ticket order;
- a slot is an anonymous ``memfd`` the worker creates (and grows when a batch needs more room) and passes to the
  training process once over the worker's socket (``SCM_RIGHTS``); both keep it mapped, so a batch costs no
  page fault and no copy but the one that writes it. Nothing has a name in the file system: a killed process
  leaves nothing behind;
- ``submit`` / ``take`` / ``release``: a slot is reused only after its previous batch was released, so the caller
  keeps at most ``workers * slots`` tickets between submit and release;
- ``cancel()``: the tasks submitted and not taken are dropped (a "cancel" message reaches each worker before the
  tasks it has not started, which it then skips) and drained, so a pass abandoned half-way costs at most the
  batches already being made;
- an error raised by a task is raised by ``take`` at its ticket, in order; a worker that dies is named;
- ``close()`` stops the workers (and kills those that do not stop), unmaps the slots; workers also end when
  their parent dies (`fastload.procs.die_with_parent`: the fork server, which ends with the training process) or
their socket closes.

Workers start with ``forkserver`` (a clean process that inherits nothing of the training process's threads,
DALI's included); a script that uses them needs the ``if __name__ == "__main__":`` guard, as with any
spawn/forkserver start. ``workers=0`` runs the job in the calling process, at ``take``, for tests and small
machines: the same job, the same results.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import signal
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import reduction
from typing import Any, Protocol

import numpy as np

from fastload.errors import FastloadError, add_note

START_METHOD = "forkserver"
# imported once by the fork server, so that each worker starts without importing torch and NumPy again
PRELOAD = [
    "fastload.pipeline.forkserver_guard",  # first: the fork server ends with the process that started it
    "fastload.pipeline.workers",
    "fastload.pipeline.opencv",
    "fastload.pipeline.dali.feed",
]
_ALIGN = 64  # arrays in a slot start on cache-line boundaries
_POLL_S = 0.1  # how often a waiting take() checks that the worker is still alive


class Job(Protocol):
    """What a worker runs. Pickled into each worker; ``open`` is called there once, before any task."""

    def open(self) -> None: ...

    def run(self, task: Any, ahead: Sequence[Any]) -> tuple[dict[str, np.ndarray], Any]:
        """One task's arrays and a small picklable ``info``; may raise (the error reaches `take`). ``ahead``: the
        tasks this worker does next, in order (a hint: start reading them)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Result:
    """One task's result: ``arrays`` are views of the worker's slot, valid until `WorkerPool.release`."""

    ticket: int
    arrays: dict[str, np.ndarray]
    info: Any


class WorkerDied(RuntimeError):
    """A worker process ended while the pool needed it."""


def mp_context():
    """The start method every fastload worker uses, with the fork server's preloaded modules set."""
    context = mp.get_context(START_METHOD)
    context.set_forkserver_preload(PRELOAD)
    return context


class WorkerPool:
    """Persistent worker processes running ``job`` on tasks, results in submission order (module docstring).

    Parameters
    ----------
    job : a `Job`, pickled into every worker
    workers : processes (0: run the job in this process, at `take`)
    slots : shared-memory slots per worker: batches a worker may have made and not yet had released
    name : process name prefix, for ``ps`` and error messages
    """

    def __init__(self, job: Job, *, workers: int, slots: int, name: str = "fastload-feed") -> None:
        if workers < 0 or slots < 1:
            raise ValueError(f"workers must be >= 0 and slots >= 1, got workers={workers}, slots={slots}")
        self.job, self.workers, self.slots, self.name = job, int(workers), int(slots), name
        self._next = 0  # the next ticket to submit
        self._taken = 0  # the next ticket to take
        self._released: set[int] = set()
        self._oldest = 0  # every ticket below it was released
        self._queued: deque[tuple[int, Any]] = deque()  # workers=0: tasks waiting for take()
        self._procs: list = []
        self._conns: list = []
        self._maps: list[dict[int, mmap.mmap]] = []
        self._closed = False
        if self.workers:
            self._start()
        else:
            self.job.open()

    # --- lifecycle ------------------------------------------------------------------------------------------
    def _start(self) -> None:
        context = mp_context()
        for w in range(self.workers):
            here, there = context.Pipe(duplex=True)
            proc = context.Process(target=_serve, args=(there, self.job, os.getpid()), name=f"{self.name}-{w}", daemon=True)
            proc.start()
            there.close()
            self._procs.append(proc)
            self._conns.append(here)
            self._maps.append({})

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    @property
    def outstanding(self) -> int:
        """Tickets submitted and not yet released."""
        return self._next - self._oldest

    @property
    def capacity(self) -> int:
        """Tickets that may be outstanding at once (one per slot; 2 when the job runs in this process)."""
        return self.workers * self.slots if self.workers else max(2, self.slots)

    def close(self) -> None:
        """Stop the workers now (those that do not stop within a few seconds are killed); idempotent."""
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            try:  # a worker between tasks skips whatever is still queued, then stops
                conn.send(("cancel", self._next))
                conn.send(("stop",))
            except OSError:  # already gone
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        for maps in self._maps:
            for mapping in maps.values():
                _unmap(mapping)
        self._procs, self._conns, self._maps, self._queued = [], [], [], deque()
        if not self.workers:
            self.job.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing useful left to report
            pass

    # --- tasks ----------------------------------------------------------------------------------------------
    def submit(self, task: Any) -> int:
        """Queue ``task``; returns its ticket. At most `capacity` tickets may be outstanding."""
        if self._closed:
            raise RuntimeError(f"{self.name}: submit() after close()")
        if self.outstanding >= self.capacity:
            raise RuntimeError(f"{self.name}: {self.outstanding} tickets outstanding, at most {self.capacity}")
        ticket, self._next = self._next, self._next + 1
        if not self.workers:
            self._queued.append((ticket, task))
            return ticket
        worker, slot = ticket % self.workers, (ticket // self.workers) % self.slots
        self._conns[worker].send(("task", ticket, slot, task))
        return ticket

    def take(self) -> Result:
        """The result of the oldest ticket not yet taken; raises its task's error, or `WorkerDied`."""
        if self._taken >= self._next:
            raise RuntimeError(f"{self.name}: take() without a submitted task")
        ticket, self._taken = self._taken, self._taken + 1
        if not self.workers:
            _, task = self._queued.popleft()
            arrays, info = self.job.run(task, [t for _, t in self._queued])
            return Result(ticket, arrays, info)
        worker = ticket % self.workers
        while True:
            message = self._receive(worker)
            kind = message[0]
            if kind == "slot":  # a new or larger slot: its memfd follows on the socket
                self._map_slot(worker, message[1], message[2])
                continue
            if message[1] != ticket:
                raise RuntimeError(f"{self.name}-{worker}: answered ticket {message[1]}, expected {ticket}")
            if kind == "done":
                _, _, slot, layout, info = message
                return Result(ticket, _views(self._maps[worker][slot], layout), info)
            if kind == "skipped":
                return Result(ticket, {}, None)
            raise _raised(message[2], message[3])

    def release(self, ticket: int) -> None:
        """The batch of ``ticket`` is no longer read: its slot may take a new batch."""
        self._released.add(int(ticket))
        while self._oldest in self._released:
            self._released.discard(self._oldest)
            self._oldest += 1

    def cancel(self) -> None:
        """Drop every task submitted and not yet taken (workers skip the ones they have not started)."""
        for conn in self._conns:
            conn.send(("cancel", self._next))
        self._queued.clear()
        while self._taken < self._next:
            ticket = self._taken
            try:
                self.take()
            except WorkerDied:
                raise
            except BaseException:  # noqa: BLE001 - a cancelled task's error concerns nobody
                self._taken = ticket + 1
            self.release(ticket)
        for ticket in range(self._oldest, self._next):  # taken by the caller and never released
            self.release(ticket)

    # --- the wire -------------------------------------------------------------------------------------------
    def _receive(self, worker: int):
        conn, proc = self._conns[worker], self._procs[worker]
        while not conn.poll(_POLL_S):
            if not proc.is_alive():
                break
        try:
            return conn.recv()
        except (EOFError, OSError, ConnectionError):
            proc.join(timeout=1)
            raise WorkerDied(
                f"{self.name}-{worker} (pid {proc.pid}) exited unexpectedly (exit code {proc.exitcode}): a fastload "
                "worker process died, e.g. killed by the out-of-memory killer; close() the loader and use fewer "
                "workers or a smaller batch if memory is short"
            ) from None

    def _map_slot(self, worker: int, slot: int, size: int) -> None:
        fd = reduction.recv_handle(self._conns[worker])
        try:
            old = self._maps[worker].pop(slot, None)
            if old is not None:
                _unmap(old)
            self._maps[worker][slot] = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)


def _views(mapping: mmap.mmap, layout: list[tuple[str, str, tuple[int, ...], int]]) -> dict[str, np.ndarray]:
    return {name: np.ndarray(shape, np.dtype(dtype), buffer=mapping, offset=offset) for name, dtype, shape, offset in layout}


def _unmap(mapping: mmap.mmap) -> None:
    try:
        mapping.close()
    except BufferError:  # a view is still alive somewhere: the mapping goes when the last view does
        pass


def _raised(exc: BaseException | None, text: str) -> BaseException:
    """A worker's error as the training process raises it: fastload's own as they are (their message names the
    sample and the fix), any other with the worker's traceback as a note, or as text if it could not travel."""
    if exc is None:
        return RuntimeError(text)
    if not isinstance(exc, FastloadError):
        add_note(exc, text)
    return exc


# ----------------------------------------------------------------------------------------- the worker side


class _Slots:
    """A worker's slots: anonymous shared memory it writes batches into and maps in the training process too."""

    def __init__(self, conn, parent: int) -> None:
        self.conn, self.parent = conn, parent
        self.maps: dict[int, mmap.mmap] = {}

    def write(self, slot: int, arrays: dict[str, np.ndarray]) -> list[tuple[str, str, tuple[int, ...], int]]:
        layout, offset = [], 0
        for name, array in arrays.items():
            layout.append((name, array.dtype.str, tuple(array.shape), offset))
            offset += -(-array.nbytes // _ALIGN) * _ALIGN
        mapping = self.maps.get(slot)
        if mapping is None or len(mapping) < offset:
            mapping = self._grow(slot, max(offset + offset // 4, mmap.PAGESIZE))
        for (_, _, shape, start), array in zip(layout, arrays.values(), strict=True):
            np.ndarray(shape, array.dtype, buffer=mapping, offset=start)[...] = array
        return layout

    def _grow(self, slot: int, size: int) -> mmap.mmap:
        size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        fd = os.memfd_create(f"fastload-slot-{slot}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size)
            self.conn.send(("slot", slot, size))
            reduction.send_handle(self.conn, fd, self.parent)
        finally:
            os.close(fd)
        old = self.maps.pop(slot, None)
        if old is not None:
            _unmap(old)
        self.maps[slot] = mapping
        return mapping


def _serve(conn, job: Job, parent: int) -> None:
    """A worker's life: open the job, answer tasks in order until told to stop or the parent goes away."""
    from fastload.procs import die_with_parent

    die_with_parent()  # with the fork server, which ends with the training process (forkserver_guard)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle; it closes us
    slots = _Slots(conn, parent)
    pending: deque = deque()
    cancelled = 0  # tasks with a smaller ticket are skipped
    job.open()
    try:
        while True:
            if not pending:
                pending.append(conn.recv())
            while conn.poll():  # everything sent so far: a cancel overtakes the tasks queued before it
                pending.append(conn.recv())
            cancelled = max([cancelled] + [m[1] for m in pending if m[0] == "cancel"])
            pending = deque(m for m in pending if m[0] != "cancel")
            if not pending:
                continue
            message = pending.popleft()
            if message[0] == "stop":
                return
            _, ticket, slot, task = message
            if ticket < cancelled:
                conn.send(("skipped", ticket))
                continue
            try:
                arrays, info = job.run(task, [m[3] for m in pending if m[0] == "task"])
                layout = slots.write(slot, arrays)
            except BaseException as exc:  # noqa: BLE001 - handed to the training process, raised at its ticket
                _send_error(conn, ticket, exc)
                continue
            conn.send(("done", ticket, slot, layout, info))
    except (EOFError, OSError, KeyboardInterrupt):  # the training process went away: nothing to answer
        return
    finally:
        job.close()


def _send_error(conn, ticket: int, exc: BaseException) -> None:
    text = _described(exc)
    try:  # the message is serialised before anything is written: a failure leaves the socket clean
        conn.send(("error", ticket, exc, text))
    except Exception:  # noqa: BLE001 - an exception that cannot travel: its text does
        conn.send(("error", ticket, None, text))


def _described(exc: BaseException) -> str:
    return f"in a fastload worker process (pid {os.getpid()}):\n" + "".join(traceback.format_exception(exc)).rstrip()
