"""The DALI engine's feed: no per-sample Python in the training process.

The GPU path's bound used to be Python in the training process: a feed thread read each sample, checked its CRCs,
parsed its label headers and drew its parameters, under the GIL the training loop needs. Now the feed workers do
all of that; the training process sends a plan and receives a batch's columns. These tests run the same feed on
``device="cpu"`` (DALI's CPU graph; CI has no GPU) and show it: the per-sample functions are never called in the
training process, and the Python calls the feed makes there per batch do not grow with the batch size.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from loader_kit import make_loader, make_synth_cache, run_unguarded_script

pytest.importorskip("nvidia.dali")

PER_SAMPLE = [
    ("fastload.cache.reader", "CacheDataset", "read_members"),
    ("fastload.cache.format", None, "parse_label"),
    ("fastload.cache.format", None, "decode_label"),
    ("fastload.augment.params", None, "draw_batch"),
    ("fastload.augment.params", None, "draw_params"),
    ("fastload.cache.validate", None, "checked_sample"),
    ("fastload.pipeline.dali.inputs", None, "cpu_label_columns"),
    ("fastload.pipeline.dali.inputs", None, "param_columns"),
    ("fastload.pipeline.dali.feed", "FeedJob", "run"),
    ("fastload.pipeline.prefetch", "Prefetcher", "take"),
]


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory) -> Path:
    return make_synth_cache(tmp_path_factory.mktemp("feed"), n=256, size=(24, 32), samples_per_shard=64)


def test_the_training_process_never_reads_checks_or_draws_a_sample(cache_path, monkeypatch):
    import importlib

    calls = {}
    for module, owner, name in PER_SAMPLE:
        target = importlib.import_module(module)
        if owner is not None:
            target = getattr(target, owner)
        original = getattr(target, name)

        def counted(*args, _original=original, _name=f"{module}.{name}", **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(target, name, counted)
    loader = make_loader("dali", cache_path, batch_size=8, augment="default")  # feed workers: 1 on this machine
    seen = np.concatenate([b["index"].numpy() for _ in range(2) for b in loader])
    loader.close()
    assert sorted(seen.tolist()) == sorted(list(range(256)) * 2)  # two epochs, every sample once each
    assert calls == {}, f"per-sample work ran in the training process: {calls}"


def feed_calls_per_batch(cache_path: Path, batch_size: int) -> float:
    """Python function calls the loader makes in the training process, per batch (its own modules, the targets,
    DALI's Python side and the worker pool), over one epoch after a warm-up epoch."""
    watched = ("fastload/pipeline/", "fastload/targets/", "nvidia/dali/", "multiprocessing/")
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event == "call" and any(part in frame.f_code.co_filename for part in watched):
            count += 1

    loader = make_loader("dali", cache_path, batch_size=batch_size, augment="default", shuffle=False)
    list(loader)  # warm-up: workers started, pipeline built, every slot of the pool used once
    sys.setprofile(profile)
    try:
        batches = sum(1 for _ in loader)
    finally:
        sys.setprofile(None)
        loader.close()
    return count / batches


def test_the_loaders_python_per_batch_does_not_grow_with_the_batch(cache_path):
    # the feed hands DALI dense columns and the targets are rendered by the batched torch twin: nothing in the
    # training process is called once per sample
    small, large = feed_calls_per_batch(cache_path, 4), feed_calls_per_batch(cache_path, 32)
    # 28 more samples per batch; one call per sample would add 28. What may differ: each pass's own few calls,
    # spread over 64 batches of 4 but 8 batches of 32
    assert large <= small + 10, (small, large)


def test_an_unguarded_script_gets_told_about_the_main_guard(cache_path, tmp_path):
    # the feed workers start with forkserver and import the script's main module: without the guard it runs again
    # in each worker, which dies starting. The error says so, and closing the loader over it raises nothing more.
    loader = f"fastload.Loader({str(cache_path)!r}, batch_size=8, size=(32, 32), device='cpu', num_threads=1)"
    done = run_unguarded_script(tmp_path, loader)
    assert done.returncode != 0
    last = done.stderr[done.stderr.rindex("Traceback"):]  # the training process's own error, after the workers'
    assert "WorkerDied: fastload-feed-0" in last and "exit code 1" in last, last
    assert 'if __name__ == "__main__":' in last and "forkserver" in last, last
    assert "BrokenPipeError" not in done.stderr, done.stderr[-3000:]
