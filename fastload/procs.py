"""Child processes that never outlive their parent."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int | None = None) -> bool:
    """Have the kernel kill this process (SIGKILL) when its parent process ends, and end now if it already has.

    A worker left behind by a killed training process holds memory, file descriptors and a GPU-less copy of the
    job; Linux's parent-death signal ends it with its parent. ``parent``: the pid this process must not outlive,
    when the direct parent is a go-between (a fork server): checked now, and the go-between watches it. Returns
    whether the signal could be set (Linux only; elsewhere the process still ends at its socket's EOF).
    """
    ok = False
    if sys.platform.startswith("linux"):
        try:
            ok = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            ok = False
    # the parent may have died before the signal was armed: then our parent is already someone else
    if parent is not None and not _alive(parent):
        os._exit(0)
    return ok


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
