"""Epoch order and rank sharding: every sample exactly once per epoch, equal batch counts on every rank."""

import numpy as np
import pytest

from fastload.pipeline.sampling import epoch_order, num_batches, rank_batches


@pytest.mark.parametrize("n", [1, 7, 23, 48, 100])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [1, 4, 5])
def test_every_sample_once_per_epoch_across_ranks(n, world_size, batch_size):
    order = epoch_order(n, seed=3, epoch=1, shuffle=True)
    per_rank = [
        rank_batches(order, batch_size=batch_size, rank=r, world_size=world_size, drop_last=False)
        for r in range(world_size)
    ]
    seen = np.concatenate([b for batches in per_rank for b in batches])
    assert np.array_equal(np.sort(seen), np.arange(n))
    expected = num_batches(n, batch_size=batch_size, world_size=world_size, drop_last=False)
    assert all(len(batches) == expected for batches in per_rank)  # DDP: same number of steps everywhere
    assert all(len(b) <= batch_size for batches in per_rank for b in batches)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_drop_last_keeps_only_full_steps(world_size):
    n, batch_size = 23, 4
    order = epoch_order(n, seed=0, epoch=0, shuffle=True)
    per_rank = [rank_batches(order, batch_size=4, rank=r, world_size=world_size, drop_last=True) for r in range(world_size)]
    assert all(len(b) == batch_size for batches in per_rank for b in batches)
    kept = sum(len(b) for batches in per_rank for b in batches)
    assert kept == (n // (batch_size * world_size)) * batch_size * world_size
    assert len(per_rank[0]) == num_batches(n, batch_size=4, world_size=world_size, drop_last=True)


def test_single_process_matches_a_plain_dataloader_split():
    order = epoch_order(10, seed=0, epoch=0, shuffle=False)
    batches = rank_batches(order, batch_size=4, rank=0, world_size=1, drop_last=False)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_order_depends_on_seed_and_epoch_only():
    a = epoch_order(1000, seed=1, epoch=0, shuffle=True)
    assert np.array_equal(a, epoch_order(1000, seed=1, epoch=0, shuffle=True))
    assert not np.array_equal(a, epoch_order(1000, seed=1, epoch=1, shuffle=True))
    assert not np.array_equal(a, epoch_order(1000, seed=2, epoch=0, shuffle=True))


def test_shuffle_covers_the_whole_dataset():
    # a buffer shuffle keeps samples near their start; a full permutation moves them anywhere.
    n = 10_000
    order = epoch_order(n, seed=0, epoch=0, shuffle=True)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    displacement = np.abs(position - np.arange(n))
    # for a uniform permutation the mean displacement is n/3; a 1,000-sample buffer would stay near 500
    assert abs(displacement.mean() / n - 1 / 3) < 0.02
    # first tenth of the epoch draws from every tenth of the dataset about equally (chi-square, 9 dof)
    counts = np.bincount(order[: n // 10] * 10 // n, minlength=10)
    chi2 = ((counts - n / 100) ** 2 / (n / 100)).sum()
    assert chi2 < 27.9  # p = 0.001
