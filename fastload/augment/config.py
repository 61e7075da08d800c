"""Augmentation configuration: small frozen dataclasses, loaded strictly from YAML.

Every augmentation is switched on per sample with its own probability ``p``; when on, its value is drawn
uniformly from ``range`` (see :func:`fastload.augment.params.draw_batch`). A field left out of a YAML file
keeps its dataclass default, which is always the *identity* (no augmentation), so ``AugmentConfig()`` equals
``AugmentConfig.none()``. Unknown and duplicate keys are errors.

``configs/default.yaml`` and ``configs/none.yaml`` hold the two shipped configurations; a test checks that
they equal :meth:`AugmentConfig.default` and :meth:`AugmentConfig.none`. Installed with the package, they (and
any other ``configs/*.yaml``) are found by name: ``augment="default"`` from any working directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fastload import validation as v
from fastload.errors import ConfigError
from fastload.validation import check_int, check_number, check_pair, check_probability, short_repr
from fastload.yamlio import from_mapping, is_config_name, load_yaml, shipped_config, shipped_config_names

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

Fit = Literal["contain", "cover"]
FITS: tuple[str, ...] = ("contain", "cover")


@dataclass(frozen=True)
class RandomRange:
    """An augmentation applied with probability ``p``; its value is drawn uniformly from ``range``.

    Bounds on ``range`` depend on what it controls, so the owner (geometry / photometric) checks them.
    """

    p: float = 0.0
    range: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class Translation:
    """Shift by ``U(-max_fraction, max_fraction)`` of the output height (dy) and width (dx), independently."""

    p: float = 0.0
    max_fraction: float = 0.0


@dataclass(frozen=True)
class Shadow:
    """A straight dark band: pixels within ``half_width`` of a random line are scaled by ``1 - strength``.

    strength   : range in [0, 1]
    half_width : range in [0, 1], fraction of the output diagonal
    """

    p: float = 0.0
    strength: tuple[float, float] = (0.0, 0.0)
    half_width: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class GeometryConfig:
    """Geometric augmentation, applied to the image and every label map with one affine matrix."""

    fit: Fit = "contain"
    flip_x: float = 0.0  # probability of a left-right flip
    flip_y: float = 0.0  # probability of an up-down flip
    rotation: RandomRange = RandomRange(0.0, (0.0, 0.0))  # degrees, CCW
    scale: RandomRange = RandomRange(0.0, (1.0, 1.0))  # factor
    translation: Translation = Translation()

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise ConfigError(f"geometry.fit: {short_repr(self.fit)} is not one of {list(FITS)}")
        check_probability("geometry.flip_x", self.flip_x)
        check_probability("geometry.flip_y", self.flip_y)
        _check_random_range("geometry.rotation", self.rotation, -v.MAX_DEGREES, v.MAX_DEGREES)
        _check_random_range("geometry.scale", self.scale, v.MIN_SCALE, v.MAX_SCALE)
        check_probability("geometry.translation.p", self.translation.p)
        check_number("geometry.translation.max_fraction", self.translation.max_fraction, 0.0, 1.0)


@dataclass(frozen=True)
class PhotometricConfig:
    """Colour augmentation, applied to the image only."""

    hue: RandomRange = RandomRange(0.0, (0.0, 0.0))  # degrees
    saturation: RandomRange = RandomRange(0.0, (1.0, 1.0))  # factor
    brightness: RandomRange = RandomRange(0.0, (1.0, 1.0))  # factor
    contrast: RandomRange = RandomRange(0.0, (1.0, 1.0))  # factor
    noise: RandomRange = RandomRange(0.0, (0.0, 0.0))  # sigma, 0..255 units
    shadow: Shadow = Shadow()

    def __post_init__(self) -> None:
        _check_random_range("photometric.hue", self.hue, -v.MAX_DEGREES, v.MAX_DEGREES)
        _check_random_range("photometric.saturation", self.saturation, 0.0, v.MAX_FACTOR)
        _check_random_range("photometric.brightness", self.brightness, 0.0, v.MAX_FACTOR)
        _check_random_range("photometric.contrast", self.contrast, 0.0, v.MAX_FACTOR)
        _check_random_range("photometric.noise", self.noise, 0.0, v.MAX_NOISE_SIGMA)
        check_probability("photometric.shadow.p", self.shadow.p)
        check_pair("photometric.shadow.strength", self.shadow.strength, 0.0, 1.0)
        check_pair("photometric.shadow.half_width", self.shadow.half_width, 0.0, 1.0)


@dataclass(frozen=True)
class TargetsConfig:
    """The Panoptic-DeepLab targets the loaders render after augmentation, from the warped instance mask.

    sigma                 : Gaussian sigma of the centre heatmap, in output (map) pixels, in (0, 64]
    stride                : heatmap and offsets are (H / stride, W / stride) of the output size, integer 1..64
    small_instance_area   : instances with fewer visible output pixels than this count as small, 0..64 Mi
    small_instance_weight : ``semantic_weight`` on the pixels of small instances (1 elsewhere), in [0, 1000]

    The bounds are `fastload.validation`'s (each instance's Gaussian window is (6σ+3)² pixels, and the batched
    renderer holds one per instance of a batch at once).
    """

    sigma: float = 8.0
    stride: int = 1
    small_instance_area: int = 4096
    small_instance_weight: float = 3.0

    def __post_init__(self) -> None:
        check_number(
            "targets.sigma", self.sigma, 0.0, v.MAX_SIGMA, open_low=True,
            why="each instance's Gaussian window is (6*sigma+3)^2 pixels, and a batch renders one per instance",
        )  # fmt: skip
        check_int("targets.stride", self.stride, 1, v.MAX_STRIDE)
        check_int("targets.small_instance_area", self.small_instance_area, 0, v.MAX_PIXELS)
        check_number("targets.small_instance_weight", self.small_instance_weight, 0.0, v.MAX_SMALL_INSTANCE_WEIGHT)

    @property
    def kernel_args(self) -> dict[str, float | int]:
        """The fields as the target kernels' keyword arguments (`fastload.targets.sample_targets`,
        `render_targets`: the same names)."""
        return dataclasses.asdict(self)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class NormalizeConfig:
    """``(img / 255 - mean) / std`` per RGB channel; mean and std on the 0..1 scale."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        for key, values in (("normalize.mean", self.mean), ("normalize.std", self.std)):
            if not isinstance(values, (tuple, list)) or len(values) != 3:
                raise ConfigError(f"{key} = {short_repr(values)}: expected 3 values (R, G, B)")
        for c, m in enumerate(self.mean):
            check_number(f"normalize.mean[{c}]", m, 0.0, 1.0)
        for c, s in enumerate(self.std):  # > 0, and not so small that (x/255 - mean)/std leaves +-1000
            check_number(f"normalize.std[{c}]", s, v.MIN_STD, v.MAX_STD)


