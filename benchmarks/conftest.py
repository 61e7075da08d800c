"""Shared benchmark fixtures: the real sample data beside the checkout (as in tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sample_coco() -> Path:
    """fruits_nuts_coco's annotations.json: 18 real 800x600 photos, 165 polygons (MIT)."""
    env = os.environ.get("FASTLOAD_SAMPLE_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data" / "fruits_nuts_coco"
    if not (root / "annotations.json").is_file():
        raise FileNotFoundError(
            f"sample data not found at {root}; check out the project with ../shared beside it "
            "or set FASTLOAD_SAMPLE_DATA to the fruits_nuts_coco folder"
        )
    return root / "annotations.json"
