"""`WorkerPool` on its own: results in submission order through reusable shared memory, errors at their ticket,
slots that grow, cancel, close with work in progress, a dead worker named, and no worker outliving its parent.

The job here is a test double (module level: workers unpickle it): a task ``(value, size, delay, fail)`` sleeps
``delay`` seconds and returns ``size`` int64s all equal to ``value``, or raises.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest

from fastload.errors import CacheError
from fastload.pipeline.workers import WorkerDied, WorkerPool


class Unpicklable(Exception):
    def __init__(self, a, b):  # pickling keeps args, unpickling calls __init__(*args): would fail for one arg
        super().__init__(f"{a}/{b}")

    def __reduce__(self):
        raise TypeError("no pickling")


@dataclass
class Job:
    trace: str = ""  # a folder: each task that runs leaves a file there (workers are other processes)
    opened: bool = False

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        pass

    def run(self, task, ahead):
        value, size, delay, fail = task
        if self.trace:
            Path(self.trace, str(value)).touch()
        time.sleep(delay)
        if fail == "cache":
            raise CacheError(f"shard-00000.tar:{value:08d}: bad")
        if fail == "odd":
            raise Unpicklable(value, "x")
        assert self.opened
        return {"values": np.full(size, value, np.int64), "ahead": np.array([t[0] for t in ahead], np.int64)}, {"value": value}


def task(value, size=8, delay=0.0, fail=None):
    return (value, size, delay, fail)


@pytest.fixture(params=[0, 1, 3], ids=["in-process", "1-worker", "3-workers"])
def pool(request):
    p = WorkerPool(Job(), workers=request.param, slots=2, name="test-pool")
    yield p
    p.close()


def drain(pool: WorkerPool, tasks) -> list:
    """Submit ``tasks`` keeping the pool full, take every result in order, release each once read."""
    out, queue = [], list(tasks)
    while queue or pool.outstanding:
        while queue and pool.outstanding < pool.capacity:
            pool.submit(queue.pop(0))
        result = pool.take()
        out.append((result.arrays["values"].copy(), result.info))
        pool.release(result.ticket)
    return out


def test_results_come_back_in_submission_order_whatever_finishes_first(pool):
    rng = np.random.default_rng(0)
    tasks = [task(k, size=int(rng.integers(1, 50)), delay=float(rng.uniform(0, 0.01))) for k in range(30)]
    out = drain(pool, tasks)
    assert [info["value"] for _, info in out] == list(range(30))
    assert all(np.array_equal(values, np.full(t[1], t[0])) for (values, _), t in zip(out, tasks, strict=True))


def test_a_slot_grows_for_a_batch_larger_than_any_before(pool):
    out = drain(pool, [task(1, 10), task(2, 1_000_000), task(3, 10), task(4, 3_000_000)])
    assert [len(v) for v, _ in out] == [10, 1_000_000, 10, 3_000_000]
    assert out[3][0][-1] == 4


def test_a_worker_sees_the_tasks_queued_behind_its_current_one():
    p = WorkerPool(Job(), workers=1, slots=4)
    try:
        for k in range(4):
            p.submit(task(k, delay=0.05 if k == 0 else 0.0))
        time.sleep(0.02)
        first = p.take()
        assert first.info == {"value": 0}
        p.release(first.ticket)
        assert p.take().arrays["ahead"].tolist() in ([2, 3], [])  # a read-ahead hint, never the task itself
    finally:
        p.close()


def test_an_error_is_raised_at_its_ticket_after_the_results_before_it(pool):
    for t in (task(0), task(1, fail="cache")):
        pool.submit(t)
    first = pool.take()
    assert first.info == {"value": 0}
    pool.release(first.ticket)
    pool.submit(task(2))
    with pytest.raises(CacheError, match="00000001: bad"):
        pool.take()
    pool.release(1)
    assert pool.take().info == {"value": 2}  # the pool goes on
    pool.release(2)


def test_an_exception_that_cannot_travel_arrives_as_its_text():
    p = WorkerPool(Job(), workers=1, slots=2)
    try:
        p.submit(task(5, fail="odd"))
        with pytest.raises(RuntimeError, match="Unpicklable: 5/x") as info:
            p.take()
        assert "in a fastload worker process" in str(info.value)
    finally:
        p.close()


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_cancel_skips_what_was_not_started_and_the_pool_goes_on(workers, tmp_path):
    pool = WorkerPool(Job(trace=str(tmp_path)), workers=workers, slots=3)
    try:
        for k in range(pool.capacity):
            pool.submit(task(k, delay=0.5))
        deadline = time.monotonic() + 20
        while len(list(tmp_path.iterdir())) < workers and time.monotonic() < deadline:
            time.sleep(0.01)  # until each worker is inside its first task
        pool.cancel()  # the tasks in progress finish; those queued behind them are skipped
        ran = sorted(int(p.name) for p in tmp_path.iterdir())
        assert ran == list(range(workers)), ran  # worker w's first task is ticket w; nothing else ran
        assert pool.outstanding == 0
        assert [info["value"] for _, info in drain(pool, [task(7), task(8)])] == [7, 8]
    finally:
        pool.close()


def test_close_with_work_in_progress_leaves_no_process():
    p = WorkerPool(Job(), workers=2, slots=2)
    for k in range(4):
        p.submit(task(k, delay=30.0))  # a task that would outlive any patience
    pids = p.pids
    time.sleep(0.2)
    started = time.monotonic()
    p.close()
    assert time.monotonic() - started < 15  # stop, then terminate
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def test_a_dead_worker_is_named():
    p = WorkerPool(Job(), workers=1, slots=2)
    try:
        p.submit(task(0, delay=10.0))
        time.sleep(0.3)
        os.kill(p.pids[0], signal.SIGKILL)
        with pytest.raises(WorkerDied, match=r"fastload-feed-0 \(pid \d+\) was killed by SIGKILL.*out-of-memory"):
            p.take()
        assert p.dead
        p.cancel()  # what closing a loader does: a dead worker is no reason to raise again
        with pytest.raises(WorkerDied, match="killed by SIGKILL"):
            p.submit(task(1))
    finally:
        p.close()


def test_workers_die_with_their_parent(tmp_path):
    # a training process SIGKILLed (the OOM killer, a cluster's scheduler) must not leave its workers behind
    pid_file = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parents[1])]!r}
        from test_workers import Job, task
        from fastload.pipeline.workers import WorkerPool

        if __name__ == "__main__":
            pool = WorkerPool(Job(), workers=2, slots=2)
            for k in range(2):
                pool.submit(task(k, delay=60.0))
            open({str(pid_file)!r}, "w").write(" ".join(map(str, pool.pids)))
            time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [int(p) for p in pid_file.read_text().split()]
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [p for p in workers if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    assert not alive, f"workers {alive} outlived their SIGKILLed parent"


@pytest.mark.parametrize("kwargs", [{"workers": -1, "slots": 1}, {"workers": 1, "slots": 0}])
def test_arguments_are_checked(kwargs):
    with pytest.raises(ValueError, match="workers must be >= 0 and slots >= 1"):
        WorkerPool(Job(), **kwargs)
