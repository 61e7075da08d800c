"""`open_cache`: a built cache's samples for your own code, each with its Panoptic-DeepLab maps.

The cache layer (`fastload.cache.reader.CacheDataset`) gives the samples as stored: image, masks, instance table.
The maps are not stored — the loaders render them after augmentation — so this layer, above both the cache and
the targets, computes them on access for the unaugmented sample, with `fastload.targets.center_targets`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastload.cache.reader import CacheDataset
from fastload.targets import center_targets, check_target_params


class CacheSamples(CacheDataset):
    """The samples of a cache (`CacheDataset`), each also with ``heatmap`` float32 (H', W') in [0, 1] and
    ``offset`` float32 (2, H', W') (dy, dx) to the instance centre in map pixels, ``(H', W') =
    (ceil(H/stride), ceil(W/stride))``, computed on access with `center_targets` (``sigma`` in map pixels)."""

    def __init__(self, root: str | Path, *, sigma: float = 8.0, stride: int = 1) -> None:
        self.sigma, self.stride = check_target_params(sigma, stride)
        super().__init__(root)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        sample = super().__getitem__(i)
        sample["heatmap"], sample["offset"] = center_targets(sample["instance"], self.sigma, stride=self.stride)
        return sample


def open_cache(path: str | Path, *, sigma: float = 8.0, stride: int = 1) -> CacheSamples:
    """Open a built cache folder: a `Sequence` of its samples (see `CacheSamples` and `CacheDataset`).

    ``sigma`` (map pixels) and ``stride`` set the heatmap and offsets that ``cache[i]`` computes on access.

    Raises
    ------
    CacheError
        No manifest (the build did not finish: resume it or merge the nodes' parts), a manifest from a newer
        fastload (upgrade) or an older one (rebuild), or a missing / short shard or shard index (named).
    ConfigError
        ``sigma`` or ``stride`` out of range.
    """
    return CacheSamples(path, sigma=sigma, stride=stride)
