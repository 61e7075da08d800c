"""The CPU reference kernels: pure NumPy/OpenCV functions, one per kind of data they act on.

They are the benchmark's "before" path and the reference the DALI graph is checked against, so each
follows the DALI operator it stands for (formulas read from DALI's operator sources, rewritten here):

================================  =======================================  ==================================
kernel                            DALI operator                            agreement (DALI CPU, see tests)
================================  =======================================  ==================================
``warp_image``                    ``fn.warp_affine`` linear, fill 0        OpenCV fixed-point weights: <= 1
``warp_mask``                     ``fn.warp_affine`` nearest               same sampling rule (see below)
``adjust_hue_saturation``         ``fn.hsv``                               exact but float32 rounding ties
``adjust_brightness_contrast``    ``fn.brightness_contrast``               exact but float32 rounding ties
``apply_shadow``, ``add_noise``   arithmetic, ``fn.slice`` of the texture  float32, same order
================================  =======================================  ==================================

Only the image and the two masks are warped: heat and offset maps are rendered after augmentation from the
warped instance mask (:mod:`fastload.targets`), so no vector field is ever warped. Every geometric kernel takes
the **forward** affine in continuous coordinates (docs/design.md, "Coordinates"). Conversion to OpenCV's
pixel-centre-at-integer convention happens here and nowhere else (:func:`to_opencv_matrix`).

Nearest-neighbour sampling follows DALI: output pixel ``(i, j)`` takes the source pixel containing
``M⁻¹ (j + 0.5, i + 0.5)`` (``floor`` of the continuous source point), with the float32 arithmetic of
DALI's CPU kernel (:func:`source_points`); on random label maps under the default augmentation this
picks the same source pixel as DALI CPU ``fn.warp_affine(interp_type=INTERP_NN)`` for 99.9998 % of
pixels (``cv2.warpAffine(INTER_NEAREST)`` with the half-pixel shift: 99.991 %, its 10-bit fixed-point
coordinates round differently near pixel edges). The floored points become an integer map
(:func:`nearest_map`) that `cv2.remap` copies from, so label values (int32 instance ids included) are
copied exactly, never interpolated, and OpenCV's own coordinate rounding never enters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from fastload.augment.config import AugmentConfig
from fastload.augment.noise import noise_window
from fastload.augment.params import SampleParams, affine_matrix, shadow_band
from fastload.labels import INSTANCE_FILL, SEMANTIC_FILL

# ------------------------------------------------------------------------------------------- matrices


def to_opencv_matrix(matrix: np.ndarray) -> np.ndarray:
    """Forward continuous-coordinate affine → OpenCV's forward matrix (pixel centres at integers).

    ``M_cv = T(-0.5) · M · T(+0.5)``: same linear part, translation ``t + A·(0.5, 0.5) − (0.5, 0.5)``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    out = m.copy()
    out[:, 2] = m[:, 2] + m[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return out


_DALI_WARP_TILE = 256  # DALI's CPU warp steps along each row in tiles of this many pixels


def dali_inverse_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse DALI computes for ``inverse_map=False``: float32 adjugate / determinant, ``t' = −A⁻¹·t``."""
    a = np.asarray(matrix, dtype=np.float64).astype(np.float32)
    det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    if det == 0:
        raise ValueError(f"affine matrix is singular: {np.asarray(matrix).tolist()}")
    lin = np.array([[a[1, 1], -a[0, 1]], [-a[1, 0], a[0, 0]]], dtype=np.float32) / det
    t = a[:, 2]
    shift = np.array([-lin[0, 0] * t[0] + -lin[0, 1] * t[1], -lin[1, 0] * t[0] + -lin[1, 1] * t[1]])
    return np.concatenate([lin, shift.astype(np.float32)[:, None]], axis=1)


def source_points(matrix: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Continuous source ``(x, y)`` of every output pixel centre: float32 (H, W) each.

    Computed the way DALI's CPU ``warp_affine`` does, float32 throughout: the inverse as
    :func:`dali_inverse_affine`, the first pixel of each 256-wide tile of a row mapped directly and the
    next ones by adding the x-derivative step by step. Matching the rounding path matters for nearest
    sampling, where a source point a hair's breadth from a pixel edge picks one pixel or the other.
    """
    inv = dali_inverse_affine(matrix)
    oh, ow = out_hw
    return tuple(np.ascontiguousarray(np.broadcast_to(_axis_points(inv[r], out_hw), (oh, ow))) for r in range(2))


def _axis_points(inv_row: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """One source coordinate (row ``r`` of the float32 inverse) of every output pixel centre, float32.

    Shaped to broadcast to (H, W): (1, W) when the coordinate does not change down the rows (its
    y-derivative is 0: no rotation), (H, 1) when it does not change along a row (x-derivative 0), else
    (H, W). The short forms are the same numbers, not an approximation: ``0·y`` adds a signed zero to
    every row's start, and stepping by 0 adds nothing. Without rotation both coordinates take a short form,
    so the float32 tile sums of :func:`source_points` run over one row instead of all of them.
    """
    oh, ow = out_hw
    dx, dy, c = inv_row
    rows = 1 if dy == 0 else oh
    ys = np.arange(rows, dtype=np.float32) + np.float32(0.5)
    start = dx * np.float32(0.5) + dy * ys + c  # (rows,): pixel (0, y)
    if dx == 0:
        return start[:, None]
    tile = _DALI_WARP_TILE
    n_tiles = -(-ow // tile)
    tile_step = np.float32(tile) * dx
    steps = np.full((rows, n_tiles, tile), dx, dtype=np.float32)
    for k in range(n_tiles):
        steps[:, k, 0] = start
        start = start + tile_step
    np.cumsum(steps, axis=2, dtype=np.float32, out=steps)  # sequential float32 sums, as DALI steps
    return steps.reshape(rows, n_tiles * tile)[:, :ow]


# ------------------------------------------------------------------------------------------ geometry


def _check_hw(name: str, array: np.ndarray, ndim: int) -> None:
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {array.shape}")


def warp_image(image: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Warp an image with bilinear interpolation, fill 0.

    image : uint8 (H, W, C); matrix : forward (2, 3) continuous; returns uint8 (out_h, out_w, C).
    """
    _check_hw("warp_image", image, 3)
    oh, ow = out_hw
    out = cv2.warpAffine(
        image,
        to_opencv_matrix(matrix),
        (ow, oh),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0, 0),
    )
    return out.reshape(oh, ow, image.shape[2])  # OpenCV drops a channel axis of length 1


_REMAP_MAX_SIDE = 32766  # cv2.remap takes sources up to SHRT_MAX - 1 pixels on a side (int16 maps)
_REMAP_DTYPES = frozenset(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32))


