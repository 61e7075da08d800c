"""The DALI graph on CUDA: the fidelity checks of test_fidelity.py with ``device="cuda"``, and what only a GPU
shows (the LZ4 labels inflated on the device, targets rendered there, tensors on the device, torch's current
stream, no host synchronisation in our code). Skipped without a GPU (tests/conftest.py).

Tolerances are test_fidelity.py's: DALI's GPU kernels round half to even where its CPU kernels round half
away from zero and may contract multiply-adds, so images and label edges can differ from the reference at
exact ties; the checks are IoU / PSNR / share-based, never bit equality, except for flips at the native
size, which map pixels onto pixels exactly on any device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_dali_pipeline import MemCache, plan
from test_fidelity import (
    GEOMETRY,
    MAX_REACH,
    PHOTOMETRIC,
    check_flip_is_exact,
    check_geometry,
    check_heatmap,
    check_image_psnr,
    check_label_subset,
    check_mask_iou,
    check_offsets,
    coco_records,
    run_pairs,
)

from fastload.augment.config import AugmentConfig
from fastload.augment.params import identity_params
from fastload.errors import CacheError
from fastload.pipeline.plan import BATCH_KEYS, BatchPlan
from fastload.targets import center_targets, semantic_weights

pytest.importorskip("nvidia.dali")
pytestmark = pytest.mark.cuda


def _device() -> str:
    return f"cuda:{torch.cuda.current_device()}"


def gpu_backend(cache=None, **kwargs):
    from fastload.pipeline.dali import DaliBackend

    kwargs.setdefault("augment", AugmentConfig.default())
    kwargs.setdefault("batch_size", 3)
    kwargs.setdefault("prefetch", 2)
    return DaliBackend(
        cache=cache if cache is not None else MemCache(),
        out_size=kwargs.pop("out_size", (32, 48)),
        device=_device(),
        num_threads=2,
        **kwargs,
    )


@pytest.fixture(scope="module")
def cache(sample_cache):
    from fastload.samples import open_cache

    return open_cache(sample_cache)


@pytest.fixture(scope="module")
def cuda_pairs(cache):
    pairs = run_pairs(cache, GEOMETRY, device=_device())
    return {**pairs, **run_pairs(cache, PHOTOMETRIC, device=_device(), step=2)}


# ------------------------------------------------------------------------------------------- fidelity


@pytest.mark.parametrize("draw", [*GEOMETRY, *PHOTOMETRIC])
def test_cuda_masks_match_the_reference(cuda_pairs, draw):
    assert check_mask_iou(cuda_pairs[draw]) >= 0.99
    check_label_subset(cuda_pairs[draw])


@pytest.mark.parametrize("draw", [*GEOMETRY, *PHOTOMETRIC])
def test_cuda_image_matches_the_reference(cuda_pairs, draw):
    assert check_image_psnr(cuda_pairs[draw], 40.0) >= 40.0


@pytest.mark.parametrize("draw", [*GEOMETRY, "default_draws"])
def test_cuda_target_maps_match_the_reference(cuda_pairs, draw):
    check_offsets(cuda_pairs[draw])
    check_heatmap(cuda_pairs[draw])


def test_cuda_flip_only_is_exact_for_masks(cache):
    check_flip_is_exact(cache, device=_device())


def test_cuda_instances_follow_their_polygons(cuda_pairs, sample_coco):
    pairs = [p for draw in GEOMETRY for p in cuda_pairs[draw]]
    worst, weighted, farthest = check_geometry(pairs, coco_records(sample_coco))
    assert worst >= 0.95 and weighted >= 0.985 and farthest <= MAX_REACH


# --------------------------------------------------------------------------------------- device behaviour


def test_cuda_labels_inflate_exactly_on_the_device():
    # identity at the native size: the warps copy, so the outputs are the stored masks, decoded by nvCOMP
    cache = MemCache(n=4)
    h, w = cache.image_size(0)
    indices = [i for i in range(4) if cache.image_size(i) == (h, w)]
    be = gpu_backend(cache, augment=AugmentConfig.none(), out_size=(h, w), batch_size=len(indices))
    (batch,) = be.iterate(iter([BatchPlan(np.array(indices), tuple(identity_params() for _ in indices))]))
    for j, i in enumerate(indices):
        a = cache.arrays(i)
        assert np.array_equal(batch["semantic"][j].cpu().numpy(), a["semantic"])
        assert np.array_equal(batch["instance"][j].cpu().numpy(), a["instance"])


def test_cuda_targets_are_the_definition_of_the_devices_own_masks(cuda_pairs):
    for p in cuda_pairs["default_draws"]:
        heat, offset = center_targets(p.dali["instance"])
        assert np.array_equal(p.dali["heatmap"][0], heat) and np.array_equal(p.dali["offset"], offset)


def test_cuda_batches_live_on_the_device_with_the_contract_layout():
    be = gpu_backend()
    empty = BatchPlan(np.zeros(0, np.int64), ())
    batches = list(be.iterate(iter([plan([0, 1, 2]), empty, plan([3])])))
    assert [len(b["index"]) for b in batches] == [3, 0, 1]
    device = torch.device(_device())
    for b in batches:
        assert tuple(b) == BATCH_KEYS
        assert all(t.device == device for t in b.values())
    assert batches[0]["image"].shape == (3, 3, 32, 48) and batches[0]["image"].dtype == torch.float32
    assert batches[0]["semantic"].dtype == torch.int64 and batches[0]["instance"].dtype == torch.int32
    assert batches[0]["index"].tolist() == [0, 1, 2]


def test_cuda_and_cpu_graphs_agree():
    # the same graph on both devices; they may differ only at rounding ties (see the module doc)
    from test_dali_pipeline import backend as cpu_backend

    plans = [plan([0, 1, 2], epoch=5), plan([3, 4])]
    on_gpu = list(gpu_backend().iterate(iter(plans)))
    on_cpu = list(cpu_backend().iterate(iter(plans)))
    std = torch.tensor(AugmentConfig.default().normalize.std)[:, None, None]
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert torch.equal(g["index"].cpu(), c["index"])
        for key in ("semantic", "instance"):
            agree = (g[key].cpu() == c[key]).float().mean().item()
            assert agree >= 0.99, f"{key}: only {agree:.4f} of values agree"
        grey = (g["image"].cpu() - c["image"]).abs() * 255 * std
        assert (grey > 1.01).float().mean().item() < 0.01
        close = ((g["offset"].cpu() - c["offset"]).abs() <= 1e-3).float().mean().item()
        assert close >= 0.99, f"offsets: only {close:.4f} agree"
        assert (g["heatmap"].cpu() - c["heatmap"]).abs().max().item() <= 0.01
        own = semantic_weights(g["instance"][0].cpu().numpy())
        assert np.array_equal(g["semantic_weight"][0].cpu().numpy(), own)


def test_cuda_outputs_are_ordered_on_a_side_stream():
    # the batch must be complete for work queued on whichever stream is current when it is fetched
    plans = [plan([0, 1, 2]), plan([4, 5])]
    reference = [{k: v.cpu() for k, v in b.items()} for b in gpu_backend().iterate(iter(plans))]
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        sums = [
            {k: v.double().sum() if v.is_floating_point() else v.sum() for k, v in b.items()}
            for b in gpu_backend().iterate(iter(plans))
        ]
    side.synchronize()
    for ref, got in zip(reference, sums, strict=True):
        for key in BATCH_KEYS:
            expected = ref[key].double().sum() if ref[key].is_floating_point() else ref[key].sum()
            assert torch.allclose(got[key].cpu().to(expected.dtype), expected), key


def test_cuda_steady_state_has_no_host_synchronisation_in_our_code():
    be = gpu_backend(batch_size=3, prefetch=2)
    it = be.iterate(iter([plan([i % 7, (i + 1) % 7, (i + 2) % 7]) for i in range(6)]))
    next(it)  # the first batch builds the pipeline and prefetches
    torch.cuda.set_sync_debug_mode("error")  # torch raises on any synchronising call it makes
    try:
        for _ in range(4):
            next(it)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    list(it)


def test_cuda_abandoned_pass_and_named_errors():
    be = gpu_backend(MemCache(corrupt=(4,)), prefetch=3)
    first = be.iterate(iter([plan([0, 1]), plan([2, 3]), plan([5, 6])] * 2))
    next(first)
    first.close()
    assert [b["index"].tolist() for b in be.iterate(iter([plan([6]), plan([2])]))] == [[6], [2]]
    with pytest.raises(CacheError, match=r"shard-00000\.tar:00000004"):
        list(be.iterate(iter([plan([3, 4])])))
    assert [b["index"].tolist() for b in be.iterate(iter([plan([1])]))] == [[1]]
