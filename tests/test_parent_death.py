"""Helper processes end with the process they work for (`fastload.procs`), and a killed CpuLoader user leaves nothing.

Before: a SIGKILLed (or SIGTERMed) training process left its CpuLoader's fork server, workers and the
multiprocessing resource tracker running (60 s later and for ever: each waited for the other). The build's
worker case is in test_build_ops.py.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from loader_kit import make_synth_cache, wait_for_no_process

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")

# a parent whose thread starts a child, waits until the child has asked for its parent-death signal, and ends
PARENT = """
import subprocess, sys, threading, time
def start():
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True)
    print(child.pid, child.stdout.readline().strip(), flush=True)
thread = threading.Thread(target=start)
thread.start()
thread.join()
print("thread ended", flush=True)
time.sleep(600)
"""


def _start_parent(child_code: str) -> tuple[subprocess.Popen, psutil.Process]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, textwrap.dedent(child_code)], stdout=subprocess.PIPE, text=True)
    pid, armed = parent.stdout.readline().split()
    assert armed == "armed" and parent.stdout.readline().strip() == "thread ended"
    return parent, psutil.Process(int(pid))


def _kill(parent: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if parent.poll() is None:
        parent.send_signal(sig)
    parent.wait(timeout=10)  # not communicate(): children left alive would hold its output pipe open
    parent.stdout.close()


def test_die_with_parent_process_ends_the_child_with_its_parent_not_with_the_starting_thread():
    parent, child = _start_parent(
        """
        import sys, time
        from fastload.procs import die_with_parent_process
        assert die_with_parent_process()
        print("armed", flush=True)
        time.sleep(600)
        """
    )
    try:
        time.sleep(0.5)  # the kernel has signalled the end of the starting thread: the child stays
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        _kill(parent)
        assert wait_for_no_process([child]) == []
    finally:
        with contextlib.suppress(psutil.Error):
            child.kill()
        _kill(parent)


def test_die_with_parent_follows_the_starting_thread():
    # why the fork server (started by whichever thread first iterates a CpuLoader) uses the function above
    parent, child = _start_parent(
        """
        import os, sys, time
        from fastload.procs import die_with_parent
        assert die_with_parent(os.getppid())
        print("armed", flush=True)
        time.sleep(600)
        """
    )
    try:
        assert wait_for_no_process([child]) == []
    finally:
        with contextlib.suppress(psutil.Error):
            child.kill()
        _kill(parent)


def test_die_with_parent_ends_a_child_whose_parent_is_already_gone():
    # the parent's pid as it knew it differs from getppid(): the parent died before the request
    code = "import os; from fastload.procs import die_with_parent; die_with_parent(os.getpid()); print('alive')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL and "alive" not in done.stdout


TRAINING = """
import sys, threading, time
import fastload

def main():
    loader = fastload.CpuLoader(sys.argv[1], batch_size=2, size=(32, 32), device="cpu", num_threads=2)
    # a pass in a thread that then ends (a background-prefetch wrapper does this): the fork server it
    # started must not end with it
    thread = threading.Thread(target=lambda: sum(1 for _ in loader))
    thread.start()
    thread.join()
    next(iter(loader))
    print("ready", flush=True)
    time.sleep(600)

if __name__ == "__main__":
    main()
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_synth_cache(tmp_path_factory.mktemp("parent_death"), n=8)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_cpu_loader_user_leaves_no_process(cache, tmp_path, sig):
    script = tmp_path / "train.py"
    script.write_text(TRAINING)
    proc = subprocess.Popen([sys.executable, str(script), str(cache)], stdout=subprocess.PIPE, text=True)
    tree: list[psutil.Process] = []
    try:
        assert proc.stdout.readline().strip() == "ready", "the training script failed"
        tree = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "multiprocessing.forkserver" in names and "multiprocessing.resource_tracker" in names
        assert len(tree) == 4  # resource tracker, fork server, two workers
        _kill(proc, sig)
        assert wait_for_no_process(tree) == []
    finally:
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.kill()
        _kill(proc, signal.SIGKILL)