def nearest_map(matrix: np.ndarray, src_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """For each output pixel, the ``(column, row)`` of the source pixel it takes: (out_h, out_w, 2).

    ``floor`` of :func:`source_points`, clamped to ``[-1, W]`` × ``[-1, H]``: -1, W and H mean "outside",
    and the fill is taken there. int16, OpenCV's ``CV_16SC2`` map for `cv2.remap`, when the source is at
    most 32766 pixels on a side; int32 otherwise. Computing the map once serves every label map of a sample
    (semantic and instance share the matrix).
    """
    inv = dali_inverse_affine(matrix)
    h, w = src_hw
    oh, ow = out_hw
    coords = []
    for r, size in ((0, w), (1, h)):
        points = np.floor(_axis_points(inv[r], out_hw))
        np.clip(points, -1, size, out=points)  # within int16, and still outside when it was
        coords.append(np.ascontiguousarray(np.broadcast_to(points, (oh, ow))))
    if max(h, w) <= _REMAP_MAX_SIDE:
        # integral float32 coordinates: the conversion copies them exactly (any rounding mode) into (x, y) pairs
        return cv2.convertMaps(coords[0], coords[1], cv2.CV_16SC2, nninterpolation=True)[0]
    return np.stack(coords, axis=2).astype(np.int32)


def take_nearest(array: np.ndarray, xy_map: np.ndarray, fill) -> np.ndarray:
    """``array`` (H, W) sampled at ``xy_map`` (from :func:`nearest_map`); ``fill`` where the map is outside.

    Values are copied, never interpolated: `cv2.remap` (``INTER_NEAREST`` on an integer map is a pure copy)
    for the dtypes and sizes OpenCV takes, otherwise a NumPy gather from the array padded with ``fill``.
    Returns the array's dtype, the map's (out_h, out_w).
    """
    if xy_map.dtype == np.int16 and array.dtype in _REMAP_DTYPES:
        out = cv2.remap(array, xy_map, None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
        return out.reshape(xy_map.shape[:2])
    padded = np.pad(array, 1, constant_values=fill)
    return padded[xy_map[:, :, 1].astype(np.intp) + 1, xy_map[:, :, 0].astype(np.intp) + 1]


def warp_mask(mask: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int], *, fill: int) -> np.ndarray:
    """Warp a label map with nearest-neighbour sampling; pixels from outside the source get ``fill``.

    mask : (H, W) any integer dtype (uint8 semantic: fill 255; int32 instance: fill 0), values copied
    exactly. Returns the same dtype, (out_h, out_w).
    """
    _check_hw("warp_mask", mask, 2)
    return take_nearest(mask, nearest_map(matrix, mask.shape, out_hw), fill)


# ------------------------------------------------------------------------------------------- colour

# DALI's fn.hsv: RGB → YIQ, rotate the IQ plane by the hue, scale IQ by the saturation, back to RGB; one 3x3
# matrix applied to RGB in float32, then rounded half away from zero and saturated to uint8.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]], dtype=np.float32
)


