"""Both loaders in one process: a failed DALI pass leaves nothing running, and CpuLoader workers inherit nothing.

A CpuLoader's DataLoader workers used to be forked, copying every live object of the parent, DALI pipelines kept
alive by exception tracebacks and their threads included; a child collecting such a pipeline joined threads it
did not have and hung (or died with "terminate called ... std::system_error"). Now the workers start from a
fork server (a clean process) and a DALI pass that fails shuts its pipeline down at once. These tests compare the
loaders in one script, as `fastload show --loader both`, `fastload bench --loaders dali,cpu` and notebooks do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from loader_kit import make_loader, make_synth_cache, start_mp_helpers

from fastload.cache.format import SampleMembers
from fastload.cache.reader import CacheDataset
from fastload.errors import CacheError

pytest.importorskip("nvidia.dali")

BAD = 5  # the sample whose image no decoder can read (its member passes the CRC: it was stored this way)
N = 12


class BadImageCache(CacheDataset):
    """A real cache whose sample ``BAD`` has an image member cut short (module level: workers unpickle it)."""

    def read_members(self, i: int) -> SampleMembers:
        members = super().read_members(i)
        if i != BAD:
            return members
        return SampleMembers(**{**members.__dict__, "image": members.image[:60]})


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory) -> Path:
    return make_synth_cache(tmp_path_factory.mktemp("forksafety"), n=N, size=(48, 64))


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def failing_dali_pass(cache) -> CacheError:
    loader = make_loader("dali", cache, batch_size=4, shuffle=False, augment="default")
    with pytest.raises(CacheError) as info:
        for _ in loader:
            pass
    return info.value


def settled(measure, target, *, within: float = 5.0):
    deadline = time.monotonic() + within
    value = measure()
    while value != target and time.monotonic() < deadline:
        time.sleep(0.05)
        value = measure()
    return value


def test_a_failed_dali_pass_leaves_no_thread_and_no_file_behind(cache_path):
    cache = BadImageCache(cache_path)
    failing_dali_pass(cache)  # the first pipeline may start process-wide helpers that stay: count after it
    threads, fds = settled(os_threads, None, within=0.5), open_fds()
    for _ in range(3):
        error = failing_dali_pass(cache)
        assert f"{BAD:08d}" in str(error) and "cache index 5" in str(error)
        assert settled(os_threads, threads) == threads, "a failed DALI pass left threads running"
        assert open_fds() <= fds, f"a failed DALI pass left files open: {sorted(open_fds() - fds)}"
    cache.close()


def test_dali_failures_interleaved_with_cpu_loader_passes_never_hang(cache_path):
    # a separate interpreter, so that a hang is a timeout here (and a crash a return code), never a stuck suite
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parents[1])]!r}
        from loader_kit import make_loader
        from test_fork_safety import BAD, BadImageCache
        from fastload.errors import CacheError

        if __name__ == "__main__":
            cache = BadImageCache({str(cache_path)!r})
            kept = []  # failed passes' errors, with their tracebacks and whatever those keep alive
            for round in range(4):
                for kind, kwargs in (("dali", {{}}), ("cpu", {{"num_threads": 2}})):
                    loader = make_loader(kind, cache, batch_size=4, shuffle=False, augment="default", **kwargs)
                    try:
                        for batch in loader:
                            pass
                    except CacheError as exc:
                        assert f"{{BAD:08d}}" in str(exc), exc
                        kept.append(exc)
                    else:
                        raise AssertionError(f"{{kind}}: the bad sample went through")
                    good = make_loader(kind, cache, batch_size=4, shuffle=False, drop_last=True, augment="default",
                                       rank=0, world_size=3, **kwargs)  # rank 0 of 3: samples 0..3, never 5
                    assert sum(len(b["index"]) for b in good) == 4, kind
                    good.close()
                    loader.close()
            print("rounds done", len(kept))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240, cwd=Path(__file__).parent
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "rounds done 8" in done.stdout
    for sign in ("terminate called", "std::system_error", "Traceback", "exited unexpectedly"):
        assert sign not in done.stderr, done.stderr[-4000:]


def test_show_and_bench_work_after_a_dali_failure_in_the_same_process(cache_path, tmp_path):
    from fastload.tools.bench.run import BenchConfig, run_bench
    from fastload.tools.show import show

    start_mp_helpers()
    failing_dali_pass(BadImageCache(cache_path))
    picture = show(str(cache_path), tmp_path / "grid.png", n=2, loader="both", size=(32, 48), device="cpu")
    assert picture.is_file()
    cfg = BenchConfig(
        cache=str(cache_path), loaders=("dali", "cpu"), batch_sizes=(2,), size=(32, 32), steps=2, warmup=1,
        workers=2, device="cpu", model="none",
    )  # fmt: skip
    report = run_bench(cfg, log=lambda message: None)
    assert {r["loader"] for r in report["results"]} == {"dali", "cpu"}
