"""One contract for both loaders: what a training loop may rely on, checked on the CPU for Loader and CpuLoader.

The DALI loader runs its real graph here with device="cpu"; tests/test_dali_gpu.py repeats the checks on CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loader_kit import LOADER_KINDS, assert_batches_equal, epoch_indices, make_loader, make_synth_cache

from fastload.pipeline.plan import BATCH_KEYS

N_SAMPLES = 23  # deliberately not a multiple of any batch size or world size used below


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_synth_cache(tmp_path_factory.mktemp("contract"), n=N_SAMPLES)


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_batch_keys_dtypes_shapes_and_device(kind, cache):
    loader = make_loader(kind, cache, batch_size=4, size=(32, 48), augment="default")
    batch = next(iter(loader))
    assert tuple(batch) == BATCH_KEYS
    expected = {
        "image": (torch.float32, (4, 3, 32, 48)),
        "semantic": (torch.int64, (4, 32, 48)),
        "instance": (torch.int32, (4, 32, 48)),
        "heatmap": (torch.float32, (4, 1, 32, 48)),
        "offset": (torch.float32, (4, 2, 32, 48)),
        "semantic_weight": (torch.float32, (4, 32, 48)),
        "center_weight": (torch.float32, (4, 1, 32, 48)),
        "offset_weight": (torch.float32, (4, 1, 32, 48)),
        "index": (torch.int64, (4,)),
    }
    for key, (dtype, shape) in expected.items():
        assert batch[key].dtype == dtype, key
        assert tuple(batch[key].shape) == shape, key
        assert batch[key].device == loader.device, key
    labels = set(torch.unique(batch["semantic"]).tolist())
    assert labels <= set(range(0, 5)) | {255}  # synthetic data has 4 classes; 255 = ignore / outside
    assert torch.all(batch["heatmap"] >= 0) and torch.all(batch["heatmap"] <= 1.0 + 1e-6)
    assert set(torch.unique(batch["semantic_weight"]).tolist()) <= {1.0, 3.0}  # small synthetic instances: 3
    loader.close()


@pytest.mark.parametrize("kind", LOADER_KINDS)
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_every_sample_exactly_once_per_epoch_across_ranks(kind, world_size, cache):
    loaders = [
        make_loader(kind, cache, batch_size=3, rank=r, world_size=world_size, seed=7) for r in range(world_size)
    ]
    assert len({len(ld) for ld in loaders}) == 1  # same number of steps on every rank
    orders = []
    for _ in range(3):
        per_rank = [epoch_indices(ld) for ld in loaders]
        assert all(len(batches) == len(loaders[0]) for batches in per_rank)
        seen = np.concatenate([b for batches in per_rank for b in batches])
        assert np.array_equal(np.sort(seen), np.arange(N_SAMPLES)), "a sample was lost or repeated"
        orders.append(np.concatenate(per_rank[0]))
    assert not np.array_equal(orders[0], orders[1]), "each pass must reshuffle"
    for ld in loaders:
        ld.close()


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_same_seed_same_batches_new_epoch_new_order(kind, cache):
    a = make_loader(kind, cache, batch_size=5, seed=11, augment="default")
    b = make_loader(kind, cache, batch_size=5, seed=11, augment="default")
    first_a, first_b = list(a), list(b)
    assert_batches_equal(first_a, first_b)  # same seed: same samples, same augmentation, bit for bit
    second_a = list(a)
    order_0 = torch.cat([x["index"] for x in first_a])
    order_1 = torch.cat([x["index"] for x in second_a])
    assert not torch.equal(order_0, order_1)
    other = make_loader(kind, cache, batch_size=5, seed=12, augment="default")
    assert not torch.equal(order_0, torch.cat([x["index"] for x in other]))
    for ld in (a, b, other):
        ld.close()


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_set_epoch_selects_the_epoch(kind, cache):
    a = make_loader(kind, cache, batch_size=8, seed=1)
    list(a), list(a)  # two full passes: epochs 0 and 1
    third = epoch_indices(a)
    b = make_loader(kind, cache, batch_size=8, seed=1)
    b.set_epoch(2)
    assert [x.tolist() for x in epoch_indices(b)] == [x.tolist() for x in third]
    b.set_epoch(2)  # DDP habit: set_epoch(e) before every pass gives epoch e again
    assert [x.tolist() for x in epoch_indices(b)] == [x.tolist() for x in third]
    a.close(), b.close()


@pytest.mark.parametrize("kind", LOADER_KINDS)
@pytest.mark.parametrize("drop_last", [False, True])
def test_len_and_drop_last(kind, drop_last, cache):
    loader = make_loader(kind, cache, batch_size=5, shuffle=False, drop_last=drop_last)
    sizes = [len(b) for b in epoch_indices(loader)]
    assert len(sizes) == len(loader)
    assert sizes == ([5, 5, 5, 5] if drop_last else [5, 5, 5, 5, 3])
    loader.close()


def test_cpu_loader_with_worker_processes_matches_in_process(cache):
    inproc = make_loader("cpu", cache, batch_size=4, seed=3, augment="default", num_threads=0)
    workers = make_loader("cpu", cache, batch_size=4, seed=3, augment="default", num_threads=2)
    assert_batches_equal(list(inproc), list(workers))
    workers.close()


def test_both_loaders_yield_the_same_samples_in_the_same_order(cache):
    cpu = make_loader("cpu", cache, batch_size=4, seed=5)
    dali = make_loader("dali", cache, batch_size=4, seed=5)
    for x, y in zip(cpu, dali, strict=True):
        assert torch.equal(x["index"], y["index"])
    dali.close()