def hsv_matrix(hue: float, saturation: float, value: float = 1.0) -> np.ndarray:
    """The 3x3 float32 matrix DALI's ``fn.hsv`` applies to RGB column vectors (hue in degrees)."""
    rgb_to_yiq = _RGB_TO_YIQ.astype(np.float64)
    yiq_to_rgb = np.linalg.inv(_RGB_TO_YIQ).astype(np.float64)
    h = np.float32(hue) * np.pi / 180.0
    c, s = np.cos(h), np.sin(h)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])
    sat = np.diag([1.0, saturation, saturation])
    return (yiq_to_rgb @ rot @ sat @ (value * rgb_to_yiq)).astype(np.float32)


def _round_saturate_uint8(x: np.ndarray) -> np.ndarray:
    # DALI CPU's ConvertSat: std::round (half away from zero) then clamp; values here are clamped first, so
    # only the non-negative branch matters. (DALI GPU rounds half to even: ties may differ by 1.) The float
    # buffer is a temporary of the caller's: rounded in place.
    np.clip(x, 0.0, 255.0, out=x)
    x += np.float32(0.5)
    return x.astype(np.uint8)  # truncation: floor for these non-negative values


def adjust_hue_saturation(image: np.ndarray, hue: float, saturation: float) -> np.ndarray:
    """DALI ``fn.hsv(hue=, saturation=)`` on uint8 RGB (H, W, 3) → uint8 (H, W, 3). Not OpenCV's HSV.

    The 3x3 float32 matrix is applied with OpenCV's SIMD ``cv2.transform`` on float32 pixels (its uint8 path
    is fixed-point and rounds differently): equal to the per-pixel float32 matmul but at ~1e-6 of the values.
    """
    _check_hw("adjust_hue_saturation", image, 3)
    if hue == 0.0 and saturation == 1.0:
        return image.copy()
    return _round_saturate_uint8(cv2.transform(image.astype(np.float32), hsv_matrix(hue, saturation)))


CONTRAST_CENTER_UINT8 = 128.0
"""DALI's default ``contrast_center`` for uint8 input: half of the type's range, 128 (not 127.5)."""


def adjust_brightness_contrast(image: np.ndarray, brightness: float, contrast: float) -> np.ndarray:
    """DALI ``fn.brightness_contrast`` on uint8: ``out = brightness·(128 + contrast·(in − 128))``, rounded.

    As DALI, computed in float32 as ``in·(b·c) + b·(128 − c·128)``, then rounded and saturated to uint8: a
    function of the input value alone, so it is tabulated for the 256 values and applied with ``cv2.LUT``.
    """
    if brightness == 1.0 and contrast == 1.0:
        return image.copy()
    b, c = np.float32(brightness), np.float32(contrast)
    center = np.float32(CONTRAST_CENTER_UINT8)
    multiplier = b * c
    addend = b * (center - c * center)
    table = _round_saturate_uint8(np.arange(256, dtype=np.float32) * multiplier + addend)
    return cv2.LUT(image, table)


def shadow_mask(out_hw: tuple[int, int], band: tuple[float, float, float, float, float]) -> np.ndarray:
    """Bool (H, W): output pixel centres ``(j + 0.5, i + 0.5)`` strictly within the band (pixel units)."""
    nx, ny, c, half_width, _ = (np.float32(v) for v in band)
    oh, ow = out_hw
    xs = np.arange(ow, dtype=np.float32) + np.float32(0.5)
    ys = np.arange(oh, dtype=np.float32) + np.float32(0.5)
    return np.abs(nx * xs[None, :] + ny * ys[:, None] - c) < half_width


def apply_shadow(image: np.ndarray, band: tuple[float, float, float, float, float]) -> np.ndarray:
    """``img *= 1 − strength`` inside the band; float32 (H, W, C) in 0..255 → float32 (H, W, C).

    band : ``(nx, ny, c, half_width, strength)`` in output pixels (:func:`~fastload.augment.params.shadow_band`).
    """
    _check_hw("apply_shadow", image, 3)
    out = image.astype(np.float32, copy=True)
    _shade(out, band)
    return out


def _shade(image: np.ndarray, band: tuple[float, float, float, float, float]) -> None:
    """`apply_shadow` in place on a float32 (H, W, C) array."""
    strength = np.float32(band[4])
    if strength == 0.0:
        return
    h, w, c = image.shape
    factor = np.where(shadow_mask((h, w), band), np.float32(1.0) - strength, np.float32(1.0))
    # one factor per value, laid out as the pixels' values: a broadcast over a trailing axis of 3 runs NumPy's
    # inner loop 3 values at a time, several times slower than this contiguous multiply
    image.reshape(h, w * c).__imul__(np.repeat(factor, c, axis=1))


