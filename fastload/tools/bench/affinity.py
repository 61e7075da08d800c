"""Restrict the benchmark's whole process tree to N CPUs, alike for every loader (``fastload bench --cores``).

Linux CPU affinity is per thread and inherited at creation: a thread or process started after the change gets
the restricted set (DataLoader workers, DALI's threads), but ones that exist already keep theirs. The fork server
that starts CpuLoader and peer workers is such a process, and so are torch's intra-op threads; so the change is
applied to every thread of this process and of all its descendants, before a loader is made, and undone after.
torch's own thread count (the model's compute) is set to N as well.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psutil
import torch

from fastload.validation import check_int


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on, ascending."""
    return sorted(os.sched_getaffinity(0))


def restrict_tree(cpus: Sequence[int]) -> int:
    """Set the affinity of every thread of this process and its descendants to ``cpus``; returns threads set.

    Threads and processes that end meanwhile are skipped.
    """
    done = 0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            threads = proc.threads()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        for thread in threads:
            try:
                os.sched_setaffinity(thread.id, cpus)
                done += 1
            except (ProcessLookupError, PermissionError):
                continue
    return done


@contextmanager
def limited_cores(cores: int | None) -> Iterator[list[int]]:
    """Within the block the process tree runs on the first ``cores`` allowed CPUs, and torch uses ``cores``
    threads; None changes nothing. Yields the CPUs in use."""
    everything = allowed_cpus()
    if cores is None:
        yield everything
        return
    check_int("cores", cores, 1, len(everything), error=ValueError, why="the CPUs this process may use")
    threads = torch.get_num_threads()
    chosen = everything[:cores]
    restrict_tree(chosen)
    torch.set_num_threads(cores)
    try:
        yield chosen
    finally:
        restrict_tree(everything)
        torch.set_num_threads(threads)
