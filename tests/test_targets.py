"""Target maps vs slow, obviously-correct per-instance loops; instance tables; batching tables."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastload.coco import load_coco
from fastload.errors import ConfigError
from fastload.raster import rasterize_image
from fastload.targets import (
    batch_tables,
    center_targets,
    center_targets_per_instance,
    instance_centres,
    instance_table,
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
    ],
)
def test_bad_semantic_weight_parameters_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        semantic_weights(np.zeros((4, 4), dtype=np.int32), **kwargs)


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
    code = "import sys, fastload.targets, fastload.raster, fastload.coco; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_numpy_scalars_are_fine_parameters():
    mask = random_mask(1)
    for a, b in zip(center_targets(mask, np.float32(3.0), stride=np.int64(2)), center_targets(mask, 3.0, stride=2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ids_beyond_int32_are_refused():
    with pytest.raises(ValueError, match="above the int32 range"):
        instance_centres(np.full((2, 2), 2**31, dtype=np.int64))
