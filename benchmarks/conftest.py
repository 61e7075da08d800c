"""Shared benchmark fixtures: the real sample data fastload ships (as in tests/conftest.py)."""

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
