"""Target maps vs slow, obviously-correct per-instance loops; semantic weights; the batched torch twin vs the
NumPy definition; instance tables; batching tables."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastload.augment.config import AugmentConfig, GeometryConfig, RandomRange, Translation
from fastload.augment.params import affine_matrix, draw_params
from fastload.augment.reference import warp_mask
from fastload.build.coco import load_coco
from fastload.build.raster import rasterize_image
from fastload.build.tables import instance_table
from fastload.errors import ConfigError
from fastload.samples import open_cache
from fastload.targets import (
    batch_tables,
    center_targets,
    center_targets_per_instance,
    instance_centres,
    render_targets,
    sample_targets,
    semantic_weights,
)

# pycocotools' decode trips NumPy 2's __array__(copy=...) deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def definition_loop(mask: np.ndarray, sigma: float, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """The maps straight from the definitions in docs/design.md, one instance at a time."""
    height, width = mask.shape
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    u, v = np.mgrid[:out_h, :out_w]
    sampled = mask[np.minimum(u * stride + stride // 2, height - 1), np.minimum(v * stride + stride // 2, width - 1)]
    radius = round(3 * sigma + 1)
    heat = np.zeros((out_h, out_w), dtype=np.float32)
    offset = np.zeros((2, out_h, out_w), dtype=np.float32)
    for inst_id in np.unique(mask)[1:]:
        rows, cols = np.nonzero(mask == inst_id)
        cy, cx = rows.mean(), cols.mean()
        if stride > 1:
            cy, cx = (cy + 0.5) / stride - 0.5, (cx + 0.5) / stride - 0.5
        py, px = round(cy), round(cx)  # Python rounds half to even
        gauss = np.exp(-((u - py) ** 2 + (v - px) ** 2) / (2 * sigma**2)).astype(np.float32)
        gauss[(abs(u - py) > radius) | (abs(v - px) > radius)] = 0
        heat = np.maximum(heat, gauss)
        on = sampled == inst_id
        offset[0][on] = cy - u[on]
        offset[1][on] = cx - v[on]
    return heat, offset


def random_mask(seed: int, height: int = 70, width: int = 90, n: int = 8, ids=None) -> np.ndarray:
    """Ellipses and rectangles, some cut by the border, overlapping; ids 1..n unless given."""
    rng = np.random.default_rng(seed)
    ids = list(range(1, n + 1)) if ids is None else ids
    mask = np.zeros((height, width), dtype=np.int32)
    rows, cols = np.mgrid[:height, :width]
    for inst_id in ids:
        cy, cx = rng.uniform(-5, height + 5), rng.uniform(-5, width + 5)
        ry, rx = rng.uniform(1, 25, 2)
        if rng.random() < 0.5:
            shape = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
        else:
            shape = (abs(rows - cy) <= ry) & (abs(cols - cx) <= rx)
        mask[shape] = inst_id
    return mask


# --------------------------------------------------------------------------------------------- maps


def test_real_data_maps_equal_panoptic_deeplab_bit_for_bit(sample_coco: Path):
    for record in load_coco(sample_coco).images:
        instance = rasterize_image(record).instance
        heat, offset = center_targets(instance)
        ref_heat, ref_offset = center_targets_per_instance(instance)
        np.testing.assert_array_equal(heat, ref_heat)
        np.testing.assert_array_equal(offset, ref_offset)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("sigma", [8, 3])
def test_synthetic_maps_equal_panoptic_deeplab(seed: int, sigma: int):
    mask = random_mask(seed, n=3 + seed)
    heat, offset = center_targets(mask, sigma)
    ref_heat, ref_offset = center_targets_per_instance(mask, sigma=sigma)
    np.testing.assert_array_equal(heat, ref_heat)
    np.testing.assert_array_equal(offset, ref_offset)
    assert heat.dtype == offset.dtype == np.float32


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("sigma", [8.0, 2.5, 0.7])
def test_stride_and_any_sigma_follow_the_definition(stride: int, sigma: float):
    for seed in range(4):
        mask = random_mask(100 + seed, height=67, width=93, n=6)
        heat, offset = center_targets(mask, sigma, stride=stride)
        ref_heat, ref_offset = definition_loop(mask, sigma, stride)
        assert heat.shape == (math.ceil(67 / stride), math.ceil(93 / stride))
        assert offset.shape == (2, *heat.shape)
        np.testing.assert_array_equal(heat, ref_heat)
        np.testing.assert_array_equal(offset, ref_offset)


def test_sparse_huge_ids_work_like_contiguous_ones():
    contiguous = random_mask(5, n=5)
    relabel = np.array([0, 7, 900, 70_000, 2**31 - 1, 3], dtype=np.int64)
    sparse = relabel[contiguous]
    for a, b in zip(center_targets(contiguous), center_targets(sparse), strict=True):
        np.testing.assert_array_equal(a, b)
    ids, counts, _ = instance_centres(sparse)
    assert ids.tolist() == sorted(set(relabel[np.unique(contiguous)[1:]].tolist()))


def test_centre_rounding_is_half_to_even_like_python_round():
    mask = np.zeros((12, 12), dtype=np.int32)
    mask[2:4, 5:8] = 1  # mean row 2.5 → 2, mean column 6 → 6
    mask[6:8, 2:4] = 2  # mean row 6.5 → 6, mean column 2.5 → 2
    heat, offset = center_targets(mask, 1.0)
    assert heat[2, 6] == 1 and heat[6, 2] == 1 and np.count_nonzero(heat == 1) == 2
    np.testing.assert_array_equal(offset[:, 2, 5], [0.5, 1.0])


def test_empty_mask_gives_zero_maps():
    heat, offset = center_targets(np.zeros((10, 13), dtype=np.uint16), stride=4)
    assert heat.shape == (3, 4) and offset.shape == (2, 3, 4)
    assert not heat.any() and not offset.any()


def test_instance_missed_by_the_stride_grid_still_gets_its_peak():
    mask = np.zeros((16, 16), dtype=np.int32)
    mask[4, 4] = 1  # stride 4 samples rows/columns 2, 6, 10, 14
    heat, offset = center_targets(mask, 1.0, stride=4)
    assert heat.max() == 1 and not offset.any()


def test_offsets_are_zero_on_background_and_point_to_the_centre():
    mask = random_mask(3)
    heat, offset = center_targets(mask)
    assert not offset[:, mask == 0].any()
    ids, _, centres = instance_centres(mask)
    rows, cols = np.nonzero(mask)
    pointed = np.stack([rows + offset[0, rows, cols], cols + offset[1, rows, cols]], axis=1)
    np.testing.assert_allclose(pointed, centres[np.searchsorted(ids, mask[rows, cols])], atol=1e-4)
    assert heat.max() == 1.0 and heat.min() == 0.0


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"sigma": 0}, ConfigError, "sigma must be a positive number"),
        ({"sigma": float("nan")}, ConfigError, "sigma must be a positive number"),
        ({"stride": 0}, ConfigError, "stride must be an integer >= 1"),
        ({"stride": 2.0}, ConfigError, "stride must be an integer >= 1"),
    ],
)
def test_bad_parameters_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        center_targets(np.zeros((4, 4), dtype=np.int32), **kwargs)


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.zeros((2, 3, 4), dtype=np.int32), r"integer \(H, W\) array, got int32 \(2, 3, 4\)"),
        (np.zeros((3, 4), dtype=np.float32), r"integer \(H, W\) array, got float32"),
        (np.full((3, 4), -1, dtype=np.int32), "negative ids"),
    ],
)
def test_bad_masks_are_refused_with_expected_vs_actual(mask, message):
    with pytest.raises(ValueError, match=message):
        center_targets(mask)


# ---------------------------------------------------------------------------------- semantic weights


def test_semantic_weights_mark_instances_below_the_area_only():
    mask = np.zeros((20, 30), dtype=np.int32)
    mask[0:3, 0:5] = 1  # 15 pixels: below 16, weighted
    mask[5:9, 0:4] = 2  # 16 pixels: at the threshold, not small
    mask[10:13, 0:5] = 3
    mask[13, 0:2] = 3  # 17 pixels in two pieces: above
    mask[19, 29] = 4  # 1 pixel in the corner: weighted
    weights = semantic_weights(mask, small_instance_area=16, small_instance_weight=2.5)
    expected = np.ones((20, 30), dtype=np.float32)
    expected[(mask == 1) | (mask == 4)] = 2.5
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(weights, expected)
    twin = render_targets(torch.from_numpy(mask[None]), small_instance_area=16, small_instance_weight=2.5)
    np.testing.assert_array_equal(twin["semantic_weight"][0].numpy(), expected)


def test_semantic_weights_defaults_are_panoptic_deeplabs():
    mask = np.zeros((100, 100), dtype=np.int32)
    mask[:64, :64] = 1  # 4096 pixels: not small
    mask[70:80, 70:80] = 2  # 100 pixels: small, weight 3
    weights = semantic_weights(mask)
    assert weights[0, 0] == 1 and weights[75, 75] == 3 and weights[99, 0] == 1
    assert (semantic_weights(np.zeros((4, 4), dtype=np.uint8)) == 1).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"small_instance_area": -1}, "small_instance_area must be an integer >= 0"),
        ({"small_instance_area": 10.5}, "small_instance_area must be an integer >= 0"),
        ({"small_instance_area": True}, "small_instance_area must be an integer >= 0"),
        ({"small_instance_weight": float("inf")}, "small_instance_weight must be a finite number >= 0"),
        ({"small_instance_weight": -2.0}, "small_instance_weight must be a finite number >= 0"),
        ({"small_instance_weight": 1e30}, r"small_instance_weight must be a finite number >= 0 \(at most 1000"),  # the config's bound
        ({"small_instance_area": 2**40}, r"small_instance_area must be an integer >= 0 \(pixels, at most 67108864\)"),
    ],
)
def test_bad_semantic_weight_parameters_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        semantic_weights(np.zeros((4, 4), dtype=np.int32), **kwargs)
    with pytest.raises(ConfigError, match=message):
        render_targets(torch.zeros((1, 4, 4), dtype=torch.int32), **kwargs)


# ------------------------------------------------------------------------------ the batched torch twin

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def definition(masks: np.ndarray, *, sigma=8.0, stride=1, small_instance_area=4096, small_instance_weight=3.0):
    """``center_targets`` + ``semantic_weights`` on each mask of an (N, H, W) stack, stacked as the twin's dict."""
    out_h, out_w = math.ceil(masks.shape[1] / stride), math.ceil(masks.shape[2] / stride)
    heat = np.zeros((len(masks), 1, out_h, out_w), dtype=np.float32)
    offset = np.zeros((len(masks), 2, out_h, out_w), dtype=np.float32)
    weight = np.zeros(masks.shape, dtype=np.float32)
    for n, mask in enumerate(masks):
        heat[n, 0], offset[n] = center_targets(mask, sigma, stride=stride)
        weight[n] = semantic_weights(
            mask, small_instance_area=small_instance_area, small_instance_weight=small_instance_weight
        )
    return {"heatmap": heat, "offset": offset, "semantic_weight": weight}


