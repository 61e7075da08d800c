"""Helper processes: they end with the process they work for, even when it is SIGKILLed, and keep their memory.

A build worker or a CpuLoader worker whose parent was killed (SIGKILL, the out-of-memory killer, a job
scheduler's SIGTERM) used to live on under PID 1: it held its memory, its open shard files, and the
multiprocessing resource tracker (which waits for every process holding its pipe) with it. Linux can tell a
process when its parent ends: ``prctl(PR_SET_PDEATHSIG, sig)``. Two uses:

* `die_with_parent`: SIGKILL this process when its parent ends. The kernel's "parent" is the *thread* that
  started the process, so this suits processes started by a thread that lives at least as long as they do:
  the cache build's pool workers (started and waited for by the `build_cache` call) and the CpuLoader's
  DataLoader workers (forked by the fork server's only thread).
* `die_with_parent_process`: for a process that a short-lived thread may start (the fork server, started by
  whichever thread first iterates a CpuLoader). The kernel's signal is then a real-time signal whose handler
  ends this process only if the parent *process* has gone (the signal also comes when just the starting
  thread ends, and the process has been handed to another of the parent's threads).

Both are no-ops (returning False) where ``prctl`` is not available (not Linux).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# the fork server's parent-death signal: a real-time signal nobody else sends (SIGTERM, SIGUSR1 and the like are
# sent by job schedulers to every process of a job, and must keep their usual meaning)
_PROCESS_DEATH_SIGNAL = signal.SIGRTMIN + 5 if hasattr(signal, "SIGRTMIN") else None

# (parent pid, child pid) of the last fork, recorded across the fork (os.register_at_fork, below): a process
# forked from one that imported this module knows its parent's pid exactly, even if the parent died already
_forking_pid: int | None = None
_forked: tuple[int, int] | None = None


def _before_fork() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _forked
    if _forking_pid is not None:
        _forked = (_forking_pid, os.getpid())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def die_with_parent(parent: int | None = None) -> bool:
    """Have the kernel SIGKILL this process when its parent (the thread that started it) ends.

    Parameters
    ----------
    parent : the parent's pid as the parent knew it (``os.getpid()`` passed to the child): if the parent
        died before this call, ``os.getppid()`` already names another process and this process ends now.
        ``None``: the pid recorded at the fork when the parent had imported this module (a fork server's
        children), else the check is skipped (the kernel's signal still covers every later death).

    Returns
    -------
    Whether the kernel took the request (False off Linux).
    """
    if not _set_parent_death_signal(signal.SIGKILL):
        return False
    if parent is None and _forked is not None and _forked[1] == os.getpid():
        parent = _forked[0]
    if parent is not None and os.getppid() != parent:  # the parent died before the request
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def die_with_parent_process() -> bool:
    """End this process (SIGKILL) when its parent *process* ends, whichever of its threads started this one.

    For processes started by a thread that may end before them (see the module docstring). Installs a handler
    for a real-time signal in this process; children forked later inherit the handler but not the kernel
    request, and the handler does nothing in them. Returns whether the kernel took the request.
    """
    if _PROCESS_DEATH_SIGNAL is None:
        return False
    parent, me = os.getppid(), os.getpid()

    def on_parent_death(_signum: int, _frame: object) -> None:
        # the starting thread ended: the process now belongs to another thread of the same parent, or to a
        # reaper if the parent process is gone
        if os.getpid() == me and os.getppid() != parent:
            os.kill(me, signal.SIGKILL)

    signal.signal(_PROCESS_DEATH_SIGNAL, on_parent_death)
    if not _set_parent_death_signal(_PROCESS_DEATH_SIGNAL):
        return False
    if os.getppid() != parent:  # died between the two calls
        os.kill(me, signal.SIGKILL)
    return True


def _set_parent_death_signal(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def in_fork_server() -> bool:
    """Whether this code runs while multiprocessing's fork server imports its preload modules.

    The fork server imports the modules named by ``set_forkserver_preload`` inside
    ``multiprocessing.forkserver.main``; nothing else runs that function.
    """
    from multiprocessing import forkserver

    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Let this worker's allocator reuse freed memory instead of handing it back to the kernel.

    A sample's kernels allocate and free a dozen arrays of 0.25-3 MB. With glibc's defaults such blocks are
    mmap'ed and unmapped, or trimmed off the heap's top, so each new one is first-touch memory: on a VM a page
    fault costs ~4 us, ~4,000 of them per 512x512 sample, as much CPU time as all the kernels together. Served
    from the heap (mmap only above 32 MiB, trim only above 512 MiB free) they are reused as they are. The
    worker's resident memory stays at its peak working set (one batch's temporaries). A no-op off glibc.
    Returns whether the settings took.
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 512 << 20))
