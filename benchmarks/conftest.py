"""Shared benchmark fixtures: the real sample data fastload ships (as in tests/conftest.py), and a cache of it and
of synthetic 512x512 images for the cache benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def sample_root_path() -> Path:
    """The bundled fruits_nuts_coco folder (``fastload.sample_data()``), or ``$FASTLOAD_SAMPLE_DATA`` when set."""
    from fastload.data import sample_data

    env = os.environ.get("FASTLOAD_SAMPLE_DATA")
    return Path(env) if env else sample_data()


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """The fruits_nuts_coco folder: 18 real 800x600 photos, 165 polygons (MIT)."""
    return sample_root_path()


@pytest.fixture(scope="session")
def sample_coco() -> Path:
    """fruits_nuts_coco's annotations.json: 18 real 800x600 photos, 165 polygons (MIT)."""
    return sample_root_path() / "annotations.json"


@pytest.fixture(scope="module", params=["real-800x600", "synth-512x512"])
def cache(request, tmp_path_factory, sample_root):
    """An opened cache of the 18 sample photos, or of 32 synthetic 512x512 images (3-12 instances each)."""
    from fastload.build.build import build_cache
    from fastload.build.synth import synth_coco
    from fastload.samples import open_cache

    root = tmp_path_factory.mktemp(request.param)
    if request.param.startswith("real"):
        data = sample_root
    else:
        data = root / "data"
        synth_coco(out=data, n=32, size=(512, 512), instances=(3, 12), seed=0)
    build_cache(coco=data / "annotations.json", images=data / "images", out=root / "cache", progress=False)
    ds = open_cache(root / "cache")
    yield ds
    ds.close()