def assert_twin_equals_definition(masks: np.ndarray, device: str = "cpu", *, dtype=torch.int32, max_id=None, **kw):
    """The twin on ``device`` equals the NumPy definition bit for bit (float32 bits, so even 0.0 vs -0.0)."""
    out = render_targets(torch.from_numpy(masks).to(device=device, dtype=dtype), max_id=max_id, **kw)
    expected = definition(masks, **kw)
    assert sorted(out) == sorted(expected)
    for key, want in expected.items():
        got = out[key]
        assert got.device.type == device and got.dtype == torch.float32, key
        assert tuple(got.shape) == want.shape, key
        np.testing.assert_array_equal(got.cpu().numpy().view(np.int32), want.view(np.int32), err_msg=key)
    return out


@pytest.fixture(scope="module")
def photo_masks(sample_coco: Path) -> np.ndarray:
    """The 18 real sample photos rasterised: int32 (18, 600, 800)."""
    return np.stack([rasterize_image(record).instance for record in load_coco(sample_coco).images])


ZOOM = AugmentConfig.default().replace(
    geometry=GeometryConfig(
        fit="cover",
        flip_x=0.5,
        rotation=RandomRange(0.5, (-30.0, 30.0)),
        scale=RandomRange(1.0, (1.5, 2.5)),
        translation=Translation(1.0, 0.25),
    )
)


