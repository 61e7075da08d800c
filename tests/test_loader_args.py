"""Invalid loader arguments fail at construction with a ValueError naming the argument and what is allowed."""

from __future__ import annotations

import json
import shutil

import pytest
from loader_kit import LOADER_KINDS, make_loader, make_synth_cache

from fastload.augment.config import AugmentConfig, TargetsConfig

STRIDE_4 = AugmentConfig(targets=TargetsConfig(stride=4))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_synth_cache(tmp_path_factory.mktemp("args"), n=6)


@pytest.mark.parametrize("kind", LOADER_KINDS)
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"batch_size": 2, "device": "tpu"}, "device must be one of ['auto', 'cuda', 'cuda:N', 'cpu']"),
        ({"batch_size": 2, "device": "cuda:x"}, "device must be one of"),
        ({"batch_size": 2, "io_threads": 0}, "io_threads must be a positive integer"),
        ({"batch_size": 2, "size": (30, 32), "augment": STRIDE_4}, "divisible by the targets' stride 4"),
        ({"batch_size": 2, "size": (0, 32)}, "size must be two positive integers"),
        ({"batch_size": 2, "size": (32,)}, "size must be two positive integers"),
        ({"batch_size": 2, "prefetch": 0}, "prefetch must be a positive integer"),
        ({"batch_size": 2, "rank": 2, "world_size": 2}, "rank must be an integer in 0..1"),
        ({"batch_size": 2, "world_size": 0}, "world_size must be a positive integer"),
        ({"batch_size": 2, "seed": -1}, "seed must be a non-negative integer"),
        ({"batch_size": 2, "augment": "sideways"}, "augment"),
        # runaways stopped before anything is allocated (issue 19): each used to be a MemoryError or bad_alloc
        ({"batch_size": 10**6}, "batch_size must be a positive integer (1, 2, ... up to 65536), got 1000000"),
        ({"batch_size": 2, "size": (20000, 20000)}, "at most 16384 per side and 64 MP"),
        ({"batch_size": 2, "size": (8192, 16384)}, "size = (8192, 16384) is larger than fastload allows"),
        ({"batch_size": 4096, "size": (1024, 1024)}, "above the 1073741824 (2^30, ~40 GiB of finished batch)"),
        ({"batch_size": 2, "prefetch": 10**4}, "prefetch must be a positive integer (1, 2, ... up to 64)"),
        ({"batch_size": 2, "num_threads": 10**5}, "num_threads must be a positive integer (1, 2, ... up to 1024)"),
        ({"batch_size": 2, "io_threads": 10**5}, "io_threads must be a positive integer (1, 2, ... up to 1024)"),
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
    with pytest.raises(ValueError, match="device='cuda:1'"):
        make_loader("cpu", cache, batch_size=2, device="cuda:1")


# --- which GPU: torchrun gives every rank of a node all its GPUs; each must take its own -----------------------


@pytest.fixture
def four_gpus(monkeypatch):
    """torch as it looks on a 4-GPU node, without one: the device choice is pure bookkeeping."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_under_torchrun_the_default_gpu_is_local_rank(four_gpus, monkeypatch, device):
    import torch

    from fastload.pipeline.devices import resolve_device

    assert resolve_device(device) == torch.device("cuda", 0)  # no torchrun: torch's current device
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device(device) == torch.device("cuda", 3)


def test_an_explicit_gpu_wins_over_local_rank(four_gpus, monkeypatch):
    import torch

    from fastload.pipeline.devices import resolve_device

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 2)) == torch.device("cuda", 2)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"cuda:0..cuda:3"):
        resolve_device("cuda:4")


def test_one_visible_gpu_per_process_is_cuda_0_whatever_the_local_rank(four_gpus, monkeypatch):
    import torch

    from fastload.pipeline.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # CUDA_VISIBLE_DEVICES set per rank
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_a_local_rank_beyond_the_visible_gpus_is_named(four_gpus, monkeypatch):
    from fastload.pipeline.devices import resolve_device

    monkeypatch.setenv("LOCAL_RANK", "6")
    with pytest.raises(ValueError, match="LOCAL_RANK=6 but torch sees 4"):
        resolve_device("auto")
    monkeypatch.setenv("LOCAL_RANK", "one")
    with pytest.raises(ValueError, match="LOCAL_RANK='one' is not an integer"):
        resolve_device("cuda")


def test_both_loaders_hand_their_backend_the_chosen_gpu(four_gpus, monkeypatch, cache):
    import fastload.pipeline.dali as dali_backend
    import fastload.pipeline.opencv as cpu_backend

    seen = {}

    def record(name):
        def fake(**kwargs):
            seen[name] = kwargs
            raise RuntimeError("stop here: no GPU to build on")

        return fake

    monkeypatch.setattr(dali_backend, "DaliBackend", record("dali"))
    monkeypatch.setattr(cpu_backend, "OpencvBackend", record("cpu"))
    monkeypatch.setenv("LOCAL_RANK", "2")
    for kind in LOADER_KINDS:
        loader = make_loader(kind, cache, batch_size=2, device="auto")
        assert str(loader.device) == "cuda:2"
        with pytest.raises(RuntimeError, match="stop here"):
            next(iter(loader))
    assert str(seen["dali"]["device"]) == "cuda:2"  # resolved once, by the shell
    assert str(seen["cpu"]["device"]) == "cuda:2"


def test_auto_without_a_gpu_uses_the_faster_cpu_engine_and_says_so(cache, caplog, monkeypatch):
    import torch

    import fastload.pipeline.devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(fastload.pipeline.devices, "_noticed", set())
    with caplog.at_level("WARNING", logger="fastload"):  # said when the engine is chosen: at construction
        loader = make_loader("dali", cache, batch_size=2, device="auto", num_threads=1)
    assert loader.backend == "opencv-workers"
    batch = next(iter(loader))
    assert "no CUDA GPU is visible" in caplog.text and "engine='dali'" in caplog.text
    assert tuple(batch)[:2] == ("image", "semantic")
    loader.close()
    assert make_loader("dali", cache, batch_size=2, device="cpu").backend == "dali-cpu"  # asked for: DALI
    assert make_loader("cpu", cache, batch_size=2).backend == "opencv-workers"


@pytest.mark.parametrize(
    ("kind", "engine", "device", "backend"),
    [
        ("dali", "dali", "auto", "dali-cpu"),  # DALI's graph on the CPU, whatever the machine
        ("dali", "opencv", "cpu", "opencv-workers"),  # the OpenCV engine, asked for by name
        ("dali", "auto", "cpu", "dali-cpu"),  # an explicit CPU device has always meant DALI's graph
        ("cpu", "opencv", "cpu", "opencv-workers"),
    ],
)
def test_the_engine_is_chosen_by_name(cache, monkeypatch, kind, engine, device, backend):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert make_loader(kind, cache, batch_size=2, device=device, engine=engine).backend == backend


@pytest.mark.parametrize(("kind", "engine", "message"), [("dali", "kornia", "engine must be one of"), ("cpu", "dali", "must be 'opencv'")])
def test_an_engine_that_cannot_run_is_named(cache, kind, engine, message):
    with pytest.raises(ValueError, match=message):
        make_loader(kind, cache, batch_size=2, engine=engine)
