"""Shared fixtures: the real sample data beside the checkout, and small caches built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _sample_root() -> Path:
    # CI clones the repo with ../shared beside it; FASTLOAD_SAMPLE_DATA points elsewhere when needed
    env = os.environ.get("FASTLOAD_SAMPLE_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "fruits_nuts_coco"


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """The fruits_nuts_coco folder: 18 real 800x600 photos, 165 real polygons (MIT)."""
    root = _sample_root()
    if not (root / "annotations.json").is_file():
        raise FileNotFoundError(
            f"sample data not found at {root}; check out the project with ../shared beside it "
            "or set FASTLOAD_SAMPLE_DATA to the fruits_nuts_coco folder"
        )
    return root


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
        if "cuda" in item.keywords:
            item.add_marker(skip)
