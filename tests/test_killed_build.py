"""`fastload cache build` killed from outside: SIGKILL at random points, a worker killed mid-shard.

The guarantees under test (docs/design.md, "The cache"): every file appears atomically under its final name,
a shard's completion record is written after its files and the manifest after every record, so

- a killed build never leaves a half-written file under a final name: every ``shard-*`` file and manifest
  present is byte-identical to the one an uninterrupted build writes (``*.tmp`` files are the only debris);
- `fastload cache verify` (and every reader) refuses a cache without its manifest;
- ``--resume`` finishes it into the same bytes as an uninterrupted build (the manifest has no timestamp);
- a worker process killed on its own (the out-of-memory killer) fails the build with a named error instead
  of leaving it waiting forever for the lost shard.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fastload.build.synth import synth_coco
from fastload.cache.manifest import sha256_file

CLI = [sys.executable, "-m", "fastload"]


def _build_cmd(data: Path, out: Path, config: Path, *extra: str) -> list[str]:
    return [
        *CLI, "cache", "build", "--coco", str(data / "annotations.json"), "--images", str(data / "images"),
        "--out", str(out), "--config", str(config), "--workers", "2", "--no-progress", *extra,
    ]  # fmt: skip


def _start(cmd: list[str]) -> subprocess.Popen:
    # a session of its own: the builder and its worker processes share one process group to kill
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()
    # SIGKILL is final, but wait until no member of the group runs any more (zombies run no code)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = []
        for p in psutil.process_iter(["status"]):
            try:
                if os.getpgid(p.pid) == proc.pid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    alive.append(p.pid)
            except (ProcessLookupError, psutil.Error):
                continue
        if not alive:
            return
        time.sleep(0.02)
    raise AssertionError(f"processes {alive} of the killed build's group still run")


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def _verify(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "cache", "verify", str(out), "--no-progress"], capture_output=True, text=True, timeout=120)


def _check_killed_state(out: Path, reference: dict[str, bytes]) -> str:
    """What a killed build left must be all-or-nothing per file; return a one-word summary for the log."""
    if not out.exists():
        return "nothing"
    names = sorted(p.name for p in out.iterdir())
    for name in names:
        if name.endswith((".tmp", ".lock")):
            continue  # debris of the write in progress, the killed build's lock file; the next build removes them
        assert name in reference, f"{name}: a file an uninterrupted build does not write"
        assert (out / name).read_bytes() == reference[name], f"{name}: present under its final name but not complete"
    # each shard that looks complete (has its record) hashes as the record says
    for done in out.glob("shard-*.done.json"):
        record = json.loads(done.read_text())
        for entry in (record["files"] or {}).values():
            assert sha256_file(out / entry["name"]) == entry["sha256"], f"{entry['name']} of {done.name}"
    result = _verify(out)
    if "manifest.json" in names:
        assert result.returncode == 0, result.stderr  # the kill came after the build's last write
        return "finished"
    assert result.returncode == 2 and "manifest.json is missing" in result.stderr, (result.returncode, result.stderr)
    return f"{len(list(out.glob('shard-*.done.json')))}-shards-done"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("killed_build")
    synth_coco(out=root / "data", n=120, size=(96, 128), instances=(1, 4), seed=3, workers=1)
    config = root / "cache.yaml"
    config.write_text("samples_per_shard: 8\n")  # 15 shards
    return root / "data", config


def _timed_reference(data: Path, config: Path, out: Path) -> tuple[float, float]:
    """Build without interruption; return when the first shard was done and when the build ended (s)."""
    start = time.monotonic()
    proc = _start(_build_cmd(data, out, config))
    first = None
    while proc.poll() is None:
        if first is None and out.is_dir() and any(out.glob("shard-*.done.json")):
            first = time.monotonic() - start
        time.sleep(0.005)
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    end = time.monotonic() - start
    return first or end, end


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_bytes(data, tmp_path):
    images, config = data
    first_done, full_time = _timed_reference(images, config, tmp_path / "reference")
    reference = _files(tmp_path / "reference")
    assert len([n for n in reference if n.endswith(".tar")]) == 15

    rng = random.Random(20240501)  # seeded: a failing kill point can be replayed
    log = []
    for run in range(10):
        out = tmp_path / f"run{run}"
        # kill a fresh build, then a resume of it; most kills fall while shards are being written (the first
        # part of a build is interpreter and worker start-up), some anywhere from the start to the end
        for attempt, extra in enumerate(([], ["--resume"])):
            low = 0.0 if (run + attempt) % 3 == 0 else 0.8 * first_done
            delay = rng.uniform(low, 1.05 * full_time)
            proc = _start(_build_cmd(images, out, config, *extra))
            time.sleep(delay)
            _kill_group(proc)
            log.append((run, attempt, round(delay, 2), _check_killed_state(out, reference)))
        finished = subprocess.run(_build_cmd(images, out, config, "--resume"), capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr
        assert _files(out) == reference, f"run {run}: resumed cache differs from the uninterrupted build"
        assert _verify(out).returncode == 0
    print(f"first shard done at {first_done:.2f} s, full build {full_time:.2f} s; kills (run, attempt, delay, state):", log)
    # the kills must have landed in the middle of the shard writing to mean anything
    partial = [s for *_, s in log if s.endswith("-shards-done") and s not in ("0-shards-done", "15-shards-done")]
    assert len(partial) >= 3, log


@pytest.mark.slow
def test_one_worker_killed_at_random_points_never_hangs_the_build(data, tmp_path):
    images, config = data
    subprocess.run(_build_cmd(images, tmp_path / "reference", config), check=True, capture_output=True, timeout=300)
    reference = _files(tmp_path / "reference")
    rng = random.Random(7)
    outcomes = []
    for run in range(8):
        out = tmp_path / f"run{run}"
        proc = _start(_build_cmd(images, out, config))
        try:
            time.sleep(rng.uniform(0.3, 1.5))
            workers = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
            if workers:
                rng.choice(workers).kill()
            _, err = proc.communicate(timeout=60)  # a multiprocessing.Pool waited here forever
        finally:
            _kill_group(proc)
        outcomes.append(proc.returncode)
        assert proc.returncode in (0, 2), err
        if proc.returncode == 2:
            assert "build worker process died" in err and "--resume" in err, err
        _check_killed_state(out, reference)
        subprocess.run(_build_cmd(images, out, config, "--resume"), check=True, capture_output=True, timeout=300)
        assert _files(out) == reference
    assert 2 in outcomes, outcomes


def test_a_worker_killed_mid_shard_fails_the_build_instead_of_hanging(tmp_path):
    data = tmp_path / "data"
    synth_coco(out=data, n=12, size=(32, 40), instances=(1, 2), seed=2, workers=1)
    config = tmp_path / "cache.yaml"
    config.write_text("samples_per_shard: 4\n")  # 3 shards; image 000005.jpg is in shard 1
    good = (data / "images" / "000005.jpg").read_bytes()
    (data / "images" / "000005.jpg").unlink()
    os.mkfifo(data / "images" / "000005.jpg")  # reading it blocks: shard 1's worker waits there
    out = tmp_path / "cache"
    proc = _start(_build_cmd(data, out, config))
    try:
        deadline = time.monotonic() + 60
        while len(list(out.glob("shard-*.done.json"))) < 2:  # shards 0 and 2 done; shard 1 blocked
            assert proc.poll() is None and time.monotonic() < deadline, "the build ended or stalled early"
            time.sleep(0.05)
        workers = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2
        for worker in workers:
            worker.kill()
        _, err = proc.communicate(timeout=30)  # before the fix: waited forever for shard 1's result
    finally:
        _kill_group(proc)
    assert proc.returncode == 2
    assert "build worker process died (pid " in err and "signal SIGKILL" in err
    assert re.search(r"before shard\(s\) \[1(, 2)?\] reported back", err) and "--resume" in err
    assert not (out / "manifest.json").exists() and not (out / "shard-00001.done.json").exists()

    (data / "images" / "000005.jpg").unlink()
    (data / "images" / "000005.jpg").write_bytes(good)
    subprocess.run(_build_cmd(data, out, config, "--resume"), check=True, capture_output=True, timeout=120)
    subprocess.run(_build_cmd(data, tmp_path / "reference", config), check=True, capture_output=True, timeout=120)
    assert _files(out) == _files(tmp_path / "reference")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda r: r["files"]["tar"].pop("name"), id="key-missing"),
        pytest.param(lambda r: r.__setitem__("files", ["shard-00001.tar"]), id="files-a-list"),
        pytest.param(lambda r: r["files"]["json"].__setitem__("name", "../shard-00001.json"), id="name-escapes"),
        pytest.param(lambda r: r["files"].pop("idx"), id="file-kind-missing"),
    ],
)
def test_resume_rebuilds_a_shard_whose_completion_record_is_misshapen(synth_root, synth_cache, tmp_path, damage):
    # valid JSON of another shape (a damaged disk, a hand edit) made --resume crash with a KeyError
    import shutil

    from fastload.build.build import build_cache

    out = tmp_path / "cache"
    shutil.copytree(synth_cache, out)
    record_path = out / "shard-00001.done.json"
    record = json.loads(record_path.read_text())
    damage(record)
    record_path.write_text(json.dumps(record))
    (out / "manifest.json").unlink()
    build_cache(
        coco=synth_root / "annotations.json", images=synth_root / "images", out=out,
        config={"samples_per_shard": 8}, resume=True, progress=False,
    )  # fmt: skip
    assert _files(out) == _files(synth_cache)