@pytest.fixture(scope="module")
def warped_masks(photo_masks: np.ndarray) -> np.ndarray:
    """The photos' masks warped as the loaders will (default augmentation, and a zoomed crop that cuts
    instances and loses some), into 256x256: int32 (36, 256, 256)."""
    warped = []
    for epoch, cfg in enumerate([AugmentConfig.default(), ZOOM]):
        for i, mask in enumerate(photo_masks):
            params = draw_params(7, epoch, i, cfg)
            matrix = affine_matrix(params, mask.shape, (256, 256), fit=cfg.geometry.fit)
            warped.append(warp_mask(mask, matrix, (256, 256), fill=0))
    before = np.concatenate([photo_masks, photo_masks])
    vanished = sum(np.unique(a).size - np.unique(b).size for a, b in zip(before, warped, strict=True))
    assert vanished > 10  # the zoomed crops lose instances, as the test means them to
    return np.stack(warped)


@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("sigma", [8.0, 2.5])
def test_sample_targets_are_center_targets_and_semantic_weights(warped_masks, stride: int, sigma: float):
    # one pass over the runs for all three maps (what the CPU loader renders per sample): the same arrays
    for mask in warped_masks[::3]:
        heat, offset, weight = sample_targets(mask, sigma=sigma, stride=stride, small_instance_area=900)
        expected_heat, expected_offset = center_targets(mask, sigma, stride=stride)
        np.testing.assert_array_equal(heat, expected_heat)
        np.testing.assert_array_equal(offset, expected_offset)
        np.testing.assert_array_equal(weight, semantic_weights(mask, small_instance_area=900))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2, 4])
