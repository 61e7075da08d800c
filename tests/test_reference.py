"""The CPU reference kernels: exact where they must be (flips, label sets), DALI-matching where they mirror
a DALI operator (checked against DALI's CPU operators, which run without a GPU), and the documented maths
for shadow, noise and normalisation."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from fastload.augment import reference as R
from fastload.augment.config import AugmentConfig
from fastload.augment.noise import noise_texture, noise_window
from fastload.augment.params import (
    SampleParams,
    affine_matrix,
    draw_params,
    shadow_band,
)

DEFAULT = AugmentConfig.default()


def _blobs(hw: tuple[int, int], centres_radii, *, first_id: int = 1) -> np.ndarray:
    """int32 instance mask with filled ellipses (cy, cx, ry, rx), ids first_id, first_id+1, ..."""
    mask = np.zeros(hw, dtype=np.int32)
    for k, (cy, cx, ry, rx) in enumerate(centres_radii):
        tmp = np.zeros(hw, dtype=np.uint8)
        cv2.ellipse(tmp, (cx, cy), (rx, ry), 0, 0, 360, 1, -1)
        mask[tmp > 0] = first_id + k
    return mask


# ------------------------------------------------------------------------------------------ geometry


def test_opencv_matrix_conversion_moves_the_pixel_centre():
    m = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    # continuous 0.5 (centre of pixel 0) → 1.0, i.e. OpenCV's 0 → 0.5
    np.testing.assert_allclose(R.to_opencv_matrix(m), [[2.0, 0.0, 0.5], [0.0, 2.0, 0.5]])
    np.testing.assert_array_equal(R.to_opencv_matrix(np.eye(2, 3)), np.eye(2, 3))


def test_identity_same_size_warps_are_exact_copies():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    labels = rng.integers(0, 1 << 20, (48, 64), dtype=np.int32)
    m = affine_matrix(SampleParams(), (48, 64), (48, 64))
    np.testing.assert_array_equal(R.warp_image(image, m, (48, 64)), image)
    np.testing.assert_array_equal(R.warp_mask(labels, m, (48, 64), fill=0), labels)


@pytest.mark.parametrize(
    "src_hw, out_hw", [((600, 800), (512, 512)), ((96, 128), (64, 64)), ((64, 64), (64, 64))]
)
@pytest.mark.parametrize("flip", ["flip_x", "flip_y"])
def test_flip_about_centre_is_exact(src_hw, out_hw, flip):
    rng = np.random.default_rng(1)
    semantic = rng.integers(0, 20, src_hw, dtype=np.uint8)
    instance = rng.integers(0, 1 << 24, src_hw).astype(np.int32)
    fitted_m = affine_matrix(SampleParams(), src_hw, out_hw)
    flipped_m = affine_matrix(SampleParams(**{flip: True}), src_hw, out_hw)
    mirror = np.fliplr if flip == "flip_x" else np.flipud
    for mask, fill in ((semantic, R.SEMANTIC_FILL), (instance, R.INSTANCE_FILL)):
        fitted = R.warp_mask(mask, fitted_m, out_hw, fill=fill)
        np.testing.assert_array_equal(R.warp_mask(mask, flipped_m, out_hw, fill=fill), mirror(fitted))


def test_letterbox_is_filled_with_ignore_and_background():
    semantic = np.full((60, 80), 3, dtype=np.uint8)
    instance = np.full((60, 80), 7, dtype=np.int32)
    m = affine_matrix(SampleParams(), (60, 80), (64, 64))  # 80 → 64 wide, 60 → 48 high: 8 rows each side
    sem = R.warp_mask(semantic, m, (64, 64), fill=R.SEMANTIC_FILL)
    ins = R.warp_mask(instance, m, (64, 64), fill=R.INSTANCE_FILL)
    assert (sem[:8] == 255).all() and (sem[-8:] == 255).all() and (sem[8:-8] == 3).all()
    assert (ins[:8] == 0).all() and (ins[-8:] == 0).all() and (ins[8:-8] == 7).all()


@pytest.mark.parametrize("index", range(12))
def test_labels_after_any_warp_are_a_subset_plus_fill(index):
    rng = np.random.default_rng(index)
    h, w = rng.integers(40, 300, 2)
    semantic = rng.integers(0, 6, (h, w), dtype=np.uint8)
    instance = (rng.integers(0, 5, (h, w)) * 100_003).astype(np.int32)  # ids past uint16 survive exactly
    params = draw_params(3, 0, index, DEFAULT)
    m = affine_matrix(params, (h, w), (96, 128))
    sem = R.warp_mask(semantic, m, (96, 128), fill=255)
    ins = R.warp_mask(instance, m, (96, 128), fill=0)
    assert sem.dtype == np.uint8 and ins.dtype == np.int32
    assert set(np.unique(sem)) <= set(np.unique(semantic)) | {255}
    assert set(np.unique(ins)) <= set(np.unique(instance)) | {0}


def _dali_source_points(matrix: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """DALI CPU's warp coordinates written plainly: per row, per 256-pixel tile, float32 steps one at a time."""
    inv = R.dali_inverse_affine(matrix)
    oh, ow = out_hw
    out = np.empty((2, oh, ow), dtype=np.float32)
    for r in range(2):
        for i in range(oh):
            for j in range(ow):
                if j % 256 == 0:  # a tile's first pixel: mapped directly (start + k·tile·step)
                    x = inv[r, 0] * np.float32(0.5) + inv[r, 1] * (np.float32(i) + np.float32(0.5)) + inv[r, 2]
                    for _ in range(j // 256):
                        x = x + np.float32(256) * inv[r, 0]
                else:
                    x = x + inv[r, 0]
                out[r, i, j] = x
    return out[0], out[1]


@pytest.mark.parametrize(
    "params",
    [SampleParams(angle=12.5, scale=1.3, shift=(0.1, -0.2)), SampleParams(flip_x=True, scale=0.8, shift=(0.05, 0.1)),
     SampleParams(angle=90.0), SampleParams()],
    ids=["rotated", "no-rotation", "quarter-turn", "identity"],
)
def test_source_points_follow_dali_float32_steps(params):
    # rows without rotation take short forms (one row's tile sums, or one value per row): the same numbers
    m = affine_matrix(params, (50, 70), (6, 600))
    expected = _dali_source_points(m, (6, 600))
    got = R.source_points(m, (6, 600))
    for axis in range(2):
        np.testing.assert_array_equal(got[axis], expected[axis])


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64, np.uint32])
@pytest.mark.parametrize("src_hw", [(90, 70), (3, 40000)], ids=["small", "wider-than-opencv-maps"])
def test_nearest_warp_takes_the_pixel_under_the_floored_source_point(dtype, src_hw):
    # the definition, by NumPy indexing: cv2.remap (uint8..int32) and the NumPy gather (int64, uint32, sources
    # over 32766 px) must both copy exactly this
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    mask = rng.integers(max(info.min, -(1 << 40)), min(info.max, 1 << 40), src_hw, dtype=dtype, endpoint=True)
    out_hw = (40, 72)
    for k in range(4):
        m = affine_matrix(draw_params(5, 0, k, DEFAULT), src_hw, out_hw, fit="cover")
        sx, sy = (np.floor(v).astype(np.int64) for v in R.source_points(m, out_hw))
        inside = (sx >= 0) & (sx < src_hw[1]) & (sy >= 0) & (sy < src_hw[0])
        expected = np.full(out_hw, 9, dtype=dtype)
        expected[inside] = mask[sy[inside], sx[inside]]
        got = R.warp_mask(mask, m, out_hw, fill=9)
        assert got.dtype == mask.dtype
        np.testing.assert_array_equal(got, expected)


