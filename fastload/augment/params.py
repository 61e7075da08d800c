"""Per-sample augmentation parameters: drawn once, applied by both pipelines (CPU reference and DALI).

Drawing is apart from applying (Kornia's ``_param_generator`` / ``apply_transform``): whoever makes a batch (a
worker of either engine) draws ``draw_batch(seed, epoch, indices, cfg)``, a pure function of (seed, epoch, index)
per sample, and applies it; ``draw_params(seed, epoch, index, cfg)`` is one sample's row of it, so the DALI graph
can be replayed through :mod:`fastload.augment.reference` with the same numbers.

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
(:func:`fastload.augment.noise.noise_texture`)."""

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


# Every sample draws all of these uniforms, each with its own slot, so that switching one augmentation on or off
# (or changing its probability) leaves every other augmentation's values unchanged for the same sample.
GATE_SLOTS = ("flip_x", "flip_y", "rotation", "scale", "translation", "hue", "saturation", "brightness", "contrast",
              "noise", "shadow")  # fmt: skip
"""Uniforms that decide whether each augmentation is applied (compared with its ``p``)."""
VALUE_SLOTS = ("angle", "scale", "shift_y", "shift_x", "hue", "saturation", "brightness", "contrast", "noise_sigma",
               "noise_window", "shadow_direction", "shadow_offset", "shadow_half_width", "shadow_strength")  # fmt: skip
"""Uniforms that pick each augmentation's value within its range."""
_GATE = {name: k for k, name in enumerate(GATE_SLOTS)}
_VALUE = {name: len(GATE_SLOTS) + k for k, name in enumerate(VALUE_SLOTS)}
_U64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic): a bijection that scrambles every bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_uniforms(seed: int, epoch: int, indices: np.ndarray, count: int) -> np.ndarray:
    """float64 (N, count) in [0, 1): the uniforms of samples ``indices`` of ``epoch``, a pure function of
    (seed, epoch, index, slot) — counter-based (SplitMix64), so a batch draws them in a few array operations, and
    independent of worker count, rank, batch order and batch size."""
    key = _mix(np.array([(int(seed) * _GOLDEN + int(epoch)) & _U64], np.uint64))
    key = _mix(key ^ np.array([int(epoch) & _U64], np.uint64))
    index = np.asarray(indices, dtype=np.int64).astype(np.uint64).reshape(-1, 1)
    slot = np.arange(count, dtype=np.uint64).reshape(1, -1)
    bits = _mix(_mix(key ^ (index * np.uint64(_GOLDEN))) + slot * np.uint64(_GOLDEN))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True, eq=False)
class ParamsBatch:
    """The parameters of a batch of samples, one array per field of `SampleParams` (N first): what the DALI feed
    turns into the graph's columns in a few array operations. ``sample(k)`` is row k as a `SampleParams`."""

    flip_x: np.ndarray  # bool (N,)
    flip_y: np.ndarray  # bool (N,)
    angle: np.ndarray  # float64 (N,), and so on for the scalars
    scale: np.ndarray
    shift: np.ndarray  # float64 (N, 2) (dy, dx)
    hue: np.ndarray
    saturation: np.ndarray
    brightness: np.ndarray
    contrast: np.ndarray
    noise_sigma: np.ndarray
    noise_offset: np.ndarray  # int64 (N, 2) (row, column)
    shadow: np.ndarray  # float64 (N, 5) in the order of ShadowBand

    def __len__(self) -> int:
        return len(self.angle)

    def sample(self, k: int) -> SampleParams:
        return SampleParams(
            flip_x=bool(self.flip_x[k]),
            flip_y=bool(self.flip_y[k]),
            **{f: float(getattr(self, f)[k]) for f in _SCALAR_FIELDS},
            shift=(float(self.shift[k, 0]), float(self.shift[k, 1])),
            noise_offset=(int(self.noise_offset[k, 0]), int(self.noise_offset[k, 1])),
            shadow=ShadowBand(*(float(v) for v in self.shadow[k])),
        )

    def samples(self) -> tuple[SampleParams, ...]:
        return tuple(self.sample(k) for k in range(len(self)))

    @classmethod
    def of(cls, params: tuple[SampleParams, ...] | list[SampleParams]) -> ParamsBatch:
        """The batch of given per-sample parameters (tests, replays)."""
        return cls(
            flip_x=np.array([p.flip_x for p in params], bool),
            flip_y=np.array([p.flip_y for p in params], bool),
            **{f: np.array([getattr(p, f) for p in params], np.float64) for f in _SCALAR_FIELDS},
            shift=np.array([p.shift for p in params], np.float64).reshape(-1, 2),
            noise_offset=np.array([p.noise_offset for p in params], np.int64).reshape(-1, 2),
            shadow=np.array([tuple(p.shadow) for p in params], np.float64).reshape(-1, 5),
        )