@pytest.mark.parametrize("max_id", [None, 13])
def test_twin_equals_the_definition_on_the_real_photos(photo_masks: np.ndarray, device: str, stride: int, max_id):
    assert_twin_equals_definition(photo_masks, device, stride=stride, max_id=max_id)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 4])
def test_twin_equals_the_definition_on_masks_read_from_a_cache(sample_cache, device: str, stride: int):
    # what a loader holds: the cache's uint16 instance masks (as int32, torch has no uint16 kernels here)
    cache = open_cache(sample_cache)
    masks = np.stack([cache.labels(i)[1] for i in range(len(cache))]).astype(np.int32)
    assert masks.shape[0] == 18 and masks.max() > 5
    assert_twin_equals_definition(masks, device, stride=stride, max_id=int(masks.max()), sigma=5.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2, 4])
@pytest.mark.parametrize("max_id", [None, 13])
def test_twin_equals_the_definition_on_augmented_real_masks(warped_masks, device: str, stride: int, max_id):
    # ids of the photos run up to 13; 2.5 is a non-integer sigma, 300 px splits instances into small/large
    assert_twin_equals_definition(
        warped_masks, device, stride=stride, max_id=max_id, sigma=2.5, small_instance_area=300
    )
    assert_twin_equals_definition(warped_masks[:6], device, stride=stride, max_id=max_id)


def synthetic_batch(height: int, width: int) -> np.ndarray:
    """int32 (8, H, W), ids up to 12: overlapping shapes cut by the borders, an empty mask, one-pixel
    instances off the stride grids, instances touching all four borders, sparse ids, one instance
    covering everything."""
    masks = [random_mask(seed, height, width, n=3 + seed) for seed in range(4)]
    masks.append(np.zeros((height, width), dtype=np.int32))
    one_pixel = np.zeros((height, width), dtype=np.int32)
    one_pixel[5, 5] = 9  # stride 2 samples rows 1, 3, 5...: hit; stride 4 samples 2, 6, ...: missed
    one_pixel[4, 4] = 3  # hit by no stride > 1 grid
    masks.append(one_pixel)
    borders = np.zeros((height, width), dtype=np.int32)
    borders[0, :], borders[-1, :], borders[1:-1, 0], borders[1:-1, -1] = 1, 2, 3, 4
    borders[height // 2, width // 2] = 5
    masks.append(borders)
    masks.append(np.full((height, width), 12, dtype=np.int32))
    return np.stack(masks)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2, 3, 4])
@pytest.mark.parametrize("sigma", [8.0, 2.5, 0.7])
def test_twin_equals_the_definition_on_synthetic_masks(device: str, stride: int, sigma: float):
    masks = synthetic_batch(67, 93)  # neither side divisible by 2, 3 or 4
    for max_id in (None, 12, 40):  # 40: more slots than ids, the spare ones render nothing
        assert_twin_equals_definition(masks, device, stride=stride, sigma=sigma, small_instance_area=200, max_id=max_id)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 4])
