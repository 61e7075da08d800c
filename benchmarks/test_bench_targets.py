"""Target-map speed: ``center_targets`` vs Panoptic-DeepLab's per-instance loop, and vs a per-pixel Python loop;
the batched torch twin ``render_targets`` vs the NumPy definition called per sample.

Run: ``python -m pytest benchmarks/test_bench_targets.py --benchmark-only --benchmark-columns=mean,stddev,rounds``
(the number in parentheses after each mean is its ratio to the fastest in the group: the speedup). Goal:
≥ 10x over the Panoptic-DeepLab loop at 512x512 with 20 instances, one core. Without ``--benchmark-only``
the plain ``test_*_agree`` checks run too: same inputs, identical outputs, no timing.

Groups:
* ``targets-512x512-20``: 20 overlapping ellipses (about a third of the pixels), sigma 8, stride 1;
* ``targets-real-800x600``: the 18 real sample rasters;
* ``targets-python-loop``: a 64x64 mask with 3 instances, the per-pixel Python loops users had before;
* ``render-48x512x512-20``: a batch of 48 such 512x512 masks, 20 instances each: heatmap, offsets and
  semantic weights by ``render_targets`` on torch CPU (``max_id`` 20: no read back; ``max_id`` None: the ids
  read back), on torch's default intra-op threads ``[all]`` and on one ``[1]`` (what the loaders use on the
  CPU), against ``center_targets`` + ``semantic_weights`` per sample; and on CUDA when there is one (the timed
  call synchronises). Stride 1 and 4.
* ``render-48x64x64``: the same at the size the loader benchmarks use (``benchmarks/cpu_proxy.py``): 48 masks
  of 64x64 with 2-6 instances, against ``sample_targets`` per sample (what the CPU loader's workers call).
* ``cpu-kernel-choice``: the loaders' ``render_batch_targets`` made to take each of its CPU branches (the twin on
  one intra-op thread, NumPy per sample), 48 masks from 64x64 to 256x256: where ``TWIN_ON_CPU_PIXELS`` comes from.

Ops per call and CPU time (process CPU, every thread) of the same workloads: ``benchmarks/render_targets_ops.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from fastload.build.coco import load_coco
from fastload.build.raster import rasterize_image
from fastload.targets import (
    center_targets,
    center_targets_per_instance,
    render_targets,
    sample_targets,
    semantic_weights,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def ellipses(height: int, width: int, n: int, seed: int) -> np.ndarray:
    """int32 (H, W) with ids 1..n, every one visible."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    while True:
        mask = np.zeros((height, width), dtype=np.int32)
        for inst_id in range(1, n + 1):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(0.03, 0.14, 2) * (height, width)
            mask[((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1] = inst_id
        if np.unique(mask).size == n + 1:
            return mask


def python_loop_targets(mask: np.ndarray, sigma: float = 8.0):
    """Per pixel in Python: sums for the centres, then every pixel against every instance's Gaussian."""
    height, width = mask.shape
    sums: dict[int, list[float]] = {}
    for i in range(height):
        for j in range(width):
            k = int(mask[i, j])
            if k:
                s = sums.setdefault(k, [0.0, 0.0, 0.0])
                s[0] += i
                s[1] += j
                s[2] += 1
    centres = {k: (s[0] / s[2], s[1] / s[2]) for k, s in sums.items()}
    radius = round(3 * sigma + 1)
    heat = np.zeros((height, width), dtype=np.float32)
    offset = np.zeros((2, height, width), dtype=np.float32)
    for i in range(height):
        for j in range(width):
            for cy, cx in centres.values():
                py, px = round(cy), round(cx)
                if abs(i - py) <= radius and abs(j - px) <= radius:
                    value = np.exp(-((i - py) ** 2 + (j - px) ** 2) / (2 * sigma**2))
                    heat[i, j] = max(heat[i, j], value)
            k = int(mask[i, j])
            if k:
                offset[0, i, j] = centres[k][0] - i
                offset[1, i, j] = centres[k][1] - j
    return heat, offset


@pytest.fixture(scope="module")
def mask512() -> np.ndarray:
    return ellipses(512, 512, 20, seed=0)


@pytest.fixture(scope="module")
def real_masks(sample_coco: Path) -> list[np.ndarray]:
    return [rasterize_image(record).instance for record in load_coco(sample_coco).images]


@pytest.mark.benchmark(group="targets-512x512-20")
def test_center_targets_512(benchmark, mask512):
    benchmark(center_targets, mask512)


@pytest.mark.benchmark(group="targets-512x512-20")
def test_panoptic_deeplab_loop_512(benchmark, mask512):
    benchmark(center_targets_per_instance, mask512, range(1, 21))


@pytest.mark.benchmark(group="targets-512x512-20")
def test_center_targets_512_stride4(benchmark, mask512):
    benchmark(center_targets, mask512, stride=4)


def each(fn, masks) -> None:
    # results are dropped one by one, as the cache builder does after encoding: keeping all 18 alive
    # would mostly measure the kernel handing out fresh pages
    for mask in masks:
        fn(mask)


@pytest.mark.benchmark(group="targets-real-800x600")
def test_center_targets_real(benchmark, real_masks):
    benchmark(each, center_targets, real_masks)


@pytest.mark.benchmark(group="targets-real-800x600")
def test_panoptic_deeplab_loop_real(benchmark, real_masks):
    benchmark(each, lambda m: center_targets_per_instance(m, range(1, int(m.max()) + 1)), real_masks)


@pytest.fixture(scope="module")
def mask64() -> np.ndarray:
    return ellipses(64, 64, 3, seed=1)


@pytest.mark.benchmark(group="targets-python-loop")
def test_python_loop_targets(benchmark, mask64):
    benchmark.pedantic(python_loop_targets, args=(mask64,), rounds=3, iterations=1)


@pytest.mark.benchmark(group="targets-python-loop")
def test_center_targets_small(benchmark, mask64):
    benchmark(center_targets, mask64)


@pytest.fixture(scope="module")
def batch48() -> np.ndarray:
    """int32 (48, 512, 512), 20 visible instances in each."""
    return np.stack([ellipses(512, 512, 20, seed=100 + n) for n in range(48)])


def definition_per_sample(masks: np.ndarray, stride: int) -> None:
    for mask in masks:
        center_targets(mask, stride=stride)
        semantic_weights(mask)


def render_on(device: str, masks: torch.Tensor, stride: int, max_id: int | None) -> None:
    render_targets(masks, stride=stride, max_id=max_id)
    if device == "cuda":
        torch.cuda.synchronize()


@contextmanager
def intra_op_threads(threads: str) -> Iterator[None]:
    """torch's intra-op threads: "all" (torch's default) or "1", as the loaders render on the CPU
    (`fastload.pipeline.batch`)."""
    before = torch.get_num_threads()
    if threads != "all":
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.benchmark(group="render-48x512x512-20")
@pytest.mark.parametrize("stride", [1, 4])
def test_definition_per_sample_48(benchmark, batch48, stride):
    benchmark(definition_per_sample, batch48, stride)


@pytest.mark.benchmark(group="render-48x512x512-20")
@pytest.mark.parametrize("stride", [1, 4])
@pytest.mark.parametrize("max_id", [20, None])
@pytest.mark.parametrize("threads", ["all", "1"])
def test_render_targets_cpu_48(benchmark, batch48, stride, max_id, threads):
    with intra_op_threads(threads):
        benchmark(render_on, "cpu", torch.from_numpy(batch48), stride, max_id)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.benchmark(group="render-48x512x512-20")
@pytest.mark.parametrize("stride", [1, 4])
def test_render_targets_cuda_48(benchmark, batch48, stride):
    masks = torch.from_numpy(batch48).to("cuda")
    render_on("cuda", masks, stride, 20)  # warm-up outside the timing: kernels, pinned host memory
    benchmark(render_on, "cuda", masks, stride, 20)


@pytest.fixture(scope="module")
def batch64() -> np.ndarray:
    """int32 (48, 64, 64), 2-6 visible instances in each."""
    rng = np.random.default_rng(0)
    return np.stack([ellipses(64, 64, int(rng.integers(2, 7)), seed=200 + n) for n in range(48)])


def sample_targets_each(masks: np.ndarray, stride: int) -> None:
    for mask in masks:
        sample_targets(mask, stride=stride)


@pytest.mark.benchmark(group="render-48x64x64")
@pytest.mark.parametrize("stride", [1, 4])
def test_sample_targets_per_sample_64(benchmark, batch64, stride):
    benchmark(sample_targets_each, batch64, stride)


@pytest.mark.benchmark(group="render-48x64x64")
@pytest.mark.parametrize("stride", [1, 4])
@pytest.mark.parametrize("max_id", [6, None])
@pytest.mark.parametrize("threads", ["all", "1"])
def test_render_targets_cpu_64(benchmark, batch64, stride, max_id, threads):
    with intra_op_threads(threads):
        benchmark(render_on, "cpu", torch.from_numpy(batch64), stride, max_id)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.benchmark(group="render-48x64x64")
@pytest.mark.parametrize("stride", [1, 4])
def test_render_targets_cuda_64(benchmark, batch64, stride):
    masks = torch.from_numpy(batch64).to("cuda")
    render_on("cuda", masks, stride, 6)
    benchmark(render_on, "cuda", masks, stride, 6)


# ------------------------------------------------------------------------------ quick, no timing


def test_512_workload_agrees(mask512):
    for ours, theirs in zip(center_targets(mask512), center_targets_per_instance(mask512, range(1, 21)), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_small_workload_agrees(mask64):
    heat, offset = center_targets(mask64)
    loop_heat, loop_offset = python_loop_targets(mask64)
    np.testing.assert_array_equal(heat, loop_heat)
    np.testing.assert_allclose(offset, loop_offset, atol=1e-5)  # float sums in a different order


def test_render_workload_64_agrees(batch64):
    for stride in (1, 4):
        out = render_targets(torch.from_numpy(batch64), max_id=6, stride=stride)
        for n, mask in enumerate(batch64):
            heat, offset, weight = sample_targets(mask, stride=stride)
            np.testing.assert_array_equal(out["heatmap"][n, 0].numpy(), heat)
            np.testing.assert_array_equal(out["offset"][n].numpy(), offset)
            np.testing.assert_array_equal(out["semantic_weight"][n].numpy(), weight)


def test_render_workload_agrees(batch48):
    masks = batch48[:8]
    out = render_targets(torch.from_numpy(masks), max_id=20, stride=4)
    for n, mask in enumerate(masks):
        heat, offset = center_targets(mask, stride=4)
        np.testing.assert_array_equal(out["heatmap"][n, 0].numpy(), heat)
        np.testing.assert_array_equal(out["offset"][n].numpy(), offset)
        np.testing.assert_array_equal(out["semantic_weight"][n].numpy(), semantic_weights(mask))


# --------------------------------------------------------------------- the loaders' choice of CPU kernel by size
# fastload.pipeline.batch.TWIN_ON_CPU_PIXELS: which kernel renders a batch on the CPU. The loaders' own
# render_batch_targets, made to take each branch: 48 masks of each side, 2 + side/16 instances each, stride 1.
CHOICE_SIDES = [64, 96, 128, 192, 256]


@pytest.fixture(scope="module", params=CHOICE_SIDES, ids=lambda side: f"{side}x{side}")
def choice_batch(request) -> tuple[torch.Tensor, torch.Tensor]:
    side = request.param
    instance = torch.from_numpy(np.stack([ellipses(side, side, 2 + side // 16, seed=300 + n) for n in range(48)]))
    return torch.where(instance > 0, 1, 0), instance


@pytest.mark.benchmark(group="cpu-kernel-choice")
@pytest.mark.parametrize("kernel", ["twin", "numpy"])
def test_loader_cpu_kernel(benchmark, choice_batch, kernel, monkeypatch):
    import fastload.pipeline.batch as batch_module
    from fastload.augment.config import TargetsConfig

    monkeypatch.setattr(batch_module, "TWIN_ON_CPU_PIXELS", 1 << 40 if kernel == "twin" else 0)
    semantic, instance = choice_batch
    benchmark(batch_module.render_batch_targets, semantic, instance, TargetsConfig(), max_id=int(instance.max()))
