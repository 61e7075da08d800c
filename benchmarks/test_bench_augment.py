"""One augmentation batch: the CPU reference kernels vs the DALI graph (on the CPU here; on the GPU with CUDA).

Run: ``python -m pytest benchmarks/test_bench_augment.py --benchmark-only --benchmark-columns=mean,stddev,ops``.
Each round turns one batch plan (8 samples, default augmentation, 512x512 output) into a batch dict: decode
the cached JPEG and the mask PNGs, warp image and maps, photometric ops, normalise. ``extra_info`` holds
``samples_per_s``. Data: 16 synthetic 640x480 images (so every sample is resized as well as augmented).

Rows (group ``augment-batch-512x8``):
* ``cpu-reference``: ``OpencvBackend`` in the calling process (one core; the loader adds worker processes)
* ``dali-cpu-1thread`` / ``dali-cpu-Nthreads``: ``DaliBackend`` on the CPU with 1 and all usable threads
* ``dali-cuda``: ``DaliBackend`` on the GPU (skipped without CUDA)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastload.augment.config import load_augment
from fastload.augment.params import draw_params
from fastload.build.build import build_cache
from fastload.build.synth import synth_coco
from fastload.cores import usable_cores
from fastload.pipeline.plan import BatchPlan
from fastload.samples import open_cache

SIZE = (512, 512)
BATCH = 8


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("augment-bench")
    synth_coco(out=root / "data", n=16, size=(480, 640), instances=(4, 12), seed=0)
    build_cache(
        coco=root / "data/annotations.json", images=root / "data/images", out=root / "cache", progress=False
    )
    ds = open_cache(root / "cache")
    yield ds
    ds.close()


def _plan(n: int, cfg) -> BatchPlan:
    indices = np.arange(n, dtype=np.int64)
    return BatchPlan(
        indices=indices, params=tuple(draw_params(0, 0, int(i), cfg) for i in indices)
    )


def _backend(kind: str, cache, cfg):
    if kind == "cpu-reference":
        from fastload.pipeline.opencv import OpencvBackend

        return OpencvBackend(
            cache=cache,
            out_size=SIZE,
            augment=cfg,
            device=torch.device("cpu"),
            batch_size=BATCH,
            num_workers=0,
            prefetch=1,
        )
    from fastload.pipeline.dali import DaliBackend

    cuda = kind == "dali-cuda"
    if cuda and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    threads = 1 if kind.endswith("1thread") else usable_cores()
    return DaliBackend(
        cache=cache,
        out_size=SIZE,
        augment=cfg,
        device=f"cuda:{torch.cuda.current_device()}" if cuda else "cpu",
        batch_size=BATCH,
        num_threads=threads,
        prefetch=1,
    )


@pytest.mark.parametrize("kind", ["cpu-reference", "dali-cpu-1thread", "dali-cpu-Nthreads", "dali-cuda"])
def test_augment_batch(benchmark, cache, kind):
    cfg = load_augment("default")
    plan = _plan(BATCH, cfg)
    backend = _backend(kind, cache, cfg)
    cuda = kind == "dali-cuda"

    def one_batch():
        batch = next(iter(backend.iterate(iter([plan]))))
        if cuda:
            torch.cuda.synchronize()
        return batch

    try:
        batch = one_batch()  # builds the DALI pipeline outside the timing
        assert batch["image"].shape == (BATCH, 3, *SIZE)
        benchmark.group = f"augment-batch-{SIZE[0]}x{BATCH}"
        benchmark.pedantic(one_batch, rounds=5, iterations=1, warmup_rounds=1)
        benchmark.extra_info["samples_per_s"] = BATCH / benchmark.stats.stats.mean
        benchmark.extra_info["threads"] = getattr(backend, "num_threads", 1)
    finally:
        backend.close()
