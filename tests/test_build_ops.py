"""The operations around a cache build: two builds into one folder, a full disk, a SIGKILLed build.

- a second build (or merge) into a folder a build holds is refused at once, naming the holder's pid and host;
  the nodes of a multi-node build share the folder, two runs of one node do not;
- an OSError while writing (ENOSPC simulated; EFBIG for real, from RLIMIT_FSIZE) is a one-line StorageError
  from the command line, naming the folder and --resume, and the resumed build is byte-identical;
- a SIGKILLed ``--workers 2`` build leaves no process behind (workers end with their parent, and the
  multiprocessing resource tracker follows).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from loader_kit import wait_for_no_process

from fastload.cache.format import TarWriter
from fastload.tools.cli import main

CLI = [sys.executable, "-m", "fastload"]
BLOCKED = "000003.jpg"  # an image of shard 0 (8-image shards): replaced by a FIFO, its reader waits there


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def _build_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "cache", "build", "--coco", str(data / "annotations.json"), "--images", str(data / "images"),
        "--out", str(out), "--config", str(data / "cache.yaml"), "--no-progress", *extra,
    ]  # fmt: skip


@pytest.fixture
def data(synth_root: Path, tmp_path: Path) -> Path:
    """A copy of the synthetic set (24 images, 3 shards of 8) with its cache config."""
    copy = tmp_path / "data"
    shutil.copytree(synth_root, copy)
    (copy / "cache.yaml").write_text("samples_per_shard: 8\n")  # the synth_cache fixture's config
    return copy


class _Blocked:
    """A build in a subprocess, held up reading the FIFO that stands for one image until `release`."""

    def __init__(self, data: Path, out: Path, *extra: str) -> None:
        self.image = data / "images" / BLOCKED
        self.good = self.image.read_bytes()
        self.image.unlink()
        os.mkfifo(self.image)
        cmd = [*CLI, *_build_args(data, out, *extra)]
        self.proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not _holds_lock(self.proc.pid, out):  # the build holds its lock, and reads the FIFO next
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, "the build did not take its lock"
            time.sleep(0.05)

    def release(self) -> subprocess.CompletedProcess:
        with open(self.image, "wb") as fifo:  # the blocked reader gets the image's bytes and goes on
            fifo.write(self.good)
        out, err = self.proc.communicate(timeout=120)
        self.restore()
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def restore(self) -> None:
        if self.image.exists() and not self.image.is_file():
            self.image.unlink()
            self.image.write_bytes(self.good)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()
        self.restore()


def _holds_lock(pid: int, out: Path) -> bool:
    return any(f"pid {pid}" in _text(p) or f'"pid": {pid}' in _text(p) for p in out.glob("build*.lock"))


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _refusal(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line, no traceback
    return err


# ----------------------------------------------------------------------------------------------- the lock


def test_a_second_build_into_the_same_folder_is_refused_naming_the_first(data, synth_cache, tmp_path, capsys):
    out = tmp_path / "cache"
    first = _Blocked(data, out, "--workers", "2")
    try:
        pid_host = f"pid {first.proc.pid} on host {socket.gethostname()}"
        err = _refusal(capsys, _build_args(data, out))
        assert "refusing to write into" in err and pid_host in err and str(out) in err
        assert pid_host in _refusal(capsys, _build_args(data, out, "--node-rank", "1", "--num-nodes", "2"))
        assert pid_host in _refusal(capsys, ["cache", "merge", str(out)])
        done = first.release()
    finally:
        first.kill()
    assert done.returncode == 0, done.stderr
    # the refused runs changed nothing, and the lock file is gone (completion records differ: a shard's
    # fingerprint holds each image file's size, and the FIFO's was 0)
    assert _without_records(out) == _without_records(synth_cache)


def test_nodes_share_the_folder_but_a_node_runs_once(data, synth_cache, tmp_path, capsys):
    out = tmp_path / "cache"
    node0 = _Blocked(data, out, "--node-rank", "0", "--num-nodes", "2")  # shards 0 and 2
    try:
        assert main(_build_args(data, out, "--node-rank", "1", "--num-nodes", "2")) == 0  # shard 1, meanwhile
        capsys.readouterr()
        pid = f"pid {node0.proc.pid}"
        assert pid in _refusal(capsys, _build_args(data, out, "--node-rank", "0", "--num-nodes", "2"))
        assert pid in _refusal(capsys, _build_args(data, out))  # a single-node build names the node holding it
        done = node0.release()
    finally:
        node0.kill()
    assert done.returncode == 0, done.stderr
    assert main(["cache", "merge", str(out)]) == 0
    merged = {name for name in _without_records(out) if not name.startswith("manifest.part-")}
    assert {name: _without_records(out)[name] for name in merged} == _without_records(synth_cache)  # no lock left


def _without_records(root: Path) -> dict[str, bytes]:
    return {name: data for name, data in _files(root).items() if not name.endswith(".done.json")}


def test_a_lock_file_left_by_a_killed_build_holds_nobody_back(data, synth_cache, tmp_path):
    from fastload.build.build import build_cache

    out = tmp_path / "cache"
    out.mkdir()
    (out / "build.lock").write_text('{"pid": 999999, "host": "gone", "started": "then", "run": "cache build"}\n')
    build_cache(coco=data / "annotations.json", images=data / "images", out=out, config=data / "cache.yaml", progress=False)
    assert _files(out) == _files(synth_cache)


# ----------------------------------------------------------------------------------------------- a full disk


def test_a_full_disk_is_one_line_naming_the_folder_and_resume_is_byte_identical(data, synth_cache, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cache"
    written = []
    real_write = TarWriter._write

    def filling_disk(self, chunk: bytes) -> None:  # the disk fills up half-way through the second shard
        written.append(len(chunk))
        if sum(written) > 1.5 * 81920:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, chunk)

    monkeypatch.setattr(TarWriter, "_write", filling_disk)
    err = _refusal(capsys, _build_args(data, out))
    assert f"writing the cache {out} failed: No space left on device; free space on the filesystem of {out}" in err
    assert "--resume" in err
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000.done.json", "shard-00000.idx", "shard-00000.json", "shard-00000.tar"]

    monkeypatch.setattr(TarWriter, "_write", real_write)  # space freed
    assert main(_build_args(data, out, "--resume")) == 0
    assert _files(out) == _files(synth_cache)


def test_a_real_write_error_in_a_worker_is_one_line_and_resume_is_byte_identical(data, synth_cache, tmp_path):
    # `ulimit -f` makes the kernel refuse writes past 48 KiB (EFBIG, with SIGXFSZ ignored) in the build's spawned
    # workers too: a real OSError from a worker process (a shard is 80 KiB), through the pool, to the command line
    out = tmp_path / "cache"
    cmd = [*CLI, *_build_args(data, out, "--workers", "2")]
    limited = ["bash", "-c", 'ulimit -f 48 && trap "" XFSZ && exec "$@"', "bash", *cmd]
    failed = subprocess.run(limited, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2
    assert failed.stderr.startswith(f"fastload cache: error: writing the cache {out} failed: File too large; raise")
    assert failed.stderr.count("\n") == 1 and "--resume" in failed.stderr, failed.stderr
    assert not list(out.glob("*.tmp")) and not (out / "manifest.json").exists()
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert _files(out) == _files(synth_cache)


# ----------------------------------------------------------------------------------------------- SIGKILL


def test_a_sigkilled_build_leaves_no_worker_and_no_resource_tracker(data, tmp_path):
    out = tmp_path / "cache"
    build = _Blocked(data, out, "--workers", "2")
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while len(tree) < 3:  # two workers (one waits on the FIFO) and the resource tracker
            assert time.monotonic() < deadline, tree
            time.sleep(0.05)
            tree = psutil.Process(build.proc.pid).children(recursive=True)
        assert any("resource_tracker" in " ".join(p.cmdline()) for p in tree)
        os.kill(build.proc.pid, signal.SIGKILL)  # the build process alone, as the out-of-memory killer does
        build.proc.wait(timeout=10)  # not communicate(): workers left alive would hold its output pipes open
        assert wait_for_no_process(tree) == []
    finally:
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.kill()
        build.kill()