def test_targets_rendered_after_a_flip_are_the_flipped_vector_field():
    # why the loaders render targets after augmentation: an offset map is a vector field, and a flip must mirror
    # the pixels *and* negate dx. Rendering from the warped mask does that by definition, exactly.
    from fastload.targets import center_targets

    mask = _blobs((64, 64), [(20, 15, 6, 9), (40, 44, 10, 5)])
    m = affine_matrix(SampleParams(flip_x=True), (64, 64), (64, 64))
    flipped = R.warp_mask(mask, m, (64, 64), fill=0)
    np.testing.assert_array_equal(flipped, np.fliplr(mask))  # the flip is exact
    heat, off = center_targets(mask)
    heat_f, off_f = center_targets(flipped)
    np.testing.assert_array_equal(heat_f, np.fliplr(heat))
    np.testing.assert_array_equal(off_f[0], off[0, :, ::-1])  # dy moves with its pixel
    np.testing.assert_array_equal(off_f[1], -off[1, :, ::-1])  # dx moves and changes sign


# ------------------------------------------------------------------------------------- against DALI


@pytest.fixture(scope="module")
def dali_cpu():
    """Run one DALI operator on the CPU (device_id=None) over a batch of HWC arrays."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    def run(op, images, **per_sample):
        names = sorted(per_sample)

        @pipeline_def(batch_size=len(images), num_threads=1, device_id=None, prefetch_queue_depth=1)
        def pipe():
            x = fn.external_source(source=lambda: list(images), layout="HWC", batch=True)
            args = {k: fn.external_source(source=_constant_batch(per_sample[k]), batch=True) for k in names}
            return op(fn, x, **args)

        p = pipe()
        p.build()
        (out,) = p.run()
        return [np.array(out[i]) for i in range(len(images))]

    return run


def _constant_batch(values):
    batch = [np.float32(v) for v in values]
    return lambda: batch


def _photos(n: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth colourful images (random noise would hide nothing, but real photos are smooth)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = cv2.resize(small, (80, 60), interpolation=cv2.INTER_CUBIC)
        img[::7] = rng.integers(0, 256, img[::7].shape, dtype=np.uint8)  # some hard extremes too
        out.append(img)
    return out


HUES = [-180.0, -90.0, -25.3, -3.0, 0.0, 2.5, 10.0, 45.0, 120.0, 179.9]
SATS = [0.0, 0.3, 0.7, 1.0, 1.3, 2.5, 0.9, 1.1, 1.7, 0.5]


def test_hue_saturation_matches_dali_hsv(dali_cpu):
    images = _photos(len(HUES))
    got = dali_cpu(
        lambda fn, x, hue, saturation: fn.hsv(x, hue=hue, saturation=saturation),
        images,
        hue=HUES,
        saturation=SATS,
    )
    for img, dali, hue, sat in zip(images, got, HUES, SATS, strict=True):
        ours = R.adjust_hue_saturation(img, hue, sat)
        diff = np.abs(ours.astype(int) - dali.astype(int))
        assert diff.max() <= 1, (hue, sat, diff.max())
        assert np.mean(diff > 0) < 1e-3, (hue, sat)  # only float32 rounding ties differ


def test_hsv_is_not_opencv_hsv():
    img = _photos(1)[0]
    assert not np.array_equal(R.adjust_hue_saturation(img, 0.0, 1.5), img)
    grey = np.full((4, 4, 3), 77, dtype=np.uint8)  # no chroma: hue and saturation leave grey alone
    np.testing.assert_array_equal(R.adjust_hue_saturation(grey, 40.0, 1.8), grey)


BRIGHT = [0.0, 0.5, 0.8, 1.0, 1.2, 2.3, 1.0, 0.9, 1.1, 0.7]
CONTRAST = [1.0, 0.5, 1.2, 0.0, 1.0, 3.0, 0.8, 1.1, 0.9, 1.4]


def test_brightness_contrast_matches_dali(dali_cpu):
    images = _photos(len(BRIGHT), seed=1)
    got = dali_cpu(
        lambda fn, x, brightness, contrast: fn.brightness_contrast(
            x, brightness=brightness, contrast=contrast
        ),
        images,
        brightness=BRIGHT,
        contrast=CONTRAST,
    )
    for img, dali, b, c in zip(images, got, BRIGHT, CONTRAST, strict=True):
        diff = np.abs(R.adjust_brightness_contrast(img, b, c).astype(int) - dali.astype(int))
        assert diff.max() <= 1, (b, c, diff.max())


def test_contrast_centre_is_128():
    img = np.array([[[128, 0, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(R.adjust_brightness_contrast(img, 1.0, 0.0), [[[128, 128, 128]]])


def _dali_warp(dali_cpu, arrays, matrices, out_hw, *, linear: bool, fill: float):
    from nvidia.dali import types

    interp = types.INTERP_LINEAR if linear else types.INTERP_NN
    out = []
    for arr, m in zip(arrays, matrices, strict=True):  # the matrix is a per-op constant here
        flat = [float(v) for v in np.asarray(m, dtype=np.float32).ravel()]
        (res,) = dali_cpu(
            lambda fn, x, flat=flat: fn.warp_affine(
                x, matrix=flat, inverse_map=False, interp_type=interp, fill_value=fill, size=list(out_hw)
            ),
            [arr],
        )
        out.append(res)
    return out


def test_nearest_warp_matches_dali_warp_affine(dali_cpu):
    rng = np.random.default_rng(5)
    labels, matrices = [], []
    for k in range(8):
        h, w = (int(v) for v in rng.integers(60, 300, 2))
        labels.append(rng.integers(0, 255, (h, w, 1), dtype=np.uint8))
        matrices.append(affine_matrix(draw_params(0, 0, k, DEFAULT), (h, w), (96, 128)))
    got = _dali_warp(dali_cpu, labels, matrices, (96, 128), linear=False, fill=255)
    same = [
        np.mean(R.warp_mask(lab[:, :, 0], m, (96, 128), fill=255) == d[:, :, 0])
        for lab, m, d in zip(labels, matrices, got, strict=True)
    ]
    assert np.mean(same) >= 0.9999, same


def test_linear_warp_matches_dali_warp_affine(dali_cpu):
    images = _photos(4, seed=6)
    matrices = [
        affine_matrix(draw_params(1, 0, k, DEFAULT), (60, 80), (64, 64)) for k in range(4)
    ]
    got = _dali_warp(dali_cpu, images, matrices, (64, 64), linear=True, fill=0)
    for img, m, d in zip(images, matrices, got, strict=True):
        assert np.abs(R.warp_image(img, m, (64, 64)).astype(int) - d.astype(int)).max() <= 1


# ------------------------------------------------------------------------------ shadow, noise, normalize


def test_shadow_darkens_exactly_the_band():
    image = np.full((40, 60, 3), 200.0, dtype=np.float32)
    band = (
        0.0,
        1.0,
        20.0,
        5.0,
        0.25,
    )  # horizontal band: |y − 20| < 5 with y = i + 0.5 → rows 15..19 and 20..24
    out = R.apply_shadow(image, band)
    rows = np.arange(40) + 0.5
    inside = np.abs(rows - 20.0) < 5.0
    np.testing.assert_array_equal(out[inside], 150.0)
    np.testing.assert_array_equal(out[~inside], 200.0)
    assert inside.sum() == 10


def test_shadow_band_from_params_is_in_output_pixels():
    params = SampleParams(shadow=(1.0, 0.0, 0.0, 0.1, 0.5))  # vertical band through the centre, 0.1 diagonal
    band = shadow_band(params, (30, 40))  # diagonal 50 → half-width 5 px, line x = 20
    out = R.apply_shadow(np.full((30, 40, 3), 100.0, dtype=np.float32), band)
    cols = np.arange(40) + 0.5
    dark = np.abs(cols - 20.0) < 5.0
    np.testing.assert_array_equal(out[:, dark], 50.0)
    np.testing.assert_array_equal(out[:, ~dark], 100.0)
    np.testing.assert_array_equal(R.apply_shadow(out, SampleParams().shadow), out)  # strength 0: no-op


def test_noise_is_a_fixed_texture_window_of_standard_normals():
    texture = noise_texture((64, 96))
    assert texture.dtype == np.float32 and texture.shape == (64 + 256, 96 + 256, 3)
    assert not texture.flags.writeable
    np.testing.assert_array_equal(texture, noise_texture((64, 96)))  # the same in every process
    assert abs(float(texture.mean())) < 0.01 and abs(float(texture.std()) - 1.0) < 0.01
    assert np.corrcoef(texture[..., 0].ravel(), texture[..., 1].ravel())[0, 1] < 0.02  # channels independent
    a, b = noise_window((64, 96), (3, 200)), noise_window((64, 96), (4, 200))
    np.testing.assert_array_equal(a, texture[3:67, 200:296])
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] < 0.02  # a shifted window is other noise
    with pytest.raises(ValueError, match="outside"):
        noise_window((64, 96), (256, 0))


def test_add_noise_scales_by_sigma_and_clamps():
    image = np.full((64, 64, 3), 128.0, dtype=np.float32)
    out = R.add_noise(image, 10.0, (7, 9))
    np.testing.assert_allclose(out - 128.0, 10.0 * noise_window((64, 64), (7, 9)), atol=1e-4)
    edge = R.add_noise(np.zeros((64, 64, 3), np.float32), 50.0, (0, 0))
    assert edge.min() == 0.0 and edge.max() <= 255.0
    np.testing.assert_array_equal(R.add_noise(image, 0.0, (7, 9)), image)


def test_normalize_layout_and_values():
    image = np.zeros((2, 3, 3), dtype=np.float32)
    image[..., 0], image[..., 1], image[..., 2] = 255.0, 0.0, 51.0
    out = R.normalize_image(image, (0.5, 0.5, 0.2), (0.5, 0.25, 0.1))
    assert out.shape == (3, 2, 3) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out[0], 1.0)
    np.testing.assert_allclose(out[1], -2.0)
    np.testing.assert_allclose(out[2], 0.0, atol=1e-6)


# ---------------------------------------------------------------------------------------- whole sample


def _sample(hw=(60, 80), seed=0):
    rng = np.random.default_rng(seed)
    instance = _blobs(hw, [(20, 25, 8, 10), (40, 55, 9, 7)]).astype(np.int16)
    semantic = np.where(instance > 0, instance + 2, 0).astype(np.uint8)
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    return {"image": image, "semantic": semantic, "instance": instance}


def test_augment_sample_shapes_and_dtypes():
    sample = _sample()
    params = draw_params(0, 0, 1, DEFAULT)
    params = dataclasses.replace(params, noise_sigma=4.0, noise_offset=(9, 3), shadow=(0.6, 0.8, 0.0, 0.05, 0.3))
    out = R.augment_sample(sample, params, DEFAULT, out_hw=(64, 96))
    assert sorted(out) == ["image", "instance", "semantic"]
    expect = {
        "image": (np.uint8, (64, 96, 3)),  # the augmented pixels; normalisation is the batch's last step
        "semantic": (np.uint8, (64, 96)),
        "instance": (np.int16, (64, 96)),  # the input's dtype: ids are copied, never converted
    }
    for key, (dtype, shape) in expect.items():
        assert out[key].dtype == dtype and out[key].shape == shape, (key, out[key].dtype, out[key].shape)


def test_augment_sample_rounds_shadow_and_noise_back_to_uint8():
    sample = _sample()
    params = SampleParams(noise_sigma=6.0, noise_offset=(5, 11), shadow=(0.0, 1.0, 0.0, 0.2, 0.5))
    out = R.augment_sample(sample, params, AugmentConfig.none(), out_hw=(64, 96))
    m = affine_matrix(params, (60, 80), (64, 96))
    expected = R.warp_image(sample["image"], m, (64, 96)).astype(np.float32)
    expected = R.add_noise(R.apply_shadow(expected, shadow_band(params, (64, 96))), 6.0, (5, 11))
    np.testing.assert_array_equal(out["image"], np.floor(expected + 0.5).astype(np.uint8))


def test_augment_sample_without_augmentation_is_the_fitted_image():
    sample = _sample()
    out = R.augment_sample(sample, SampleParams(), AugmentConfig.none(), out_hw=(64, 64))
    m = affine_matrix(SampleParams(), (60, 80), (64, 64))
    np.testing.assert_array_equal(out["image"], R.warp_image(sample["image"], m, (64, 64)))
    np.testing.assert_array_equal(out["semantic"][:8], 255)  # letterbox rows: ignore
    np.testing.assert_array_equal(out["instance"][:8], 0)
    assert set(np.unique(out["instance"])) == {0, 1, 2}


def test_augment_sample_refuses_mismatched_inputs():
    sample = _sample()
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
        R.augment_sample({**sample, "image": sample["image"][..., 0]}, SampleParams(), DEFAULT, out_hw=(64, 64))
    with pytest.raises(ValueError, match="semantic has shape"):
        R.augment_sample({**sample, "semantic": sample["semantic"][:10]}, SampleParams(), DEFAULT, out_hw=(64, 64))
