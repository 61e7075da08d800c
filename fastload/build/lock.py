"""One build (or merge) at a time per cache folder: ``flock`` on a lock file inside it, held for the whole run.

Two builds into one folder at once used to race: one died on the other's ``.tmp`` rename, or, with different
configs, both exited 0 and left shards of one config under the other's manifest. Now each run holds an
exclusive ``flock`` for its share of the folder:

========================  =================================  ============================================
run                       holds                              refused while
========================  =================================  ============================================
single-node build, merge  ``build.lock``, exclusive          any build or merge runs into the folder
node R of N               ``build.lock`` shared, and          a single-node build or merge runs, or another
                          ``build.part-R-of-N.lock``          node R of N
                          exclusive
========================  =================================  ============================================

so the nodes of a multi-node build share one folder, as designed. A refused run fails at once, naming the
holder's pid, host and start time (each holder writes them into its lock file). The kernel releases a lock
when its process dies, however it dies: a lock file left by a killed build holds nobody back. A run deletes
its own lock file when it ends, while still holding the lock; a run that opened the file just before checks,
once it holds the lock, that the path still names the file it locked, and starts again if not. A node's run
cannot delete the shared ``build.lock``; the merge does.

On a filesystem without ``flock`` (Lustre mounted without ``-o flock``, some FUSE filesystems) the run goes
on without the lock and says so once on the ``fastload`` logger.

`storage_error` turns an OSError met while writing the folder (a full disk, a quota, permissions) into the
one-line `StorageError` the command line prints: the cause, the fix, and ``--resume``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from fastload.advice import resume_build
from fastload.errors import StorageError

LOCK_NAME = "build.lock"
# errnos of a filesystem that does not implement flock
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_ATTEMPTS = 20  # a lock file deleted and recreated under us this often means something else is wrong


def part_lock_name(node_rank: int, num_nodes: int) -> str:
    return f"build.part-{node_rank:05d}-of-{num_nodes:05d}.lock"


@contextlib.contextmanager
def build_lock(out: Path, *, what: str, node: tuple[int, int] | None = None, then: str = "") -> Iterator[None]:
    """Hold the folder ``out`` (created if missing) for one run: a build, a node's build, or a merge.

    ``what`` names the run in the lock file ("cache build", "cache merge"); ``node`` = (rank, num_nodes) for a
    node of a multi-node build. Raises `StorageError` at once if another run holds the folder, or if the lock
    file cannot be written (`storage_error`, advising ``then``). A folder this call created is removed again at
    the end if the run left it empty (a build refused before writing).
    """
    created = not out.exists()
    held: list[_Held] = []
    try:
        if node is None:
            held.append(_acquire(out, LOCK_NAME, exclusive=True, what=what, then=then))
        else:
            held.append(_acquire(out, LOCK_NAME, exclusive=False, what=what, then=then))
            held.append(_acquire(out, part_lock_name(*node), exclusive=True, what=f"{what} (node {node[0]} of {node[1]})", then=then))
        yield
    finally:
        for lock in reversed(held):
            lock.release(delete=lock.exclusive)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty


class _Held:
    """An open, locked lock file (``fd`` is None where the filesystem has no locks)."""

    def __init__(self, path: Path, fd: int | None, exclusive: bool) -> None:
        self.path, self.fd, self.exclusive = path, fd, exclusive

    def release(self, *, delete: bool) -> None:
        if self.fd is None:
            return
        try:
            if delete:  # while holding it: whoever opened it meanwhile sees it gone and starts again
                with contextlib.suppress(OSError):
                    self.path.unlink()
        finally:
            os.close(self.fd)  # releases the lock
            self.fd = None


def _acquire(out: Path, name: str, *, exclusive: bool, what: str, then: str) -> _Held:
    path = out / name
    for _ in range(_ATTEMPTS):
        try:
            out.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(_cannot(out, exc)) from exc
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise _busy(out, name) from None
            if exc.errno in _NO_LOCKS:
                _warn_no_locks(out, exc)
                with contextlib.suppress(OSError):
                    path.unlink()  # an unlocked lock file would only mislead
                return _Held(path, None, exclusive)
            raise StorageError(_cannot(out, exc)) from exc
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # deleted (and maybe recreated) by the holder that just let go: lock the current one
            os.close(fd)
            continue
        held = _Held(path, fd, exclusive)
        try:
            if exclusive:
                _write_holder(fd, what)
            else:  # no exclusive holder: what the file says is left from a killed run
                os.ftruncate(fd, 0)
        except OSError as exc:
            held.release(delete=exclusive)
            raise storage_error(exc, out, then=then) from exc
        return held
    raise StorageError(f"could not lock {path}: it was deleted and recreated {_ATTEMPTS} times while we tried")


def _write_holder(fd: int, what: str) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "run": what}
    data = (json.dumps(holder) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _busy(out: Path, name: str) -> StorageError:
    named = _holder_text(out / name)
    if not named and name == LOCK_NAME:  # held shared: by the nodes of a multi-node build, named in their own files
        named = "; ".join(t for p in sorted(out.glob("build.part-*.lock")) if _is_held(p) and (t := _holder_text(p)))
    exc = StorageError(
        f"refusing to write into {out}: another fastload run holds it ({named or 'it has not written its name yet'}); "
        "two builds into one folder overwrite each other's files. Wait for it to end, or stop it and rerun yours "
        "with --resume"
    )
    exc.errno = errno.EBUSY
    return exc


def _is_held(path: Path) -> bool:
    """Whether some process holds ``path`` locked (a lock file left by a killed run is held by nobody)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _holder_text(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            holder = json.loads(fh.read(4096) or b"null")
        return f"{holder['run']}, pid {int(holder['pid'])} on host {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, TypeError, KeyError):
        return ""


def _cannot(out: Path, exc: OSError) -> str:
    return f"cannot create or lock {out}: {exc.strerror or exc} ({exc.filename or out}); check the path and its permissions"


_warned: set[str] = set()


def _warn_no_locks(out: Path, exc: OSError) -> None:
    if str(out) in _warned:
        return
    _warned.add(str(out))
    logging.getLogger("fastload").warning(
        "%s: the filesystem does not support flock (%s): building without the lock that refuses a second build "
        "into the same folder; run one build per folder", out, exc.strerror or exc,
    )


def storage_error(exc: OSError, out: Path, *, then: str = "") -> StorageError:
    """The `StorageError` for an OSError met while writing the cache ``out``: the cause, the fix, and what to
    run ``then`` (default: the build again with --resume)."""
    fixes = {
        errno.ENOSPC: f"free space on the filesystem of {out}",
        errno.EDQUOT: f"free space, or raise your quota, on the filesystem of {out}",
        errno.EFBIG: "raise the file size limit (ulimit -f) or lower samples_per_shard",
        errno.EACCES: f"make {out} writable for this user",
        errno.EPERM: f"make {out} writable for this user",
        errno.EROFS: f"build on a writable filesystem ({out} is on a read-only one)",
        errno.EIO: "check the disk (the kernel reported an I/O error)",
    }
    where = f" ({exc.filename})" if exc.filename else ""
    error = StorageError(
        f"writing the cache {out} failed: {exc.strerror or exc}{where}; {fixes.get(exc.errno, 'fix the cause')}, then "
        + (then or f"{resume_build(out)}: the shards finished are kept, the rest are rebuilt to the same bytes")
    )
    error.errno = exc.errno
    return error
