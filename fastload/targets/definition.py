"""The NumPy definition of the targets (one mask at a time), instance tables, table batching.

See the package docstring (`fastload.targets`) for the definitions. ``batch_tables`` imports torch when
called: this module is NumPy-only at import.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fastload.errors import ConfigError
from fastload.labels import IGNORE
from fastload.validation import MAX_PIXELS, MAX_SIGMA, MAX_SMALL_INSTANCE_WEIGHT, MAX_STRIDE, short_repr

if TYPE_CHECKING:
    import torch

# pixels per block of rows in _offsets: temporaries of ~256 kB stay in the allocator's cache
_BLOCK_PIXELS = 1 << 15


def instance_centres(instance_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, pixel counts and centres of the instances present in a mask.

    Parameters
    ----------
    instance_mask : integer (H, W)
        Instance ids, 0 = background; ids need not be contiguous.

    Returns
    -------
    ids : int32 (N,)
        The ids present, ascending.
    counts : int64 (N,)
        Visible pixel count of each.
    centres : float64 (N, 2)
        ``(mean row, mean column)`` of each instance's pixels.
    """
    mask = _check_mask(instance_mask)
    stats = _instance_stats(_row_runs(mask), mask.shape[1])
    return stats.ids, stats.counts, stats.centres


def center_targets(
    instance_mask: np.ndarray, sigma: float = 8.0, *, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Centre heatmap and centre offsets of an instance mask.

    Vectorized and foreground-light: the mask is cut into horizontal runs of equal id (one pass);
    centres come from ``bincount`` over the runs; ``dy`` is constant along a run and is repeated out,
    ``dx`` is gathered from a small (instances × columns) table; each Gaussian window is maxed into its
    own (2r+1)² patch of the heatmap (a loop over instances that touches only their windows). The results equal detectron2's ``PanopticDeepLabTargetGenerator`` loop bit for bit (the
    differences are computed in float64 and rounded once to float32, as there).

    Parameters
    ----------
    instance_mask : integer (H, W)
        Instance ids, 0 = background.
    sigma : float
        Gaussian standard deviation in map pixels (> 0).
    stride : int
        Output stride (≥ 1); maps are ``(ceil(H/stride), ceil(W/stride))``.

    Returns
    -------
    heatmap : float32 (H', W')
        In [0, 1], 1 at each (rounded) centre.
    offset : float32 (2, H', W')
        ``(dy, dx)`` = centre − pixel, in map pixels, on instance pixels; 0 elsewhere.
    """
    mask = _check_mask(instance_mask)
    sigma, stride = check_target_params(sigma, stride)
    runs = _row_runs(mask)
    return _center_targets(mask, runs, _instance_stats(runs, mask.shape[1]), sigma, stride)


def sample_targets(
    instance_mask: np.ndarray,
    *,
    sigma: float = 8.0,
    stride: int = 1,
    small_instance_area: int = 4096,
    small_instance_weight: float = 3.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`center_targets` and `semantic_weights` of one mask, from one pass over its runs (what a loader renders).

    Returns heatmap float32 (H', W'), offset float32 (2, H', W'), semantic weight float32 (H, W): the same
    arrays as the two functions called apart.
    """
    mask = _check_mask(instance_mask)
    sigma, stride = check_target_params(sigma, stride)
    area, weight = check_weight_params(small_instance_area, small_instance_weight)
    runs = _row_runs(mask)
    stats = _instance_stats(runs, mask.shape[1])
    heatmap, offset = _center_targets(mask, runs, stats, sigma, stride)
    return heatmap, offset, _semantic_weights(mask, runs, stats, area, weight)


