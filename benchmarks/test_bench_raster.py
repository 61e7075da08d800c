"""Rasterisation speed: fastload's scanline fill vs pycocotools' annToMask, and vs a per-pixel Python loop.

Run: ``python -m pytest benchmarks/test_bench_raster.py --benchmark-only --benchmark-columns=mean,stddev,rounds``
(the number in parentheses after each mean is its ratio to the fastest in the group). Without
``--benchmark-only`` the plain ``test_*_agree`` checks run too: same inputs, results compared, no timing.

Groups:
* ``raster-real``: all 165 polygons of the 18 real 800x600 photos, one full-size mask per instance
  (fastload ``rasterize_instance`` vs pycocotools ``annToMask``), plus fastload's ``rasterize_image``
  composing the instance + semantic maps of all 18 images (what the cache builder calls).
* ``raster-python-loop``: a 96x64 image with 4 polygons, the per-pixel crossing-number Python loop users
  had before vs ``rasterize_image``.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from fastload.coco import ImageRecord, Instance, load_coco
from fastload.raster import rasterize_image, rasterize_instance

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def real(sample_coco: Path):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(sample_coco))
    return load_coco(sample_coco), coco


# Each mask is dropped as soon as it is made (the cache builder encodes and drops): keeping 165 full-size
# masks alive would mostly measure the kernel handing out fresh pages, on both sides.


def fastload_instances(dataset) -> int:
    return sum(int(rasterize_instance(i, r.height, r.width)[0, 0]) + 1 for r in dataset.images for i in r.instances)


def pycocotools_instances(coco: COCO) -> int:
    return sum(int(coco.annToMask(ann)[0, 0]) + 1 for ann in coco.dataset["annotations"])


def fastload_images(dataset) -> int:
    return sum(len(rasterize_image(record).instances) for record in dataset.images)


@pytest.mark.benchmark(group="raster-real")
def test_fastload_rasterize_instance(benchmark, real):
    dataset, _ = real
    assert benchmark(fastload_instances, dataset) == 165


@pytest.mark.benchmark(group="raster-real")
def test_pycocotools_ann_to_mask(benchmark, real):
    _, coco = real
    assert benchmark(pycocotools_instances, coco) == 165


@pytest.mark.benchmark(group="raster-real")
def test_fastload_rasterize_image_all_18(benchmark, real):
    dataset, _ = real
    assert benchmark(fastload_images, dataset) == 165


# -------------------------------------------------------------------------------- the "before" loop


def small_record() -> ImageRecord:
    rng = np.random.default_rng(0)
    instances = []
    for k in range(4):
        angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
        radii = rng.uniform(8, 24, 12)
        centre = rng.uniform([20, 15], [76, 49])
        points = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
        instances.append(Instance(k + 1, 1, 1, False, (points,), None, 0.0))
    return ImageRecord(1, "small.png", 64, 96, tuple(instances))


def python_loop_rasterize(record: ImageRecord) -> np.ndarray:
    """Per pixel, per edge: the crossing-number test in Python, later instances on top."""
    out = np.zeros((record.height, record.width), dtype=np.int32)
    for k, inst in enumerate(record.instances):
        ring = inst.polygons[0].tolist()
        for i in range(record.height):
            for j in range(record.width):
                x, y, inside = j + 0.5, i + 0.5, False
                for e in range(len(ring)):
                    (x0, y0), (x1, y1) = ring[e], ring[(e + 1) % len(ring)]
                    if (y0 > y) != (y1 > y) and x < (x1 - x0) * (y - y0) / (y1 - y0) + x0:
                        inside = not inside
                if inside:
                    out[i, j] = k + 1
    return out


@pytest.mark.benchmark(group="raster-python-loop")
def test_python_loop_rasterize(benchmark):
    benchmark.pedantic(python_loop_rasterize, args=(small_record(),), rounds=3, iterations=1)


@pytest.mark.benchmark(group="raster-python-loop")
def test_fastload_rasterize_small(benchmark):
    benchmark(rasterize_image, small_record())


# ------------------------------------------------------------------------------ quick, no timing


def test_real_workload_agrees(real):
    dataset, coco = real
    for record in dataset.images:
        for inst in record.instances:
            ours = rasterize_instance(inst, record.height, record.width)
            theirs = coco.annToMask(coco.anns[inst.annotation_id]).astype(bool)
            assert np.count_nonzero(ours & theirs) / np.count_nonzero(ours | theirs) >= 0.99


def test_small_workload_agrees():
    record = small_record()
    loop = python_loop_rasterize(record)
    fast = rasterize_image(record)
    # same pixels covered; the overlap order differs (the loop paints later on top, fastload smaller on top)
    np.testing.assert_array_equal(loop > 0, fast.instance > 0)
