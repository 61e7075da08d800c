"""`CacheConfig`: what the cache builder computes and how it stores it (strict YAML, ``configs/cache.yaml``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastload.errors import ConfigError
from fastload.yamlio import from_mapping, load_yaml

# 512 samples per shard: at ~0.1-0.3 MB per 800x600 sample a shard is ~50-150 MB, the range where sequential
# reads run at disk speed and object stores serve whole shards efficiently, while a 10k-image set still has
# ~20 shards to spread over build workers and nodes, and a killed build loses at most one shard per worker.
DEFAULT_SAMPLES_PER_SHARD = 512


@dataclass(frozen=True)
class CacheConfig:
    """Settings of an offline cache build.

    Attributes
    ----------
    sigma : float
        Gaussian sigma of the centre heatmap, in map pixels (> 0).
    stride : int
        Target maps are ``(ceil(H/stride), ceil(W/stride))`` (>= 1); see docs/design.md "Stride".
    samples_per_shard : int
        Images per tar shard (>= 1). Shard ``k`` holds images ``[k*S, (k+1)*S)``.
    png_compression : int
        zlib level 0..9 of the label PNGs; changes only size and build time, never the decoded values.
    offset_scale : int
        Offsets are stored as ``round(v * offset_scale) + 32768`` in uint16 (1/offset_scale px steps,
        range +-32768/offset_scale px; larger values are clipped and counted in the manifest).
    """

    sigma: float = 8.0
    stride: int = 1
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD
    png_compression: int = 6
    offset_scale: int = 8

    def __post_init__(self) -> None:
        for name in ("stride", "samples_per_shard", "png_compression", "offset_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)):
            raise ConfigError(f"sigma must be a number, got {self.sigma!r}")
        if not self.sigma > 0:
            raise ConfigError(f"sigma must be > 0 (map pixels), got {self.sigma!r}")
        if self.stride < 1:
            raise ConfigError(f"stride must be an integer >= 1, got {self.stride!r}")
        if self.samples_per_shard < 1:
            raise ConfigError(f"samples_per_shard must be >= 1, got {self.samples_per_shard!r}")
        if not 0 <= self.png_compression <= 9:
            raise ConfigError(f"png_compression must be a zlib level 0..9, got {self.png_compression!r}")
        if not 1 <= self.offset_scale <= 1024:
            raise ConfigError(f"offset_scale must be in 1..1024 (steps per pixel), got {self.offset_scale!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_cache_config(path: str | Path | None) -> CacheConfig:
    """Read a cache config YAML strictly (unknown or duplicate keys are errors); ``None`` → defaults."""
    if path is None:
        return CacheConfig()
    return from_mapping(CacheConfig, load_yaml(path), where=str(path))


def as_cache_config(config: CacheConfig | str | Path | dict | None) -> CacheConfig:
    """Accept a `CacheConfig`, a YAML path, a mapping of keys, or ``None`` (defaults)."""
    if isinstance(config, CacheConfig):
        return config
    if isinstance(config, dict):
        return from_mapping(CacheConfig, config, where="config")
    if config is None or isinstance(config, (str, Path)):
        return load_cache_config(config)
    raise ConfigError(f"config must be a CacheConfig, a YAML path, a mapping or None, got {type(config).__name__}")