_SCALAR_FIELDS = ("angle", "scale", "hue", "saturation", "brightness", "contrast", "noise_sigma")


def draw_batch(seed: int, epoch: int, indices: np.ndarray, cfg: AugmentConfig) -> ParamsBatch:
    """Draw the parameters of samples ``indices`` of ``epoch``. A disabled augmentation (gate not passed) yields its
    identity value.

    Each augmentation is on with its probability ``p``; its value is then uniform in its ``range``.
    Translation draws dy and dx independently from ``U(-max_fraction, max_fraction)``. The shadow line has a
    uniform direction and passes within ``SHADOW_OFFSET_MAX`` diagonals of the centre.
    """
    u = sample_uniforms(seed, epoch, indices, len(GATE_SLOTS) + len(VALUE_SLOTS))
    geo, pho = cfg.geometry, cfg.photometric

    def on(gate: str, p: float) -> np.ndarray:
        return u[:, _GATE[gate]] < p

    def pick(gate: str, rr, value: str, identity: float) -> np.ndarray:
        lo, hi = rr.range
        return np.where(on(gate, rr.p), lo + (hi - lo) * u[:, _VALUE[value]], identity)

    m = geo.translation.max_fraction
    shift = (2.0 * u[:, [_VALUE["shift_y"], _VALUE["shift_x"]]] - 1.0) * m
    shift = np.where(on("translation", geo.translation.p)[:, None], shift, 0.0)

    noisy = on("noise", pho.noise.p)
    lo, hi = pho.noise.range
    window = np.minimum((u[:, _VALUE["noise_window"]] * NOISE_SHIFTS**2).astype(np.int64), NOISE_SHIFTS**2 - 1)
    offset = np.stack([window // NOISE_SHIFTS, window % NOISE_SHIFTS], axis=1)  # one uniform → (row, column)

    shaded = on("shadow", pho.shadow.p)
    theta = 2.0 * math.pi * u[:, _VALUE["shadow_direction"]]
    (s_lo, s_hi), (w_lo, w_hi) = pho.shadow.strength, pho.shadow.half_width
    band = np.stack(
        [
            np.cos(theta),
            np.sin(theta),
            (2.0 * u[:, _VALUE["shadow_offset"]] - 1.0) * SHADOW_OFFSET_MAX,
            w_lo + (w_hi - w_lo) * u[:, _VALUE["shadow_half_width"]],
            s_lo + (s_hi - s_lo) * u[:, _VALUE["shadow_strength"]],
        ],
        axis=1,
    )
    return ParamsBatch(
        flip_x=on("flip_x", geo.flip_x),
        flip_y=on("flip_y", geo.flip_y),
        angle=pick("rotation", geo.rotation, "angle", 0.0),
        scale=pick("scale", geo.scale, "scale", 1.0),
        shift=shift,
        hue=pick("hue", pho.hue, "hue", 0.0),
        saturation=pick("saturation", pho.saturation, "saturation", 1.0),
        brightness=pick("brightness", pho.brightness, "brightness", 1.0),
        contrast=pick("contrast", pho.contrast, "contrast", 1.0),
        noise_sigma=np.where(noisy, lo + (hi - lo) * u[:, _VALUE["noise_sigma"]], 0.0),
        noise_offset=np.where(noisy[:, None], offset, 0),
        shadow=np.where(shaded[:, None], band, np.array(ShadowBand(), np.float64)),
    )


def draw_params(seed: int, epoch: int, index: int, cfg: AugmentConfig) -> SampleParams:
    """One sample's parameters: row 0 of `draw_batch` for that one index (the same numbers as in any batch)."""
    return draw_batch(seed, epoch, np.array([index]), cfg).sample(0)


# ------------------------------------------------------------------------------------------------ geometry


def fit_scales(src_hw: np.ndarray, out_hw: tuple[int, int], fit: str = "contain") -> np.ndarray:
    """The isotropic resize factors, float64 (N,), of sources (N, 2) (H, W): ``contain`` fits the whole image
    (letterbox), ``cover`` fills the output."""
    if fit not in FITS:
        raise ConfigError(f"fit = {fit!r} is not one of {list(FITS)}")
    hw = np.asarray(src_hw, dtype=np.float64).reshape(-1, 2)
    oh, ow = (float(v) for v in out_hw)
    if (hw <= 0).any() or min(oh, ow) <= 0:
        raise ValueError(f"sizes must be positive: src_hw={hw.astype(int).tolist()}, out_hw={tuple(out_hw)}")
    sy, sx = oh / hw[:, 0], ow / hw[:, 1]
    return np.minimum(sy, sx) if fit == "contain" else np.maximum(sy, sx)


def fit_scale(src_hw: tuple[int, int], out_hw: tuple[int, int], fit: str = "contain") -> float:
    """One source's resize factor (`fit_scales` of one)."""
    return float(fit_scales(np.array([src_hw]), out_hw, fit)[0])


def _cos_sin(angle_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # exact values at multiples of 90 degrees, so a quarter turn maps pixels onto pixels exactly
    quarter = angle_deg / 90.0
    exact = quarter == np.round(quarter)
    turns = np.round(np.where(exact, quarter, 0.0)).astype(np.int64) % 4
    t = np.radians(angle_deg)
    c = np.where(exact, np.array([1.0, 0.0, -1.0, 0.0])[turns], np.cos(t))
    s = np.where(exact, np.array([0.0, 1.0, 0.0, -1.0])[turns], np.sin(t))
    return c, s


def affine_matrices(params: ParamsBatch, src_hw: np.ndarray, out_hw: tuple[int, int], *, fit: str = "contain") -> np.ndarray:
    """The forward affines of a batch, source continuous ``(x, y)`` → output continuous ``(x, y)``.

    Order: resize to fit (aspect kept, centred), then flip, rotation and scale about the output centre,
    then the shift. ``src_hw``: (N, 2) each source's (H, W). Returns float64 (N, 2, 3); DALI takes them with
    ``inverse_map=False``. Element-wise arithmetic, so a sample's matrix does not depend on its batch.
    """
    s0 = fit_scales(src_hw, out_hw, fit)
    hw = np.asarray(src_hw, dtype=np.float64).reshape(-1, 2)
    oh, ow = (float(v) for v in out_hw)
    tx, ty = (ow - s0 * hw[:, 1]) / 2.0, (oh - s0 * hw[:, 0]) / 2.0  # the fit: x' = s0 x + tx, y' = s0 y + ty
    c, s = _cos_sin(params.angle)
    fx, fy = np.where(params.flip_x, -1.0, 1.0), np.where(params.flip_y, -1.0, 1.0)
    # y points down: a counter-clockwise turn on screen maps (1, 0) (right) to (c, -s) (up-right)
    a, b = params.scale * (c * fx), params.scale * (s * fy)
    d, e = params.scale * (-s * fx), params.scale * (c * fy)
    cx, cy = ow / 2.0, oh / 2.0
    px = cx - (a * cx + b * cy) + params.shift[:, 1] * ow
    py = cy - (d * cx + e * cy) + params.shift[:, 0] * oh
    out = np.empty((len(hw), 2, 3))
    out[:, 0] = np.stack([a * s0, b * s0, a * tx + b * ty + px], axis=1)
    out[:, 1] = np.stack([d * s0, e * s0, d * tx + e * ty + py], axis=1)
    return out


def affine_matrix(
    params: SampleParams, src_hw: tuple[int, int], out_hw: tuple[int, int], *, fit: str = "contain"
) -> np.ndarray:
    """One sample's forward affine, float64 (2, 3): `affine_matrices` of a batch of one (the same numbers)."""
    return affine_matrices(ParamsBatch.of([params]), np.array([src_hw]), out_hw, fit=fit)[0]


def map_hw(out_hw: tuple[int, int], stride: int) -> tuple[int, int]:
    """The target-map size for an output size; the output size must be divisible by the stride."""
    oh, ow = out_hw
    if oh % stride or ow % stride:
        raise ConfigError(f"output size {oh}x{ow} is not divisible by stride {stride}; pick a multiple of it")
    return oh // stride, ow // stride


def shadow_bands(params: ParamsBatch, out_hw: tuple[int, int]) -> np.ndarray:
    """The batch's shadow bands in output pixel coordinates, float64 (N, 5) in the order of `ShadowBand`."""
    nx, ny, c, half_width, strength = params.shadow.T
    oh, ow = out_hw
    diag = math.hypot(oh, ow)
    return np.stack([nx, ny, c * diag + nx * ow / 2.0 + ny * oh / 2.0, half_width * diag, strength], axis=1)


def shadow_band(params: SampleParams, out_hw: tuple[int, int]) -> ShadowBand:
    """The shadow band in output pixel coordinates.

    A pixel centre ``(x, y)`` (``x = j + 0.5``, ``y = i + 0.5``) is shadowed when
    ``|nx·x + ny·y − c| < half_width``; it is then multiplied by ``1 − strength``.
    """
    return ShadowBand(*(float(v) for v in shadow_bands(ParamsBatch.of([params]), out_hw)[0]))
