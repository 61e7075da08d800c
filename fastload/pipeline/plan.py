"""The contract between the loader shell and its engines: a batch plan (one batch's sample indices and where their
augmentation comes from), the `Backend` protocol, and the rule that a new pass supersedes the one before."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fastload.augment.config import AugmentConfig
from fastload.augment.params import ParamsBatch, SampleParams, draw_batch

if TYPE_CHECKING:
    import torch


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


TARGET_KEYS = ("heatmap", "offset", "semantic_weight", "center_weight", "offset_weight")
"""The keys rendered after augmentation (`fastload.pipeline.batch`); none of them with ``targets: none``."""
BATCH_KEYS = ("image", "semantic", "instance", *TARGET_KEYS, "index")
"""Every batch dict has exactly these keys, in this order (dtypes and shapes: docs/design.md, Loader)."""
NATIVE_KEYS = ("valid",)
"""Added (before ``index``) at each sample's own size, ``size=None`` (`fastload.pipeline.native`)."""


def batch_keys(cfg: AugmentConfig, *, native: bool = False) -> tuple[str, ...]:
    """The keys of the batches made under ``cfg``: `BATCH_KEYS`, without `TARGET_KEYS` when it has no targets,
    with `NATIVE_KEYS` before ``index`` at native size."""
    keys = BATCH_KEYS if cfg.targets is not None else tuple(k for k in BATCH_KEYS if k not in TARGET_KEYS)
    return (*keys[:-1], *NATIVE_KEYS, keys[-1]) if native else keys


class Backend(Protocol):
    """What the loader shell talks to (`fastload.pipeline.dali.DaliBackend`, `fastload.pipeline.opencv.OpencvBackend`).

    ``iterate`` yields one batch dict per plan (keys `BATCH_KEYS`, on the loader's device), in plan order; a
    corrupt sample's error comes after the batches before it. A later ``iterate`` or ``close`` supersedes an
    unfinished pass (`Passes`). ``close`` stops every thread and process the backend started; iterating again
    starts them anew.
    """

    def iterate(self, plans: Iterator[BatchPlan]) -> Iterator[dict[str, torch.Tensor]]: ...

    def close(self) -> None: ...


class Passes:
    """The one rule for a backend's passes: a new pass (or ``close``) supersedes the one before; a superseded pass
    raises as soon as it is asked for another batch, instead of taking the new pass's batches."""

    def __init__(self, backend: str) -> None:
        self._backend = backend
        self._current = 0

    def start(self) -> int:
        """A new pass; returns its token."""
        self._current += 1
        return self._current

    def end_all(self) -> None:
        """``close()``: every pass started so far is superseded."""
        self._current += 1

    def current(self, token: int) -> bool:
        return token == self._current

    def check(self, token: int) -> None:
        """Raise unless the pass of ``token`` is the current one."""
        if token != self._current:
            raise RuntimeError(f"this {self._backend} iterator was superseded by a later iterate() call or close()")
