"""Preloaded by the CpuLoader's fork server: the fork server ends when the process that started it ends.

Multiprocessing's fork server exits once no process holds its "alive" pipe, but every worker it forks holds that
pipe, and a DataLoader worker waits for its parent (the fork server) to end: after a SIGKILL of the training
process, fork server, workers and resource tracker waited for each other for ever. Here the fork server asks
the kernel to end it with its parent process (`fastload.procs.die_with_parent_process`); its workers end with it
(`die_with_parent` in the CpuLoader's worker initialiser), and the resource tracker then reads the end of its
pipe and exits. Importing this module anywhere else does nothing.
"""

from __future__ import annotations

from fastload.procs import die_with_parent_process, in_fork_server

if in_fork_server():
    die_with_parent_process()
