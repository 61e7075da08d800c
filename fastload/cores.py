"""How many CPU cores this process may use: the default for loader threads, build workers and the bench."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on (respects taskset / container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