def test_twin_takes_huge_sparse_ids(device: str, stride: int):
    sparse = np.array([0, 65535, 40000, 7, 1, 300, 2, 3, 4], dtype=np.int32)
    masks = np.stack([sparse[random_mask(21, 67, 93, n=8)], np.full((67, 93), 65535, dtype=np.int32)])
    # max_id=65535 gives 2·65536 slots, each with a window: fine at a small sigma (memory ∝ slots·(2r+1)²)
    for max_id in (None, 65535):
        assert_twin_equals_definition(masks, device, stride=stride, sigma=0.7, max_id=max_id)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_twin_takes_every_integer_dtype(device: str, dtype):
    masks = np.stack([random_mask(seed, 40, 50, n=6) for seed in range(3)])
    for max_id in (None, 6, 100):  # exact and larger than needed: same maps
        assert_twin_equals_definition(masks, device, dtype=dtype, stride=2, sigma=3.0, max_id=max_id)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_id", [None, 4])
def test_twin_on_an_empty_batch_gives_empty_maps(device: str, max_id):
    out = render_targets(torch.zeros((0, 10, 13), dtype=torch.int16, device=device), stride=4, max_id=max_id)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "heatmap": (0, 1, 3, 4),
        "offset": (0, 2, 3, 4),
        "semantic_weight": (0, 10, 13),
    }
    assert all(v.dtype == torch.float32 and v.device.type == device for v in out.values())


@pytest.mark.parametrize("device", DEVICES)
def test_twin_is_deterministic(device: str, warped_masks):
    batch = torch.from_numpy(warped_masks).to(device)
    for max_id in (None, 13):
        first = render_targets(batch, max_id=max_id, stride=2)
        second = render_targets(batch, max_id=max_id, stride=2)
        for key in first:
            assert torch.equal(first[key].view(torch.int32), second[key].view(torch.int32)), key


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sigma, stride", [(12.0, 1), (8.0, 4), (30.0, 1)])
def test_twin_cuts_windows_wider_than_the_map(device: str, sigma: float, stride: int):
    # 67x93 masks: r = 37 cuts the rows only (75 > 67), r = 25 at stride 4 cuts both (17x24 maps), r = 91 both
    masks = synthetic_batch(67, 93)
    assert_twin_equals_definition(masks, device, sigma=sigma, stride=stride, max_id=12)
    assert_twin_equals_definition(masks, device, sigma=sigma, stride=stride)


@pytest.mark.parametrize("device", DEVICES)
def test_twin_ranks_ids_too_sparse_for_slots(device: str):
    # max_id=None with ids near the int32 limit: one slot per id would take terabytes, so each id is replaced
    # by its rank in its sample first; samples without background and with a single id included
    top = 2**31 - 1
    relabel = np.array([0, top, 5, top - 7, 1 << 30, 3, 17, 9, 2], dtype=np.int64)
    masks = np.stack([relabel[random_mask(seed, 40, 50, n=8)] for seed in range(3)] + [np.full((40, 50), top)])
    for stride in (1, 3):
        assert_twin_equals_definition(masks, device, dtype=torch.int64, stride=stride, sigma=2.5)


def test_twin_refuses_a_max_id_whose_slot_tables_would_not_fit():
    batch = torch.zeros((48, 512, 512), dtype=torch.int32, device="meta")
    with pytest.raises(ConfigError, match=r"max_id = 100000 gives 48x100001 slots, whose tables would take .* GiB"):
        render_targets(batch, max_id=100_000)


@pytest.mark.parametrize("device", DEVICES)
def test_twin_with_max_id_0_renders_background_only(device: str):
    out = render_targets(torch.zeros((3, 10, 13), dtype=torch.uint8, device=device), stride=4, max_id=0)
    assert not out["heatmap"].any() and not out["offset"].any() and (out["semantic_weight"] == 1).all()


