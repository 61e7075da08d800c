"""Epoch order and rank sharding: pure functions of (n, seed, epoch, batch size, world size).

Both loaders share these, so "which sample goes to which rank in which batch" is decided in one place and is
testable without any loader.

Policy (a table, not interacting booleans):

| drop_last | full global steps (world_size·batch_size samples) | the last, incomplete step            |
| --------- | -------------------------------------------------- | ------------------------------------ |
| False     | each rank gets exactly batch_size samples          | split as evenly as possible by rank; |
|           |                                                    | a rank may get an empty batch when   |
|           |                                                    | fewer samples than ranks remain      |
| True      | as above                                           | dropped                              |

Every rank therefore yields the same number of batches per epoch (DDP's collectives need that), and with
``drop_last=False`` every sample is yielded exactly once per epoch across ranks — no padding duplicates.
"""

from __future__ import annotations

import numpy as np

# mixed into the seed so the epoch order and the per-sample augmentation streams are independent
_ORDER_STREAM = 0x0D5E


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The global sample order of one epoch: int64 (n,), a permutation of range(n) when ``shuffle``.

    The permutation covers the whole dataset (not a buffer) and depends only on (seed, epoch), so every
    rank computes the same one without communicating.
    """
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([int(seed), int(epoch), _ORDER_STREAM])
    return rng.permutation(n).astype(np.int64)


def num_batches(n: int, *, batch_size: int, world_size: int, drop_last: bool) -> int:
    """Batches per epoch on every rank."""
    step = batch_size * world_size
    full, rest = divmod(n, step)
    return full + (1 if rest and not drop_last else 0)


def rank_batches(
    order: np.ndarray, *, batch_size: int, rank: int, world_size: int, drop_last: bool
) -> list[np.ndarray]:
    """Split an epoch order into this rank's batches (int64 arrays), following the table above."""
    step = batch_size * world_size
    full = len(order) // step
    head = order[: full * step].reshape(full, world_size, batch_size)[:, rank]
    batches = list(head)
    rest = order[full * step :]
    if len(rest) and not drop_last:
        batches.append(np.array_split(rest, world_size)[rank])
    return batches
