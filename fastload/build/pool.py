"""The build's worker processes: whole shards built in spawned processes, a dead worker named in the error.

One worker builds the shards in this process; more build them in a `ProcessPoolExecutor` of spawned processes,
each a whole shard at a time (so a shard's bytes never depend on the worker count), reporting each image to the
parent's progress bar through a queue.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import cv2

from fastload.advice import resume_build
from fastload.build.writer import ShardRecord, ShardTask, build_shard
from fastload.errors import CacheError
from fastload.procs import die_with_parent

_progress_queue: Any = None


def _init_worker(progress_queue: Any, parent: int) -> None:
    global _progress_queue
    die_with_parent(parent)  # a killed build leaves no worker behind
    _progress_queue = progress_queue
    cv2.setNumThreads(1)  # one shard per process; OpenCV's own threads would only compete


def _build_in_worker(task: ShardTask) -> ShardRecord:
    return build_shard(task, progress=_progress_queue.put)


def run_tasks(tasks: list[ShardTask], workers: int, bar: Any, *, out: Path) -> None:
    """Build every task's shard, in this process (one worker) or in ``workers`` spawned processes, counting images
    on ``bar`` (tqdm); ``out`` is the build's output folder, which an error's advice names."""
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            build_shard(task, progress=bar.update)
        return
    # spawn, not fork: the parent may hold threads (torch, DALI, OpenCV) that a forked child would inherit
    # in an undefined state. A process pool executor, not multiprocessing.Pool: when a worker is killed
    # (SIGKILL, the out-of-memory killer) a Pool loses its shard and waits forever, and may deadlock in
    # terminate() on a queue lock the dead worker held; the executor reports it (BrokenProcessPool).
    ctx = mp.get_context("spawn")
    progress_queue = ctx.Queue()
    before = set(mp.active_children())
    executor = ProcessPoolExecutor(
        min(workers, len(tasks)), mp_context=ctx, initializer=_init_worker, initargs=(progress_queue, os.getpid())
    )
    failed = True
    try:
        pending = {executor.submit(_build_in_worker, task): task.shard for task in tasks}
        started = [p for p in mp.active_children() if p not in before]  # the executor's workers
        while pending:
            _drain(progress_queue, bar, timeout=0.1)
            for future in [f for f in pending if f.done()]:
                shard = pending.pop(future)
                try:
                    future.result()  # re-raises the worker's ImageError / AnnotationError
                except BrokenProcessPool:
                    raise _worker_died(started, [shard, *pending.values()], out) from None
        _drain(progress_queue, bar, timeout=0)
        failed = False
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        if failed:  # stop the shards still being built at once: the build has failed anyway
            for proc in mp.active_children():
                if proc not in before:
                    proc.kill()
        executor.shutdown(wait=True)


def _worker_died(started: list[Any], unfinished: list[int], out: Path) -> CacheError:
    """The error for a build whose worker died: names the dead workers' signals and the unfinished shards."""
    codes = {p.pid: p.exitcode for p in started if p.exitcode not in (None, 0)}
    # the executor SIGTERMs the other workers once one died: name the cause first
    killed = {pid: code for pid, code in codes.items() if code != -signal.SIGTERM} or codes
    how = ", ".join(
        f"pid {pid}: signal {signal.Signals(-code).name}" if -code in signal.valid_signals() else f"pid {pid}: exit code {code}"
        for pid, code in killed.items()
    )
    return CacheError(
        f"a build worker process died ({how or 'killed'}), killed from outside (the out-of-memory killer?), "
        f"before shard(s) {sorted(unfinished)[:10]} reported back; the shards finished are kept: {resume_build(out)} "
        "(with fewer --workers if memory is short)"
    )


def _drain(progress_queue: Any, bar: Any, *, timeout: float) -> None:
    try:
        bar.update(progress_queue.get(timeout=timeout) if timeout else progress_queue.get_nowait())
        while True:
            bar.update(progress_queue.get_nowait())
    except queue_mod.Empty:
        pass
