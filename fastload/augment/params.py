"""Per-sample augmentation parameters: drawn once, applied by both pipelines (CPU reference and DALI).

Drawing is apart from applying (Kornia's ``_param_generator`` / ``apply_transform``): the loader shell draws
``draw_params(sample_rng(seed, epoch, index), cfg)`` for each sample and hands the same :class:`SampleParams`
to whichever backend runs, so the DALI graph can be replayed through :mod:`fastload.augment.reference`.

Geometry follows docs/design.md, "Coordinates": continuous image coordinates ``(x, y)`` (pixel ``(i, j)``
covers ``[j, j+1) x [i, i+1)``), forward ``float64 (2, 3)`` matrices from source to destination.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from fastload.augment.config import FITS, AugmentConfig
from fastload.errors import ConfigError

NOISE_SHIFTS = 256
"""``noise_offset`` is drawn from ``[0, NOISE_SHIFTS)²``: 65,536 windows of the noise texture
(:func:`fastload.augment.reference.noise_texture`)."""

SHADOW_OFFSET_MAX = 0.2
"""The shadow line passes within this many output diagonals of the output centre (see :class:`SampleParams`)."""


class ShadowBand(NamedTuple):
    """A straight shadow band: ``(nx, ny)`` a unit normal, ``c`` the line's offset, ``half_width`` and ``strength``
    (the darkening factor ``1 - strength``); in normalised output coordinates in `SampleParams`, in output
    pixels from `shadow_band`."""

    nx: float = 1.0
    ny: float = 0.0
    c: float = 0.0
    half_width: float = 0.0
    strength: float = 0.0


@dataclass(frozen=True)
class SampleParams:
    """One sample's augmentation parameters. The defaults are the identity (see :func:`identity_params`).

    flip_x, flip_y : mirror left-right / up-down about the output centre
    angle          : degrees, counter-clockwise as seen on screen (y axis points down)
    scale          : isotropic zoom about the output centre (> 1 enlarges)
    shift          : (dy, dx) as fractions of the output (height, width)
    hue            : degrees added to the hue (DALI ``fn.hsv`` ``hue``)
    saturation     : factor (DALI ``fn.hsv`` ``saturation``)
    brightness     : factor (DALI ``fn.brightness_contrast`` ``brightness``)
    contrast       : factor (DALI ``fn.brightness_contrast`` ``contrast``)
    noise_sigma    : Gaussian noise sigma in 0..255 units (0 = no noise)
    noise_offset   : (row, column) in [0, 256)²: where this sample's window starts in the fixed noise texture
    shadow         : (nx, ny, c, half_width, strength) in *normalised* output coordinates: the origin at the
                     output centre, lengths in output diagonals, ``(nx, ny)`` a unit normal. A pixel centre
                     ``(x, y)`` is in the band when ``|nx*x' + ny*y' - c| < half_width`` with
                     ``x' = (x - W/2)/diag``, ``y' = (y - H/2)/diag``. ``strength == 0`` means no shadow.
                     :func:`shadow_band` converts to output pixel coordinates.
    """

    flip_x: bool = False
    flip_y: bool = False
    angle: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    hue: float = 0.0
    saturation: float = 1.0
    brightness: float = 1.0
    contrast: float = 1.0
    noise_sigma: float = 0.0
    noise_offset: tuple[int, int] = (0, 0)
    shadow: ShadowBand = ShadowBand()

    def __post_init__(self) -> None:
        if not isinstance(self.shadow, ShadowBand):  # a plain 5-tuple names its fields too
            object.__setattr__(self, "shadow", ShadowBand(*self.shadow))


def identity_params() -> SampleParams:
    """Parameters that change nothing: the warp is the plain resize-to-fit, colours are untouched."""
    return SampleParams()


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample of one epoch: independent of worker count, rank and batch order."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


# number of uniforms drawn per sample, always all of them, so that switching one augmentation on or off
# (or changing its probability) leaves every other augmentation's values unchanged for the same sample
_N_GATES = 11
_N_VALUES = 14


def draw_params(rng: np.random.Generator, cfg: AugmentConfig) -> SampleParams:
    """Draw one sample's parameters. A disabled augmentation (gate not passed) yields its identity value.

    Each augmentation is on with its probability ``p``; its value is then uniform in its ``range``.
    Translation draws dy and dx independently from ``U(-max_fraction, max_fraction)``. The shadow line has a
    uniform direction and passes within ``SHADOW_OFFSET_MAX`` diagonals of the centre.
    """
    g = rng.random(_N_GATES)
    v = rng.random(_N_VALUES)
    geo, pho = cfg.geometry, cfg.photometric

    def pick(i: int, rr, k: int, identity: float) -> float:
        lo, hi = rr.range
        return float(lo + (hi - lo) * v[k]) if g[i] < rr.p else identity

    shift = (0.0, 0.0)
    if g[4] < geo.translation.p:
        m = geo.translation.max_fraction
        shift = (float((2.0 * v[2] - 1.0) * m), float((2.0 * v[3] - 1.0) * m))

    noise_sigma, noise_offset = 0.0, (0, 0)
    if g[9] < pho.noise.p:
        lo, hi = pho.noise.range
        noise_sigma = float(lo + (hi - lo) * v[8])
        window = min(int(v[9] * NOISE_SHIFTS**2), NOISE_SHIFTS**2 - 1)  # one uniform → (row, column)
        noise_offset = divmod(window, NOISE_SHIFTS)

    shadow = SampleParams.shadow
    if g[10] < pho.shadow.p:
        theta = 2.0 * math.pi * float(v[10])
        c = float((2.0 * v[11] - 1.0) * SHADOW_OFFSET_MAX)
        (s_lo, s_hi), (w_lo, w_hi) = pho.shadow.strength, pho.shadow.half_width
        half_width = float(w_lo + (w_hi - w_lo) * v[12])
        strength = float(s_lo + (s_hi - s_lo) * v[13])
        shadow = ShadowBand(math.cos(theta), math.sin(theta), c, half_width, strength)

    return SampleParams(
        flip_x=bool(g[0] < geo.flip_x),
        flip_y=bool(g[1] < geo.flip_y),
        angle=pick(2, geo.rotation, 0, 0.0),
        scale=pick(3, geo.scale, 1, 1.0),
        shift=shift,
        hue=pick(5, pho.hue, 4, 0.0),
        saturation=pick(6, pho.saturation, 5, 1.0),
        brightness=pick(7, pho.brightness, 6, 1.0),
        contrast=pick(8, pho.contrast, 7, 1.0),
        noise_sigma=noise_sigma,
        noise_offset=noise_offset,
        shadow=shadow,
    )


# ------------------------------------------------------------------------------------------------ geometry


def fit_scale(src_hw: tuple[int, int], out_hw: tuple[int, int], fit: str = "contain") -> float:
    """The isotropic resize factor: ``contain`` fits the whole image (letterbox), ``cover`` fills the output."""
    if fit not in FITS:
        raise ConfigError(f"fit = {fit!r} is not one of {list(FITS)}")
    h, w = src_hw
    oh, ow = out_hw
    if min(h, w, oh, ow) <= 0:
        raise ValueError(f"sizes must be positive: src_hw={tuple(src_hw)}, out_hw={tuple(out_hw)}")
    sy, sx = oh / h, ow / w
    return min(sy, sx) if fit == "contain" else max(sy, sx)


def _cos_sin(angle_deg: float) -> tuple[float, float]:
    # exact values at multiples of 90 degrees, so a quarter turn maps pixels onto pixels exactly
    quarter = angle_deg / 90.0
    if quarter == round(quarter):
        return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[int(round(quarter)) % 4]
    t = math.radians(angle_deg)
    return math.cos(t), math.sin(t)


def affine_matrix(
    params: SampleParams, src_hw: tuple[int, int], out_hw: tuple[int, int], *, fit: str = "contain"
) -> np.ndarray:
    """The forward affine, source continuous ``(x, y)`` → output continuous ``(x, y)``.

    Order: resize to fit (aspect kept, centred), then flip, rotation and scale about the output centre,
    then the shift. Returns float64 (2, 3); DALI takes it with ``inverse_map=False``.
    """
    h, w = src_hw
    oh, ow = out_hw
    s0 = fit_scale(src_hw, out_hw, fit)
    fitm = np.array([[s0, 0.0, (ow - s0 * w) / 2.0], [0.0, s0, (oh - s0 * h) / 2.0], [0.0, 0.0, 1.0]])

    c, s = _cos_sin(params.angle)
    # y points down: a counter-clockwise turn on screen maps (1, 0) (right) to (c, -s) (up-right)
    rot = np.array([[c, s], [-s, c]])
    flip = np.diag([-1.0 if params.flip_x else 1.0, -1.0 if params.flip_y else 1.0])
    lin = params.scale * (rot @ flip)
    centre = np.array([ow / 2.0, oh / 2.0])
    shift = np.array([params.shift[1] * ow, params.shift[0] * oh])
    about = np.eye(3)
    about[:2, :2] = lin
    about[:2, 2] = centre - lin @ centre + shift
    return (about @ fitm)[:2].copy()


def map_hw(out_hw: tuple[int, int], stride: int) -> tuple[int, int]:
    """The target-map size for an output size; the output size must be divisible by the stride."""
    oh, ow = out_hw
    if oh % stride or ow % stride:
        raise ConfigError(f"output size {oh}x{ow} is not divisible by stride {stride}; pick a multiple of it")
    return oh // stride, ow // stride


def shadow_band(params: SampleParams, out_hw: tuple[int, int]) -> ShadowBand:
    """The shadow band in output pixel coordinates.

    A pixel centre ``(x, y)`` (``x = j + 0.5``, ``y = i + 0.5``) is shadowed when
    ``|nx·x + ny·y − c| < half_width``; it is then multiplied by ``1 − strength``.
    """
    nx, ny, c, half_width, strength = params.shadow
    oh, ow = out_hw
    diag = math.hypot(oh, ow)
    return ShadowBand(nx, ny, c * diag + nx * ow / 2.0 + ny * oh / 2.0, half_width * diag, strength)