@dataclass(frozen=True)
class AugmentConfig:
    """Everything the loaders need to know: augmentation, normalisation and the targets rendered after them.

    ``AugmentConfig()`` is no augmentation (with the default targets). ``targets=None`` (YAML ``targets: none``)
    renders no targets at all: the batches hold the image and the masks only (semantic-only training).
    """

    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    targets: TargetsConfig | None = field(default_factory=TargetsConfig)

    @property
    def map_stride(self) -> int:
        """The targets' stride (what an output size must be divisible by); 1 without targets."""
        return self.targets.stride if self.targets is not None else 1

    @classmethod
    def none(cls) -> AugmentConfig:
        """Resize-to-fit and normalise only: every augmentation off."""
        return cls()

    @classmethod
    def default(cls) -> AugmentConfig:
        """The training defaults (the same values as ``configs/default.yaml``)."""
        return cls(
            geometry=GeometryConfig(
                fit="contain",
                flip_x=0.5,
                flip_y=0.0,
                rotation=RandomRange(0.3, (-15.0, 15.0)),
                scale=RandomRange(0.5, (0.75, 1.25)),
                translation=Translation(0.5, 0.1),
            ),
            photometric=PhotometricConfig(
                hue=RandomRange(0.5, (-10.0, 10.0)),
                saturation=RandomRange(0.5, (0.7, 1.3)),
                brightness=RandomRange(0.5, (0.8, 1.2)),
                contrast=RandomRange(0.5, (0.8, 1.2)),
                noise=RandomRange(0.2, (2.0, 8.0)),
                shadow=Shadow(0.2, (0.2, 0.5), (0.03, 0.12)),
            ),
            normalize=NormalizeConfig(),
            targets=TargetsConfig(),
        )

    @classmethod
    def from_yaml(cls, path: str | Path | Traversable) -> AugmentConfig:
        """Load a YAML file strictly: unknown keys, duplicate keys and out-of-range values are ConfigErrors."""
        data = load_yaml(path)
        if isinstance(data, dict) and data.get("targets") == "none":  # `targets: none`: no targets rendered
            data = {**data, "targets": None}
        try:
            return from_mapping(cls, data, where=str(path))
        except ConfigError as exc:
            msg = str(exc)
            if str(path) in msg:
                raise
            raise ConfigError(f"{path}: {msg}") from exc

    def replace(self, **changes) -> AugmentConfig:
        """A copy with top-level sections replaced (``geometry=``, ``photometric=``, ``normalize=``, ``targets=``)."""
        return dataclasses.replace(self, **changes)


