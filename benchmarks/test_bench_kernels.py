"""Per-kernel pairs, briefly: each stage of the CpuLoader's per-sample work beside its Albumentations equivalent.

Run: ``python -m pytest benchmarks/test_bench_kernels.py --benchmark-only --benchmark-columns=mean,stddev,rounds``.
One group per stage (``kernel-<stage>``), rows ``fastload`` and ``albumentations`` (skipped without
albumentations), on one synthetic 512x512 sample with every augmentation on, one OpenCV thread and the
CpuLoader worker's allocator setting. The stages and their inputs are those of ``benchmarks/profile_kernels.py``,
which prints the whole table (thread CPU time, medians over several samples) and says how the pairs differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import profile_kernels as pk  # noqa: E402

SIZE = (512, 512)
STAGES = [
    "warp image",
    "warp 2 masks, rotated",
    "warp 2 masks, no rotation",
    "hue/saturation",
    "brightness/contrast",
    "shadow",
    "noise",
    "targets (heat, offsets, weights)",
]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    import cv2

    from fastload.procs import keep_freed_memory

    cv2.setNumThreads(1)
    keep_freed_memory()
    root = pk.synthetic_cache(tmp_path_factory.mktemp("kernels"), 1, SIZE)
    cfg, samples = pk.load_samples(root, 1)
    return cfg, samples[0]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("side", ["fastload", "albumentations"])
def test_kernel(benchmark, sample, stage, side):
    cfg, s = sample
    if side == "albumentations":
        pytest.importorskip("albumentations")
        stages = pk.peer_stages(s, cfg, SIZE)
    else:
        stages = pk.fastload_stages(s, cfg, SIZE)
    fn, what = stages[stage]
    benchmark.group = f"kernel-{stage}"
    benchmark.extra_info["what"] = what
    benchmark.pedantic(fn, rounds=20, iterations=1, warmup_rounds=2)
