"""`CacheConfig`: how the cache builder stores what it computes (strict YAML, ``configs/cache.yaml``).

Since schema 2 the cache holds only what the loaders cannot derive: the source image bytes, the semantic and
instance masks (LZ4 label members) and the instance table. Heat and offset maps are rendered by the loaders after
augmentation, so their settings (sigma, stride, loss weights) live in the loader's config (``targets:`` in
``configs/default.yaml``), not here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastload.errors import ConfigError
from fastload.validation import MAX_SAMPLES_PER_SHARD, check_int, is_int, short_repr
from fastload.yamlio import from_mapping, is_config_name, load_yaml, shipped_config

# 512 samples per shard: at ~0.1-0.3 MB per 800x600 sample a shard is ~50-150 MB, the range where sequential
# reads run at disk speed and object stores serve whole shards efficiently, while a 10k-image set still has
# ~20 shards to spread over build workers and nodes, and a killed build loses at most one shard per worker.
DEFAULT_SAMPLES_PER_SHARD = 512
# LZ4-HC level 3: on the sample photos the two label members take 6.1 % of the JPEG bytes and cost 5.3 ms per
# 800x600 sample to compress; level 9 saves 0.2 % of the JPEG bytes for 7x the time, plain LZ4 (0) is 7x faster
# but takes 11.5 %. Decoding costs the same at every level.
DEFAULT_LABEL_COMPRESSION = 3
# 100 megapixels: a 12-30 MP phone or DSLR photo passes with room to spare, and the largest image it lets through
# decodes to 300 MB (RGB) with 300 MB of masks, which a loader worker can hold; a header declaring more (a
# 30000 x 30000 JPEG of a few KB) is refused before anything decodes it. Recorded in the manifest: the loaders
# and verify check every stored image against the value its cache was built with.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
ExifOrientation = Literal["apply", "ignore"]
EXIF_ORIENTATIONS = ("apply", "ignore")

# keys of schema-1 cache configs, and where each went
_MOVED = {
    "sigma": "moved to the loader's config: `targets: {sigma: ...}` in configs/default.yaml",
    "stride": "moved to the loader's config: `targets: {stride: ...}` in configs/default.yaml",
    "png_compression": "labels are LZ4 members now: use `label_compression` (0..12)",
    "offset_scale": "offset maps are no longer stored (the loaders render them after augmentation)",
}


@dataclass(frozen=True)
class CacheConfig:
    """Settings of an offline cache build.

    Attributes
    ----------
    samples_per_shard : int
        Images per tar shard, 1..1048576. Shard ``k`` holds images ``[k*S, (k+1)*S)``.
    label_compression : int
        0 = LZ4, 1..12 = LZ4-HC at that level, for the semantic and instance members; changes only their size
        and the build time, never the decoded values or the decoding cost.
    exif_orientation : "apply" or "ignore"
        "apply" (the default): annotations are on the picture as displayed, its orientation tag (EXIF, TIFF)
        applied, as OpenCV's imread, labelme and CVAT show it; an image with a tag other than 1 is stored
        turned to that picture (re-encoded, listed as normalised). "ignore": annotations address the stored
        pixel grid (a data set annotated on it); the image is stored as it is and its tag is never applied.
    max_image_pixels : int
        Largest height x width an image may declare in its header (>= 1): a bigger one is refused at build,
        before it is decoded, and so is a cache sample at load (see `DEFAULT_MAX_IMAGE_PIXELS`).
    things : tuple of category ids (int) and names (str), or None
        Which categories of a COCO instances file are *things* (instances: ids, centres, offsets); the others
        are *stuff*, their pixels in the semantic mask only (instance 0). None (the default): every category is
        a thing. Only for COCO instances: COCO panoptic (``isthing``) and Cityscapes (``hasInstances``) say it
        themselves, and a build refuses ``things`` for them. An id or name that is not a category is an error
        at build time (`fastload.build.coco_instances.from_coco`).
    """

    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD
    label_compression: int = DEFAULT_LABEL_COMPRESSION
    exif_orientation: ExifOrientation = "apply"
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    things: tuple[int | str, ...] | None = None

    def __post_init__(self) -> None:
        check_int(
            "samples_per_shard", self.samples_per_shard, 1, MAX_SAMPLES_PER_SHARD,
            why="a shard's index is read whole when a cache opens; use more shards",
        )  # fmt: skip
        if not is_int(self.label_compression) or not 0 <= self.label_compression <= 12:
            raise ConfigError(
                f"label_compression must be 0 (LZ4) or an LZ4-HC level 1..12, got {short_repr(self.label_compression)}"
            )
        if self.exif_orientation not in EXIF_ORIENTATIONS:
            raise ConfigError(f"exif_orientation must be one of {list(EXIF_ORIENTATIONS)}, got {self.exif_orientation!r}")
        if not is_int(self.max_image_pixels) or self.max_image_pixels < 1:
            raise ConfigError(f"max_image_pixels must be >= 1, got {short_repr(self.max_image_pixels)}")
        if self.things is not None:
            object.__setattr__(self, "things", _check_things(self.things))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_things(things: Any) -> tuple[int | str, ...]:
    """``things`` as a tuple of category ids (ints >= 0) and names (non-empty strings), each at most once."""
    if isinstance(things, (str, bytes)) or not isinstance(things, (list, tuple)):
        raise ConfigError(f"things must be a list of category ids and names (or null: every category), got {short_repr(things)}")
    seen: set[int | str] = set()
    for entry in things:
        ok = (is_int(entry) and entry >= 0) or (isinstance(entry, str) and entry != "")
        if not ok:
            raise ConfigError(f"things: {short_repr(entry)} is neither a category id (an integer >= 0) nor a category name")
        if entry in seen:
            raise ConfigError(f"things: {short_repr(entry)} is listed twice")
        seen.add(entry)
    return tuple(int(e) if is_int(e) else e for e in things)


def _check_moved(mapping: Any, where: str) -> None:
    if isinstance(mapping, dict):
        moved = [key for key in mapping if key in _MOVED]
        if moved:
            raise ConfigError(
                f"{where}: {', '.join(f'{k!r} {_MOVED[k]}' for k in moved)} (cache schema 2); remove it from the "
                "cache config"
            )


# the shipped cache config's name: ``--config cache`` is configs/cache.yaml, installed with fastload
SHIPPED_CACHE_CONFIG = "cache"


def load_cache_config(path: str | Path | None) -> CacheConfig:
    """Read a cache config YAML strictly (unknown or duplicate keys are errors); ``None`` → defaults.

    A bare name (no ``/``, no suffix) is a shipped config: ``"cache"`` is ``configs/cache.yaml``.
    """
    if path is None:
        return CacheConfig()
    if isinstance(path, str) and is_config_name(path):
        if path != SHIPPED_CACHE_CONFIG:
            raise ConfigError(
                f"cache config: {path!r} is not a shipped cache config ({SHIPPED_CACHE_CONFIG!r}); pass that name "
                f"or a YAML file's path (./{path} for a file of that name)"
            )
        path = shipped_config(path)
    data = load_yaml(path)
    _check_moved(data, str(path))
    return from_mapping(CacheConfig, data, where=str(path))


def as_cache_config(config: CacheConfig | str | Path | dict | None) -> CacheConfig:
    """Accept a `CacheConfig`, a YAML path, a mapping of keys, or ``None`` (defaults)."""
    if isinstance(config, CacheConfig):
        return config
    if isinstance(config, dict):
        _check_moved(config, "config")
        return from_mapping(CacheConfig, config, where="config")
    if config is None or isinstance(config, (str, Path)):
        return load_cache_config(config)
    raise ConfigError(f"config must be a CacheConfig, a YAML path, a mapping or None, got {type(config).__name__}")
