"""What the loader shell hands a backend: one batch's sample indices and their augmentation parameters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastload.augment.params import SampleParams


@dataclass(frozen=True)
class BatchPlan:
    """One batch for one rank.

    indices : int64 (N,) global cache indices, N <= batch_size (N may be 0 on a short last step)
    params  : one SampleParams per index, drawn by the shell from (seed, epoch, index)
    """

    indices: np.ndarray
    params: tuple[SampleParams, ...]

    def __post_init__(self) -> None:
        if len(self.indices) != len(self.params):
            raise ValueError(f"BatchPlan: {len(self.indices)} indices but {len(self.params)} parameter sets")


BATCH_KEYS = ("image", "semantic", "instance", "heatmap", "offset", "semantic_weight", "index")
"""Every batch dict has exactly these keys (dtypes and shapes: docs/design.md, Loader)."""
