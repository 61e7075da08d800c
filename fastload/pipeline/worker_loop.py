"""The worker's side of `fastload.pipeline.workers.WorkerPool`: the loop a worker process runs (`serve`) and the
shared-memory slots it writes its batches into (`SlotWriter`). The pool's module has the protocol."""

from __future__ import annotations

import mmap
import os
import signal
import traceback
from collections import deque
from multiprocessing import reduction
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fastload.pipeline.workers import Job

ALIGN = 64  # arrays in a slot start on cache-line boundaries


def unmap(mapping: mmap.mmap) -> None:
    """Close a slot's mapping (both sides use it)."""
    try:
        mapping.close()
    except BufferError:  # a view is still alive somewhere: the mapping goes when the last view does
        pass


class SlotWriter:
    """A worker's slots: anonymous shared memory it writes batches into and maps in the training process too."""

    def __init__(self, conn, parent: int) -> None:
        self.conn, self.parent = conn, parent
        self.maps: dict[int, mmap.mmap] = {}

    def write(self, slot: int, arrays: dict[str, np.ndarray]) -> list[tuple[str, str, tuple[int, ...], int]]:
        layout, offset = [], 0
        for name, array in arrays.items():
            layout.append((name, array.dtype.str, tuple(array.shape), offset))
            offset += -(-array.nbytes // ALIGN) * ALIGN
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
            unmap(old)
        self.maps[slot] = mapping
        return mapping


def serve(conn, job: Job, parent: int) -> None:
    """A worker's life: open the job, answer tasks in order until told to stop or the parent goes away."""
    from fastload.procs import die_with_parent

    die_with_parent()  # with the fork server, which ends with the training process (forkserver_guard)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle; it closes us
    slots = SlotWriter(conn, parent)
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
