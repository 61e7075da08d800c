"""What the loader shell hands a backend: one batch's sample indices, and where their augmentation comes from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastload.augment.config import AugmentConfig
from fastload.augment.params import ParamsBatch, SampleParams, draw_batch


@dataclass(frozen=True)
class BatchPlan:
    """One batch for one rank.

    indices : int64 (N,) global cache indices, N <= batch_size (N may be 0 on a short last step)
    params : explicit parameters, one per index (tests, replays of a given augmentation); None: drawn as below
    seed, epoch : the samples' parameters are ``draw_batch(seed, epoch, indices, cfg)``, drawn by
        whoever makes the batch (a worker process), never by the training process

    A plan is a few integers, so that handing it to a worker process costs nothing per sample.
    """

    indices: np.ndarray
    params: tuple[SampleParams, ...] | None = None
    seed: int = 0
    epoch: int = 0

    def __post_init__(self) -> None:
        if self.params is not None and len(self.indices) != len(self.params):
            raise ValueError(f"BatchPlan: {len(self.indices)} indices but {len(self.params)} parameter sets")

    def __len__(self) -> int:
        return len(self.indices)

    def sample_params(self, cfg: AugmentConfig) -> ParamsBatch:
        """The samples' augmentation parameters, in order: the explicit ones, or drawn from (seed, epoch, index)."""
        if self.params is not None:
            return ParamsBatch.of(self.params)
        return draw_batch(self.seed, self.epoch, self.indices, cfg)


BATCH_KEYS = ("image", "semantic", "instance", "heatmap", "offset", "semantic_weight", "index")
"""Every batch dict has exactly these keys (dtypes and shapes: docs/design.md, Loader)."""
