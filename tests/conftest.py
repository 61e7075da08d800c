"""Shared fixtures: the real sample data fastload ships, and small caches built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def sample_root_path() -> Path:
    """The bundled fruits_nuts_coco folder (``fastload.sample_data()``), or ``$FASTLOAD_SAMPLE_DATA`` when set."""
    from fastload.data import sample_data

    env = os.environ.get("FASTLOAD_SAMPLE_DATA")
    root = Path(env) if env else sample_data()
    if not (root / "annotations.json").is_file():
        raise FileNotFoundError(f"FASTLOAD_SAMPLE_DATA={env!r} holds no annotations.json; unset it to use the bundled copy")
    return root


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """The fruits_nuts_coco folder: 18 real 800x600 photos, 165 real polygons (MIT)."""
    return sample_root_path()


@pytest.fixture(scope="session")
def sample_coco(sample_root: Path) -> Path:
    return sample_root / "annotations.json"


@pytest.fixture(scope="session")
def sample_images(sample_root: Path) -> Path:
    return sample_root / "images"


def pytest_collection_modifyitems(config, items):
    # tests marked cuda skip themselves where torch sees no GPU (CI has none)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing or broken: no GPU tests either way
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA; no GPU visible to torch")
    for item in items:
        if item.get_closest_marker("cuda") is not None:  # the marker, not a parameter id that says "cuda"
            item.add_marker(skip)


# ----------------------------------------------------------------------------------------------- caches
# built once per session; tests that change files copy them first (shutil.copytree)


@pytest.fixture(scope="session")
def sample_cache(tmp_path_factory, sample_coco: Path, sample_images: Path) -> Path:
    """The real sample data as a cache of 5-image shards (18 samples in 4 shards)."""
    from fastload.build.build import build_cache

    out = tmp_path_factory.mktemp("sample_cache") / "cache"
    build_cache(coco=sample_coco, images=sample_images, out=out, config={"samples_per_shard": 5}, progress=False)
    return out


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic COCO set: 24 textured 96x128 JPEGs with 2..6 polygons each, 4 sparse-id classes."""
    from fastload.build.synth import synth_coco

    root = tmp_path_factory.mktemp("synth")
    synth_coco(out=root, n=24, size=(96, 128), instances=(2, 6), seed=7, workers=1)
    return root


@pytest.fixture(scope="session")
def synth_cache(tmp_path_factory, synth_root: Path) -> Path:
    """``synth_root`` as a cache of 8-image shards (24 samples in 3 shards)."""
    from fastload.build.build import build_cache

    out = tmp_path_factory.mktemp("synth_cache") / "cache"
    build_cache(
        coco=synth_root / "annotations.json",
        images=synth_root / "images",
        out=out,
        config={"samples_per_shard": 8},
        progress=False,
    )
    return out