def load_augment(value: None | str | Path | AugmentConfig) -> AugmentConfig:
    """Resolve what a user passed as ``augment=``.

    ``None`` or ``"none"`` → :meth:`AugmentConfig.none`; ``"default"`` → :meth:`AugmentConfig.default`; another
    bare name (letters, digits, ``_``, ``-``) → the shipped ``configs/<name>.yaml``, installed with fastload and
    found from any working directory; an ``AugmentConfig`` → itself; anything else is a path to a YAML file.
    """
    if value is None:
        return AugmentConfig.none()
    if isinstance(value, AugmentConfig):
        return value
    if isinstance(value, str) and value in ("default", "none"):
        return AugmentConfig.default() if value == "default" else AugmentConfig.none()
    if isinstance(value, str) and is_config_name(value):
        shipped = shipped_config(value) if value not in NOT_AUGMENT_CONFIGS else None
        if shipped is None:
            raise ConfigError(
                f"augment: {value!r} is not a shipped augmentation config ({', '.join(augment_config_names())}); "
                f"pass one of those names, an AugmentConfig, or a YAML file's path (./{value} for a file of that name)"
            )
        return AugmentConfig.from_yaml(shipped)
    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.is_file() and path.suffix in (".yaml", ".yml") and path.stem in augment_config_names():
            raise ConfigError(
                f"augment: config file {str(path)!r} does not exist (relative to {Path.cwd()}); the shipped config "
                f"of that name is installed with fastload: augment={path.stem!r} works from any directory"
            )
        return AugmentConfig.from_yaml(path)
    raise ConfigError(
        f"augment: expected None, 'default', 'none', a YAML path or an AugmentConfig, got {type(value).__name__}"
    )


# shipped configs that are not augmentation configs (the cache builder's)
NOT_AUGMENT_CONFIGS = frozenset({"cache"})


def augment_config_names() -> list[str]:
    """The shipped augmentation configs, by name (``configs/*.yaml`` but the cache builder's)."""
    return [name for name in shipped_config_names() if name not in NOT_AUGMENT_CONFIGS]


# ----------------------------------------------------------------------------------------------- checks


def _check_random_range(key: str, rr: RandomRange, lo: float, hi: float) -> None:
    check_probability(f"{key}.p", rr.p)
    check_pair(f"{key}.range", rr.range, lo, hi)