def add_noise(image: np.ndarray, sigma: float, offset: tuple[int, int]) -> np.ndarray:
    """``img + sigma·noise``, clamped to [0, 255]; float32 (H, W, C) → float32 (H, W, C)."""
    _check_hw("add_noise", image, 3)
    out = image.astype(np.float32, copy=True)
    _add_noise(out, sigma, offset)
    return out


def _add_noise(image: np.ndarray, sigma: float, offset: tuple[int, int]) -> None:
    """`add_noise` in place on a float32 (H, W, C) array."""
    if sigma == 0.0:
        return
    image += np.float32(sigma) * noise_window(image.shape[:2], offset, image.shape[2])
    np.clip(image, 0.0, 255.0, out=image)


def round_to_uint8(image: np.ndarray) -> np.ndarray:
    """float32 0..255 → uint8, rounding half away from zero (DALI CPU's cast); the augmented image is uint8."""
    return _round_saturate_uint8(np.array(image, dtype=np.float32))


def normalize_image(image: np.ndarray, mean, std, *, out: np.ndarray | None = None) -> np.ndarray:
    """``(img / 255 − mean) / std`` per channel; (H, W, 3) 0..255 → float32 (3, H, W) contiguous.

    Computed as ``(x − 255·mean) · (1 / (255·std))`` in float32, plane by plane (``cv2.split`` then NumPy in
    place: 8x faster than a transposed copy). The loaders normalise whole batches on their device
    (`fastload.pipeline.batch`, which calls this per sample on the CPU) with the same arithmetic; this is the
    per-sample definition they equal. ``out``: a float32 (3, H, W) array to write into (e.g. a batch's row)."""
    _check_hw("normalize_image", image, 3)
    shift, inv_scale = normalize_constants(mean, std)
    if out is None:
        out = np.empty((image.shape[2], *image.shape[:2]), dtype=np.float32)
    for c, plane in enumerate(cv2.split(np.ascontiguousarray(image))):
        np.subtract(plane, shift[c], out=out[c], dtype=np.float32)
        out[c] *= inv_scale[c]
    return out


def normalize_constants(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """float32 (3,) ``255·mean`` and ``1 / (255·std)``, computed in float64 and rounded once.

    Normalisation is ``(x − shift) · inv_scale`` in float32 everywhere (this reference, the torch batch step),
    so the CPU loader's images equal the reference bit for bit.
    """
    mean64, std64 = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    return (255.0 * mean64).astype(np.float32), (1.0 / (255.0 * std64)).astype(np.float32)


# --------------------------------------------------------------------------------------------- sample


def augment_sample(
    sample: Mapping[str, Any],
    params: SampleParams,
    cfg: AugmentConfig,
    *,
    out_hw: tuple[int, int],
) -> dict[str, np.ndarray]:
    """Apply one sample's parameters to its decoded image and masks, in the canonical order of docs/design.md.

    sample : ``image`` uint8 (H, W, 3) RGB, ``semantic`` uint8 (H, W), ``instance`` integer (H, W)
    Returns ``image`` uint8 (oh, ow, 3) (the augmented pixels, before normalisation), ``semantic`` uint8
    (oh, ow) (fill 255), ``instance`` (oh, ow) of the input's dtype (fill 0). Heat and offset maps are rendered
    from the returned instance mask (`fastload.targets`); normalisation is the batch's last step.
    """
    image = sample["image"]
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"augment_sample: image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    src_hw = image.shape[:2]
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    m = affine_matrix(params, src_hw, out_hw, fit=cfg.geometry.fit)

    img = warp_image(image, m, out_hw)
    img = adjust_hue_saturation(img, params.hue, params.saturation)
    img = adjust_brightness_contrast(img, params.brightness, params.contrast)
    if params.shadow.strength != 0.0 or params.noise_sigma != 0.0:
        imgf = img.astype(np.float32)  # one float32 buffer for shadow, noise and the rounding
        _shade(imgf, shadow_band(params, out_hw))
        _add_noise(imgf, params.noise_sigma, params.noise_offset)
        img = _round_saturate_uint8(imgf)

    _check_label_shape("semantic", sample["semantic"], src_hw)
    _check_label_shape("instance", sample["instance"], src_hw)
    xy_map = nearest_map(m, src_hw, out_hw)
    return {
        "image": img,
        "semantic": take_nearest(sample["semantic"], xy_map, SEMANTIC_FILL),
        "instance": take_nearest(sample["instance"], xy_map, INSTANCE_FILL),
    }


def _check_label_shape(name: str, array: np.ndarray, src_hw: tuple[int, int]) -> None:
    if tuple(array.shape) != tuple(src_hw):
        raise ValueError(
            f"augment_sample: {name} has shape {array.shape}, expected {tuple(src_hw)} like the image"
        )