def panoptic_weights(semantic_mask: np.ndarray, instance_mask: np.ndarray, *, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Panoptic-DeepLab's centre and offset loss weights of one sample, at the maps' resolution.

    Returns ``center_weight`` float32 (H', W'): 0 where the semantic mask is `IGNORE` (crowd regions, void /
    unlabelled pixels, outside the image after a warp), else 1; and ``offset_weight`` float32 (H', W'): 1 on
    thing pixels (instance id > 0), else 0 — detectron2's ``PanopticDeepLabTargetGenerator`` weights with
    ``ignore_stuff_in_offset=True``, sampled on the maps' grid as the offsets are (``stride``).
    """
    semantic, instance = np.asarray(semantic_mask), _check_mask(instance_mask)
    if semantic.shape != instance.shape:
        raise ValueError(f"semantic mask {semantic.shape} and instance mask {instance.shape} differ in shape")
    _, stride = check_target_params(1.0, stride)
    if stride > 1:
        semantic, instance = _subsample(semantic, stride), _subsample(instance, stride)
    return (semantic != IGNORE).astype(np.float32), (instance > 0).astype(np.float32)


def _center_targets(mask: np.ndarray, runs: _Runs, stats: _Stats, sigma: float, stride: int) -> tuple[np.ndarray, np.ndarray]:
    centres = stats.centres
    if stride > 1:
        centres = (centres + 0.5) / stride - 0.5
        mask = _subsample(mask, stride)
        runs = _row_runs(mask)
        stats = _Stats(stats.ids, stats.counts, centres, _run_slots(runs.label, stats.ids))
    heatmap = _heatmap(centres, mask.shape, sigma)
    offset = _offsets(mask, runs, stats)
    return heatmap, offset


def semantic_weights(
    instance_mask: np.ndarray, *, small_instance_area: int = 4096, small_instance_weight: float = 3.0
) -> np.ndarray:
    """Panoptic-DeepLab's per-pixel semantic loss weights: small instances weigh more.

    Parameters
    ----------
    instance_mask : integer (H, W)
        Instance ids, 0 = background.
    small_instance_area : int
        An instance whose visible pixel count in this mask (full resolution) is below this is small (≥ 0).
    small_instance_weight : float
        Weight of a small instance's pixels (finite, ≥ 0).

    Returns
    -------
    float32 (H, W)
        ``small_instance_weight`` on the pixels of small instances, 1 elsewhere (background included).
    """
    mask = _check_mask(instance_mask)
    area, weight = check_weight_params(small_instance_area, small_instance_weight)
    runs = _row_runs(mask)
    return _semantic_weights(mask, runs, _instance_stats(runs, mask.shape[1]), area, weight)


def _semantic_weights(mask: np.ndarray, runs: _Runs, stats: _Stats, area: int, weight: float) -> np.ndarray:
    fg = stats.slot >= 0
    small = np.zeros(runs.start.size, dtype=bool)
    small[fg] = stats.counts[stats.slot[fg]] < area
    # the runs tile the mask in raster order: one weight per run, repeated out
    run_weight = np.where(small, np.float32(weight), np.float32(1))
    return np.repeat(run_weight, runs.length).reshape(mask.shape)


def batch_tables(tables: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad per-image tables into one batch tensor, without a Python loop over rows.

    Parameters
    ----------
    tables : sequence of B tensors (n_i, F)
        One table per image; ``n_i`` may be 0; same ``F``, same device (dtypes are promoted as by
        ``torch.cat``).

    Returns
    -------
    padded : tensor (B, max_n, F)
        Row ``j`` of table ``b`` at ``padded[b, j]``; padding is 0.
    valid : bool tensor (B, max_n)
        True where a row is real. For B = 0 both have shape ``(0, 0, 0)`` / ``(0, 0)``.
    """
    import torch

    if len(tables) == 0:
        return torch.zeros((0, 0, 0)), torch.zeros((0, 0), dtype=torch.bool)
    _check_tables(tables)
    rows = torch.cat(list(tables))
    device = rows.device
    lengths = torch.tensor([t.shape[0] for t in tables], dtype=torch.long, device=device)
    batch = torch.repeat_interleave(torch.arange(len(tables), device=device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    position = torch.arange(rows.shape[0], device=device) - starts[batch]
    max_n = int(lengths.max())
    padded = rows.new_zeros((len(tables), max_n, rows.shape[1]))
    padded[batch, position] = rows
    valid = torch.zeros((len(tables), max_n), dtype=torch.bool, device=device)
    valid[batch, position] = True
    return padded, valid


# ------------------------------------------------------------------------------------------- helpers


def _check_mask(instance_mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(instance_mask)
    if mask.ndim != 2 or mask.dtype.kind not in "iu":
        raise ValueError(f"instance_mask must be an integer (H, W) array, got {mask.dtype} {mask.shape}")
    if mask.size == 0:
        raise ValueError(f"instance_mask is empty, shape {mask.shape}")
    return mask


def check_target_params(sigma: float, stride: int) -> tuple[float, int]:
    """``sigma`` (map pixels) and ``stride`` checked: a ConfigError naming the bad one and its range."""
    # the upper bounds are the config's (fastload.validation): each window is (6σ+3)² pixels
    if isinstance(sigma, bool) or not (isinstance(sigma, numbers.Real) and 0 < sigma <= MAX_SIGMA):
        raise ConfigError(f"sigma must be a positive number of map pixels (at most {MAX_SIGMA:g}), got {short_repr(sigma)}")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or not 1 <= stride <= MAX_STRIDE:
        raise ConfigError(f"stride must be an integer >= 1 (at most {MAX_STRIDE}), got {short_repr(stride)}")
    return float(sigma), int(stride)


def check_weight_params(area: int, weight: float) -> tuple[int, float]:
    """``small_instance_area`` and ``small_instance_weight`` checked within the config's bounds
    (fastload.validation): a ConfigError naming the bad one and its range."""
    if isinstance(area, bool) or not isinstance(area, (int, np.integer)) or not 0 <= area <= MAX_PIXELS:
        raise ConfigError(f"small_instance_area must be an integer >= 0 (pixels, at most {MAX_PIXELS}), got {short_repr(area)}")
    if isinstance(weight, bool) or not (
        isinstance(weight, numbers.Real) and math.isfinite(weight) and 0 <= weight <= MAX_SMALL_INSTANCE_WEIGHT
    ):
        raise ConfigError(
            f"small_instance_weight must be a finite number >= 0 (at most {MAX_SMALL_INSTANCE_WEIGHT:g}: a loss "
            f"weight), got {short_repr(weight)}"
        )
    return int(area), float(weight)


@dataclass(frozen=True)
class _Runs:
    """Maximal horizontal runs of one id inside a row (background runs included), in raster order."""

    start: np.ndarray  # intp (R,), flat index of the first pixel
    length: np.ndarray  # intp (R,)
    label: np.ndarray  # (R,), the mask's dtype


@dataclass(frozen=True)
class _Stats:
    ids: np.ndarray  # int32 (N,), ascending
    counts: np.ndarray  # int64 (N,)
    centres: np.ndarray  # float64 (N, 2), (row, column)
    slot: np.ndarray  # intp (R,), index into ids of each run's id, -1 for background runs


def _row_runs(mask: np.ndarray) -> _Runs:
    flat = mask.reshape(-1)
    starts = np.zeros(flat.size, dtype=bool)
    np.not_equal(flat[1:], flat[:-1], out=starts[1:])
    starts[:: mask.shape[1]] = True  # a run never continues into the next row
    start = np.flatnonzero(starts)
    label = flat[start]
    # checked on the runs (few) rather than on the pixels: every id value starts at least one run
    if label.dtype.kind == "i" and label.min() < 0:
        raise ValueError(f"instance_mask has negative ids (min {label.min()}); ids are 0 or positive")
    if label.max() > np.iinfo(np.int32).max:
        raise ValueError(f"instance_mask has ids above the int32 range (max {label.max()})")
    return _Runs(start, np.diff(start, append=flat.size), label)


def _run_slots(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Index into ``ids`` of each label, -1 for background (0); every non-zero label is in ``ids``."""
    slot = np.searchsorted(ids, labels)
    slot[labels == 0] = -1
    return slot


def _instance_stats(runs: _Runs, width: int) -> _Stats:
    fg = runs.label != 0
    ids = np.unique(runs.label[fg]).astype(np.int32)
    slot = _run_slots(runs.label, ids)
    start, length, s = runs.start[fg], runs.length[fg], slot[fg]
    row, col = np.divmod(start, width)
    counts = np.bincount(s, length, ids.size).astype(np.int64)
    # integer sums (exact in float64) over a run: rows row·L, columns col·L + L(L−1)/2; the centres
    # therefore equal np.mean over each instance's indices exactly
    row_sum = np.bincount(s, row * length, ids.size)
    col_sum = np.bincount(s, col * length + length * (length - 1) // 2, ids.size)
    with np.errstate(invalid="ignore"):  # no instance: 0/0 on empty arrays only
        centres = np.stack([row_sum / counts, col_sum / counts], axis=1)
    return _Stats(ids, counts, centres.reshape(-1, 2), slot)


def _subsample(mask: np.ndarray, stride: int) -> np.ndarray:
    height, width = mask.shape
    rows = np.minimum(np.arange(0, height, stride) + stride // 2, height - 1)
    cols = np.minimum(np.arange(0, width, stride) + stride // 2, width - 1)
    return mask[np.ix_(rows, cols)]


def gaussian_window(sigma: float) -> tuple[int, np.ndarray]:
    """Radius r and the float32 (2r+1, 2r+1) Gaussian patch centred on its middle pixel.

    Computed in float64 and rounded once; both kernels paste this very array (the torch twin copies it to
    its device), so their heatmaps agree bit for bit whatever the device's ``exp``.
    """
    radius = int(round(3 * sigma + 1))
    d = np.arange(-radius, radius + 1, dtype=np.float64)
    return radius, np.exp(-(d[None, :] ** 2 + d[:, None] ** 2) / (2 * sigma**2)).astype(np.float32)


def _heatmap(centres: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Max of every instance's Gaussian window: each maxed into its own patch, clipped to the map.

    A loop over instances, but each step touches only its (2r+1)² window (a few µs), where one
    ``np.maximum.at`` over all windows' pixels cost 5x more; a max does not depend on the order.
    """
    height, width = shape
    heat = np.zeros(shape, dtype=np.float32)
    if centres.shape[0] == 0:
        return heat
    radius, window = gaussian_window(sigma)
    peaks = np.rint(centres).astype(np.int64)  # half to even, as Python's round() in Panoptic-DeepLab
    for py, px in peaks.tolist():
        y0, y1 = max(py - radius, 0), min(py + radius + 1, height)
        x0, x1 = max(px - radius, 0), min(px + radius + 1, width)
        if y0 < y1 and x0 < x1:
            patch = heat[y0:y1, x0:x1]
            np.maximum(patch, window[y0 - py + radius : y1 - py + radius, x0 - px + radius : x1 - px + radius], out=patch)
    return heat


def _offsets(mask: np.ndarray, runs: _Runs, stats: _Stats) -> np.ndarray:
    """float32 (2, H, W): ``(dy, dx)`` = centre − index on instance pixels, 0 on background."""
    height, width = mask.shape
    offset = np.empty((2, height * width), dtype=np.float32)
    fg = stats.slot >= 0
    centres = stats.centres
    run_row = runs.start // width
    # dy is constant along a run: one float64 value per run, rounded once, repeated out
    dy = np.zeros(runs.start.size, dtype=np.float64)
    dy[fg] = centres[stats.slot[fg], 0] - run_row[fg]
    dy = dy.astype(np.float32)
    # dx depends on (instance, column) only: it is gathered from a (N + 1, W) table whose row 0 is the
    # background. Pixel p = row·W + col of a run of slot s reads table[s + 1, col], flat entry
    # p + (s + 1 − row)·W: the pixel index plus a per-run constant.
    table = np.zeros((centres.shape[0] + 1, width), dtype=np.float32)
    table[1:] = centres[:, 1:] - np.arange(width, dtype=np.float64)
    table = table.reshape(-1)
    shift = (stats.slot + 1 - run_row) * width
    # row blocks keep the per-pixel temporaries small and reused: fresh multi-MB buffers page-fault on
    # every call, which costs more than the arithmetic
    rows_per_block = max(1, _BLOCK_PIXELS // width)
    block_rows = np.arange(0, height, rows_per_block)
    first_run = np.searchsorted(runs.start, block_rows * width)  # a run starts at every row start
    last_run = np.append(first_run[1:], runs.start.size)
    ramp = np.arange(min(rows_per_block, height) * width)
    for row0, a, b in zip(block_rows.tolist(), first_run.tolist(), last_run.tolist(), strict=True):
        p0, p1 = row0 * width, min(row0 + rows_per_block, height) * width
        offset[0, p0:p1] = np.repeat(dy[a:b], runs.length[a:b])
        index = np.repeat(shift[a:b] + p0, runs.length[a:b])
        index += ramp[: p1 - p0]
        np.take(table, index, out=offset[1, p0:p1], mode="clip")
    return offset.reshape(2, height, width)


def _check_tables(tables: Sequence[torch.Tensor]) -> None:
    widths = {tuple(t.shape[1:]) for t in tables}
    if any(t.ndim != 2 for t in tables) or len(widths) != 1:
        shapes = [tuple(t.shape) for t in tables]
        raise ValueError(f"tables must all be 2-D (n_i, F) with the same F, got shapes {shapes}")
