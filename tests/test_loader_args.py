"""Invalid loader arguments fail at construction with a ValueError naming the argument and what is allowed."""

from __future__ import annotations

import json
import shutil

import pytest
from loader_kit import LOADER_KINDS, make_loader, make_synth_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_synth_cache(tmp_path_factory.mktemp("args"), n=6)


@pytest.mark.parametrize("kind", LOADER_KINDS)
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"batch_size": 2, "device": "tpu"}, "device must be one of ['auto', 'cuda', 'cpu']"),
        ({"batch_size": 2, "size": (0, 32)}, "size must be two positive integers"),
        ({"batch_size": 2, "size": (32,)}, "size must be two positive integers"),
        ({"batch_size": 2, "prefetch": 0}, "prefetch must be a positive integer"),
        ({"batch_size": 2, "rank": 2, "world_size": 2}, "rank must be an integer in 0..1"),
        ({"batch_size": 2, "world_size": 0}, "world_size must be a positive integer"),
        ({"batch_size": 2, "seed": -1}, "seed must be a non-negative integer"),
        ({"batch_size": 2, "augment": "sideways"}, "augment"),
    ],
)
def test_bad_arguments_name_themselves(kind, kwargs, message, cache):
    with pytest.raises(ValueError) as info:
        make_loader(kind, cache, **kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_missing_cache_is_a_value_error(kind, tmp_path):
    with pytest.raises(ValueError, match="cache: .* does not exist"):
        make_loader(kind, tmp_path / "nowhere", batch_size=2)


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_cache_from_a_newer_fastload_is_refused(kind, cache, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(cache, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["schema_version"] = 999
    (newer / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="schema"):
        make_loader(kind, newer, batch_size=2)


def test_cuda_without_a_gpu_says_so(cache):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ValueError, match="device='cuda'"):
        make_loader("dali", cache, batch_size=2, device="cuda")
