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
- an error raised by a task is raised by ``take`` at its ticket, in order; a worker that dies is named
  (`WorkerDied`, with what its exit code says, and `MAIN_GUARD_HINT` when it died before its first answer); the
  pool is then `dead`: ``submit`` and ``take`` raise again, ``cancel`` and ``close`` still clean up;
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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import reduction
from typing import Any, Protocol

import numpy as np

from fastload.errors import FastloadError, add_note
from fastload.pipeline.worker_loop import serve, unmap

START_METHOD = "forkserver"
# imported once by the fork server, so that each worker starts without importing torch and NumPy again
PRELOAD = [
    "fastload.pipeline.forkserver_guard",  # first: the fork server ends with the process that started it
    "fastload.pipeline.workers",
    "fastload.pipeline.worker_loop",
    "fastload.pipeline.opencv",
    "fastload.pipeline.dali.feed",
]
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


MAIN_GUARD_HINT = (
    "fastload: its worker processes (CpuLoader's workers, Loader's feed workers) start with forkserver (a clean "
    "process, never a copy of this one), and such a worker imports your script's main module first: a script that "
    "makes and iterates the loader at its top level, without `if __name__ == \"__main__\":`, runs again in every "
    "worker, which then dies. Put the training code under that guard (Python's rule for spawn and forkserver; "
    "forkserver is Python 3.14's default)."
)


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
        self._heard: list[bool] = []  # per worker: has it ever answered (a worker that has not died starting)
        self._dead: WorkerDied | None = None  # a worker died: the pool cannot serve again
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
            proc = context.Process(target=serve, args=(there, self.job, os.getpid()), name=f"{self.name}-{w}", daemon=True)
            proc.start()
            there.close()
            self._procs.append(proc)
            self._conns.append(here)
            self._maps.append({})
            self._heard.append(False)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    @property
    def dead(self) -> bool:
        """A worker died: every later `submit` / `take` raises; close the pool and start a new one."""
        return self._dead is not None

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
                unmap(mapping)
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
        if self._dead is not None:
            raise self._dead
        if self.outstanding >= self.capacity:
            raise RuntimeError(f"{self.name}: {self.outstanding} tickets outstanding, at most {self.capacity}")
        ticket, self._next = self._next, self._next + 1
        if not self.workers:
            self._queued.append((ticket, task))
            return ticket
        worker, slot = ticket % self.workers, (ticket // self.workers) % self.slots
        try:
            self._conns[worker].send(("task", ticket, slot, task))
        except OSError:  # the worker's end of the socket is gone: it died
            raise self._died(worker) from None
        return ticket

    def take(self) -> Result:
        """The result of the oldest ticket not yet taken; raises its task's error, or `WorkerDied`."""
        if self._taken >= self._next:
            raise RuntimeError(f"{self.name}: take() without a submitted task")
        if self._dead is not None:
            raise self._dead
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
        """Drop every task submitted and not yet taken (workers skip the ones they have not started). Never raises
        for a dead worker: the pool is then `dead`, and the error was (or will be) raised by `take`."""
        for conn in self._conns:
            try:
                conn.send(("cancel", self._next))
            except OSError:  # a dead worker's socket: `take` below names it
                pass
        self._queued.clear()
        while self._taken < self._next and self._dead is None:
            ticket = self._taken
            try:
                self.take()
            except WorkerDied:
                break
            except BaseException:  # noqa: BLE001 - a cancelled task's error concerns nobody
                self._taken = ticket + 1
            self.release(ticket)
        self._taken = self._next
        for ticket in range(self._oldest, self._next):  # taken by the caller and never released
            self.release(ticket)

    # --- the wire -------------------------------------------------------------------------------------------
    def _receive(self, worker: int):
        conn, proc = self._conns[worker], self._procs[worker]
        while not conn.poll(_POLL_S):
            if not proc.is_alive():
                break
        try:
            message = conn.recv()
        except (EOFError, OSError, ConnectionError):
            raise self._died(worker) from None
        self._heard[worker] = True
        return message

    def _died(self, worker: int) -> WorkerDied:
        """The pool is dead: the error for the worker that ended (what its exit code says, and what to do), kept
        for every later `submit` / `take`."""
        proc = self._procs[worker]
        proc.join(timeout=1)
        code = proc.exitcode
        where = f"{self.name}-{worker} (pid {proc.pid})"
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
            error = WorkerDied(
                f"{where} {how}: a fastload worker process was killed from outside, e.g. by the out-of-memory "
                "killer (SIGKILL); close() the loader and use fewer workers or a smaller batch if memory is short"
            )
        else:
            error = WorkerDied(
                f"{where} exited unexpectedly (exit code {code}): a fastload worker process ended with an error of "
                "its own (its traceback is above, on stderr) or was stopped from outside; close() the loader"
            )
        if not self._heard[worker] and code is not None and code > 0:  # died starting: the classic cause
            add_note(error, MAIN_GUARD_HINT)
        self._dead = error
        return error

    def _map_slot(self, worker: int, slot: int, size: int) -> None:
        fd = reduction.recv_handle(self._conns[worker])
        try:
            old = self._maps[worker].pop(slot, None)
            if old is not None:
                unmap(old)
            self._maps[worker][slot] = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)


def _views(mapping: mmap.mmap, layout: list[tuple[str, str, tuple[int, ...], int]]) -> dict[str, np.ndarray]:
    return {name: np.ndarray(shape, np.dtype(dtype), buffer=mapping, offset=offset) for name, dtype, shape, offset in layout}


def _raised(exc: BaseException | None, text: str) -> BaseException:
    """A worker's error as the training process raises it: fastload's own as they are (their message names the
    sample and the fix), any other with the worker's traceback as a note, or as text if it could not travel."""
    if exc is None:
        return RuntimeError(text)
    if not isinstance(exc, FastloadError):
        add_note(exc, text)
    return exc