class CountOps(TorchDispatchMode):
    """The aten ops dispatched inside the ``with`` block, in order (views included)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.views = 0  # ops that only make a view: no kernel

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.name())
        self.views += func.is_view
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 4])
def test_twin_dispatches_the_same_ops_whatever_the_batch_and_its_instances(device: str, stride: int):
    def dispatched(n: int, instances: int, max_id: int) -> CountOps:
        masks = np.stack([random_mask(seed, 67, 93, n=instances) for seed in range(n)])
        batch = torch.from_numpy(masks).to(device)
        with CountOps() as count:
            render_targets(batch, stride=stride, max_id=max_id, sigma=3.0)
        return count

    reference = dispatched(1, 2, 20)
    assert dispatched(8, 2, 20).ops == reference.ops  # N = 1 vs 8
    assert dispatched(8, 20, 20).ops == reference.ops  # 2 vs 20 instances
    assert dispatched(8, 2, 2).ops == reference.ops  # K = 3 vs 21 slots per sample
    # a fixed, short sequence: about 50 ops with a kernel at stride 1 (60 at stride 4), the rest views
    assert len(reference.ops) - reference.views <= 65 and reference.views <= 45, reference.ops


def test_twin_with_max_id_reads_nothing_back():
    # the meta device has shapes but no data: .item(), nonzero() or a boolean mask would raise here
    batch = torch.from_numpy(synthetic_batch(67, 93)).to("meta")
    out = render_targets(batch, max_id=12, stride=4, sigma=2.0)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "heatmap": (8, 1, 17, 24),
        "offset": (8, 2, 17, 24),
        "semantic_weight": (8, 67, 93),
    }


@pytest.mark.cuda
def test_twin_with_max_id_does_not_synchronise_on_cuda(warped_masks):
    batch = torch.from_numpy(warped_masks).to("cuda")
    render_targets(batch, max_id=13, stride=4)  # first call: pinned host memory, kernels loaded
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = render_targets(batch, max_id=13, stride=4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected = definition(warped_masks, stride=4)
    for key, want in expected.items():
        np.testing.assert_array_equal(out[key].cpu().numpy(), want, err_msg=key)


@pytest.mark.parametrize(
    "instance, kwargs, error, message",
    [
        (np.zeros((1, 4, 4), dtype=np.int32), {}, TypeError, "must be a torch.Tensor"),
        (torch.zeros((1, 4, 4)), {}, ValueError, r"uint8, int16, int32 or int64, got torch.float32 \(1, 4, 4\)"),
        (torch.zeros((4, 4), dtype=torch.int32), {}, ValueError, r"integer \(N, H, W\) tensor.*\(4, 4\)"),
        (torch.zeros((2, 0, 4), dtype=torch.int32), {}, ValueError, "empty image size"),
        (torch.zeros((1, 2**21, 1), dtype=torch.uint8), {}, ValueError, "2097152 pixels high; .* up to 2\\^21 - 1"),
        (torch.full((1, 4, 4), -1, dtype=torch.int16), {}, ValueError, "negative ids"),
        (torch.full((1, 4, 4), -1, dtype=torch.int16), {"max_id": 3}, ValueError, "negative ids"),
        (torch.full((1, 4, 4), 9, dtype=torch.int32), {"max_id": 8}, ValueError, "ids up to 9, above max_id = 8"),
        (torch.full((1, 4, 4), 2**31, dtype=torch.int64), {}, ValueError, "above the int32 range"),
        (torch.zeros((1, 4, 4), dtype=torch.int32), {"max_id": -1}, ConfigError, "max_id must be an integer >= 0"),
        (torch.zeros((1, 4, 4), dtype=torch.int32), {"max_id": 2.0}, ConfigError, "max_id must be an integer >= 0"),
        (torch.zeros((1, 4, 4), dtype=torch.int32), {"sigma": -1}, ConfigError, "sigma must be a positive"),
        (torch.zeros((1, 4, 4), dtype=torch.int32), {"stride": 0}, ConfigError, "stride must be an integer >= 1"),
    ],
)
def test_bad_twin_inputs_are_named(instance, kwargs, error, message):
    with pytest.raises(error, match=message):
        render_targets(instance, **kwargs)


# ------------------------------------------------------------------------------------------- tables


def test_instance_centres_match_numpy_means():
    mask = random_mask(11, n=9)
    ids, counts, centres = instance_centres(mask)
    present = np.unique(mask)[1:]
    assert ids.dtype == np.int32 and counts.dtype == np.int64 and centres.dtype == np.float64
    np.testing.assert_array_equal(ids, present)
    for k, inst_id in enumerate(present):
        rows, cols = np.nonzero(mask == inst_id)
        assert counts[k] == rows.size
        assert tuple(centres[k]) == (np.mean(rows), np.mean(cols))


def test_instance_table_on_real_data_matches_a_loop(sample_coco: Path):
    for record in load_coco(sample_coco).images[:6]:
        raster = rasterize_image(record)
        table = instance_table(raster)
        assert [row["id"] for row in table] == list(range(1, len(raster.instances) + 1))
        for row, inst in zip(table, raster.instances, strict=True):
            rows, cols = np.nonzero(raster.instance == row["id"])
            assert row == {
                "id": row["id"],
                "annotation_id": inst.annotation_id,
                "category_id": inst.category_id,
                "train_id": inst.train_id,
                "bbox": [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1],
                "area": rows.size,
                "centre": [np.mean(rows), np.mean(cols)],
            }
            assert all(type(v) is int for v in row["bbox"]) and type(row["area"]) is int


def loop_batch(tables):
    """Reference: pad each table row by row."""
    max_n = max(t.shape[0] for t in tables)
    padded = torch.zeros((len(tables), max_n, tables[0].shape[1]), dtype=tables[0].dtype)
    valid = torch.zeros((len(tables), max_n), dtype=torch.bool)
    for b, table in enumerate(tables):
        for j in range(table.shape[0]):
            padded[b, j] = table[j]
            valid[b, j] = True
    return padded, valid


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_batch_tables_equals_a_row_loop(dtype):
    gen = torch.Generator().manual_seed(0)
    lengths = [3, 0, 7, 1, 0, 5]
    tables = [(torch.rand((n, 4), generator=gen) * 100).to(dtype) for n in lengths]
    padded, valid = batch_tables(tables)
    ref_padded, ref_valid = loop_batch(tables)
    assert padded.shape == (6, 7, 4) and padded.dtype == dtype
    assert torch.equal(padded, ref_padded) and torch.equal(valid, ref_valid)


def test_batch_tables_of_instance_tables(sample_coco: Path):
    fields = ("id", "train_id", "area")
    tables = []
    for record in load_coco(sample_coco).images[:4]:
        rows = instance_table(rasterize_image(record))
        tables.append(torch.tensor([[row[f] for f in fields] + row["bbox"] + row["centre"] for row in rows]))
    padded, valid = batch_tables(tables)
    assert valid.sum(dim=1).tolist() == [t.shape[0] for t in tables]
    assert torch.equal(padded[valid], torch.cat(tables))


def test_batch_tables_edge_cases():
    padded, valid = batch_tables([])
    assert padded.shape == (0, 0, 0) and valid.shape == (0, 0)
    padded, valid = batch_tables([torch.zeros((0, 3)), torch.zeros((0, 3))])
    assert padded.shape == (2, 0, 3) and valid.shape == (2, 0)
    with pytest.raises(ValueError, match=r"same F, got shapes \[\(2, 3\), \(2, 4\)\]"):
        batch_tables([torch.zeros((2, 3)), torch.zeros((2, 4))])


def test_targets_module_does_not_import_torch():
    code = "import sys, fastload.targets, fastload.build.raster, fastload.build.coco; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_numpy_scalars_are_fine_parameters():
    mask = random_mask(1)
    for a, b in zip(center_targets(mask, np.float32(3.0), stride=np.int64(2)), center_targets(mask, 3.0, stride=2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ids_beyond_int32_are_refused():
    with pytest.raises(ValueError, match="above the int32 range"):
        instance_centres(np.full((2, 2), 2**31, dtype=np.int64))


@pytest.mark.parametrize("side", [64, 256])
def test_the_loaders_cpu_kernel_is_chosen_by_size_and_renders_the_definition(warped_masks, side, monkeypatch):
    # fastload.pipeline.batch: the twin up to 64x64 (on one intra-op thread: the loader's own threads hold the
    # cores; torch's setting comes back after), the NumPy definition per sample above
    import fastload.pipeline.batch as batch_module

    threads_seen = []

    def recording(*args, **kwargs):
        threads_seen.append(torch.get_num_threads())
        return render_targets(*args, **kwargs)

    monkeypatch.setattr(batch_module, "render_targets", recording)
    masks = np.ascontiguousarray(warped_masks[:8, :side, :side])
    instance = torch.from_numpy(masks.astype(np.int32))
    semantic = torch.where(instance > 0, 1, 0).long()
    targets = AugmentConfig.default().targets
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = batch_module.render_batch_targets(semantic, instance, targets, max_id=int(instance.max()))
        assert threads_seen == ([1] if side * side <= batch_module.TWIN_ON_CPU_PIXELS else [])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    for n, mask in enumerate(masks):  # either way, the batch is the definition's, sample by sample
        want = batch_module.numpy_targets(semantic[n].numpy(), mask, targets)
        for key, value in want.items():
            np.testing.assert_array_equal(out[key][n].numpy(), value, err_msg=key)
