"""Instance mask → centre heatmap + offsets (Panoptic-DeepLab), instance tables, table batching.

Definitions (Panoptic-DeepLab's target generator, vectorized)
    * centre of an instance = (mean row, mean column) of its visible pixel indices (index coordinates);
    * heatmap ``float32 (H', W')`` = max over instances of ``exp(-((y - y0)² + (x - x0)²) / (2σ²))`` with
      ``(y0, x0)`` the centre rounded half-to-even (as Python's ``round``), inside the square window
      ``|y - y0| ≤ r, |x - x0| ≤ r``, ``r = round(3σ + 1)`` (the ``(6σ + 3)²`` patch Panoptic-DeepLab
      pastes; for an integer σ identical, for another σ the patch is centred on the peak); 0 outside;
    * offsets ``float32 (2, H', W')`` = centre − pixel index, ``(dy, dx)``, on instance pixels, 0 elsewhere.

Stride (``docs/design.md``): with ``stride = s`` the maps are ``(ceil(H/s), ceil(W/s))``; map pixel
``(u, v)`` samples the mask at ``(min(u·s + s//2, H−1), min(v·s + s//2, W−1))``; centres are computed at
full resolution and expressed in map pixels as ``(c + 0.5)/s − 0.5``; offsets and σ are in map pixels.
Every instance of the mask gets its Gaussian, also one too small to be hit by the sampling grid.

Semantic weights (Panoptic-DeepLab): ``float32 (H, W)``, ``small_instance_weight`` (3) on the pixels of an
instance with fewer than ``small_instance_area`` (4096) visible pixels in the mask, 1 elsewhere.

One definition, two kernels: ``center_targets`` and ``semantic_weights`` (NumPy, one mask) are the
definition; ``render_targets`` is their batched torch twin, for rendering targets after augmentation on the
loader's device. It equals them bit for bit, and with ``max_id`` given it never synchronises with the host.

Only ``batch_tables`` and ``render_targets`` need torch, and import it when called: this module is
NumPy-only at import.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fastload.errors import ConfigError
from fastload.validation import MAX_SIGMA, MAX_STRIDE, short_repr

if TYPE_CHECKING:
    import torch

    from fastload.raster import RasterResult

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
    own (2r+1)² patch of the heatmap (a loop over instances that touches only their windows). The results equal Panoptic-DeepLab's per-instance loop bit for bit (the
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
    sigma, stride = _check_params(sigma, stride)
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
    sigma, stride = _check_params(sigma, stride)
    area, weight = _check_weight_params(small_instance_area, small_instance_weight)
    runs = _row_runs(mask)
    stats = _instance_stats(runs, mask.shape[1])
    heatmap, offset = _center_targets(mask, runs, stats, sigma, stride)
    return heatmap, offset, _semantic_weights(mask, runs, stats, area, weight)


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
    area, weight = _check_weight_params(small_instance_area, small_instance_weight)
    runs = _row_runs(mask)
    return _semantic_weights(mask, runs, _instance_stats(runs, mask.shape[1]), area, weight)


def _semantic_weights(mask: np.ndarray, runs: _Runs, stats: _Stats, area: int, weight: float) -> np.ndarray:
    fg = stats.slot >= 0
    small = np.zeros(runs.start.size, dtype=bool)
    small[fg] = stats.counts[stats.slot[fg]] < area
    # the runs tile the mask in raster order: one weight per run, repeated out
    run_weight = np.where(small, np.float32(weight), np.float32(1))
    return np.repeat(run_weight, runs.length).reshape(mask.shape)


def instance_table(raster: RasterResult) -> list[dict]:
    """One row per kept instance of a raster: ids, visible bbox, visible area and centre.

    Parameters
    ----------
    raster : RasterResult
        From :func:`fastload.raster.rasterize_image`; instance ``k + 1`` is ``raster.instances[k]``.

    Returns
    -------
    list of dict
        ``{"id", "annotation_id", "category_id" (COCO id), "train_id", "bbox": [x, y, w, h] of the
        visible pixels (ints, w = last − first column + 1), "area": visible pixel count,
        "centre": [row, column] (floats)}``, in id order.
    """
    mask = _check_mask(raster.instance)
    runs = _row_runs(mask)
    stats = _instance_stats(runs, mask.shape[1])
    boxes = _boxes(runs, stats, mask.shape[1])
    rows = []
    for k, inst_id in enumerate(stats.ids.tolist()):
        inst = raster.instances[inst_id - 1]
        rows.append(
            {
                "id": inst_id,
                "annotation_id": inst.annotation_id,
                "category_id": inst.category_id,
                "train_id": inst.train_id,
                "bbox": boxes[k].tolist(),
                "area": int(stats.counts[k]),
                "centre": stats.centres[k].tolist(),
            }
        )
    return rows


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


def render_targets(
    instance: torch.Tensor,
    *,
    sigma: float = 8.0,
    stride: int = 1,
    small_instance_area: int = 4096,
    small_instance_weight: float = 3.0,
    max_id: int | None = None,
) -> dict[str, torch.Tensor]:
    """The batched torch twin of :func:`center_targets` and :func:`semantic_weights`, on the mask's device.

    Equal bit for bit to the NumPy definitions applied to each sample, for any sigma and stride. Every
    (sample, id) pair is a slot ``n·K + id``, ``K = max_id + 1``. Centres come from three int64
    ``scatter_add_`` over the slots (pixel counts, row sums, column sums: exact, and deterministic on CUDA,
    where float atomics would not be); all Gaussian windows of the batch are pasted in one
    ``scatter_reduce_(..., "amax")`` (a max does not depend on the order); offsets are gathered (one gather
    per coordinate) from small per-(instance, row) and per-(instance, column) tables computed in float64
    and rounded once, as in :func:`center_targets`; semantic weights are a gather from a per-slot table.
    No Python loop over samples or instances; same input, same bits.

    Host synchronisation
        * ``max_id`` given: every one of the ``N·K`` slots gets a window and a table row (those without
          pixels with weight 0), so no shape depends on the data and, on CUDA, nothing is read back to the
          host. Give the true largest id of the batch (the loader has it from the metadata): memory and
          time grow as ``N·K·((2r+1)² + H' + W')``, ``r = round(3σ + 1)``. On the CPU the ids are
          checked against ``max_id`` (a cheap min/max, named errors); on CUDA they are not read, and an
          id outside ``[0, max_id]`` trips the scatter's device-side index assertion.
        * ``max_id=None``: the smallest and largest id are read back (one sync) to check them and set
          ``K``; the present slots are found with ``nonzero`` (a second sync) and only they are rendered,
          so sparse or huge ids cost no windows. The natural choice on the CPU, where a sync is free.

    Parameters
    ----------
    instance : integer tensor (N, H, W), uint8, int16, int32 or int64
        Instance ids ≥ 0, 0 = background, on any device; ids need not be contiguous. N may be 0.
    sigma : float
        Gaussian standard deviation in map pixels (> 0).
    stride : int
        Output stride (≥ 1); maps are ``(ceil(H/stride), ceil(W/stride))``, as in :func:`center_targets`.
    small_instance_area, small_instance_weight
        As in :func:`semantic_weights` (areas counted at full resolution, per sample).
    max_id : int or None
        The largest id any sample may hold (≥ 0); None reads it from ``instance`` (see above).

    Returns
    -------
    dict of tensors on ``instance.device``
        ``heatmap`` float32 (N, 1, H', W'); ``offset`` float32 (N, 2, H', W'), ``(dy, dx)`` in map pixels;
        ``semantic_weight`` float32 (N, H, W).
    """
    import torch

    sigma, stride = _check_params(sigma, stride)
    area, weight = _check_weight_params(small_instance_area, small_instance_weight)
    _check_instance_batch(instance)
    per_sample = _slots_per_sample(instance, max_id, check=max_id is None or instance.device.type == "cpu")
    ids = instance.to(torch.int64)
    slots = _slot_stats(ids, per_sample, stride)
    rows = _present_rows(slots) if max_id is None else _all_rows(slots)
    sampled = _subsample_batch(ids, stride)
    return {
        "heatmap": _paste_windows(rows, tuple(sampled.shape), sigma),
        "offset": _gather_offsets(rows, sampled),
        "semantic_weight": _pixel_weights(slots, ids, area, weight),
    }


# ------------------------------------------------------------------------------------------- helpers


def _check_mask(instance_mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(instance_mask)
    if mask.ndim != 2 or mask.dtype.kind not in "iu":
        raise ValueError(f"instance_mask must be an integer (H, W) array, got {mask.dtype} {mask.shape}")
    if mask.size == 0:
        raise ValueError(f"instance_mask is empty, shape {mask.shape}")
    return mask


def _check_params(sigma: float, stride: int) -> tuple[float, int]:
    # the upper bounds are the config's (fastload.validation): each window is (6σ+3)² pixels
    if isinstance(sigma, bool) or not (isinstance(sigma, numbers.Real) and 0 < sigma <= MAX_SIGMA):
        raise ConfigError(f"sigma must be a positive number of map pixels (at most {MAX_SIGMA:g}), got {short_repr(sigma)}")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or not 1 <= stride <= MAX_STRIDE:
        raise ConfigError(f"stride must be an integer >= 1 (at most {MAX_STRIDE}), got {short_repr(stride)}")
    return float(sigma), int(stride)


def _check_weight_params(area: int, weight: float) -> tuple[int, float]:
    if isinstance(area, bool) or not isinstance(area, (int, np.integer)) or area < 0:
        raise ConfigError(f"small_instance_area must be an integer >= 0 (pixels), got {area!r}")
    if isinstance(weight, bool) or not (isinstance(weight, numbers.Real) and math.isfinite(weight) and weight >= 0):
        raise ConfigError(f"small_instance_weight must be a finite number >= 0, got {weight!r}")
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


def _gaussian_window(sigma: float) -> tuple[int, np.ndarray]:
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
    radius, window = _gaussian_window(sigma)
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


def _boxes(runs: _Runs, stats: _Stats, width: int) -> np.ndarray:
    """int64 (N, 4) ``[x, y, w, h]`` of each instance's pixels, from its runs."""
    fg = stats.slot >= 0
    slot, start, length = stats.slot[fg], runs.start[fg], runs.length[fg]
    row, col = np.divmod(start, width)
    n = stats.ids.size
    first = np.full((2, n), np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full((2, n), -1, dtype=np.int64)
    np.minimum.at(first[0], slot, col)
    np.maximum.at(last[0], slot, col + length - 1)
    np.minimum.at(first[1], slot, row)
    np.maximum.at(last[1], slot, row)
    return np.stack([first[0], first[1], last[0] - first[0] + 1, last[1] - first[1] + 1], axis=1)


def _check_tables(tables: Sequence[torch.Tensor]) -> None:
    widths = {tuple(t.shape[1:]) for t in tables}
    if any(t.ndim != 2 for t in tables) or len(widths) != 1:
        shapes = [tuple(t.shape) for t in tables]
        raise ValueError(f"tables must all be 2-D (n_i, F) with the same F, got shapes {shapes}")


# -------------------------------------------------------------------------- torch twin helpers
# torch is imported inside each function: the module stays NumPy-only at import


def _check_instance_batch(instance: torch.Tensor) -> None:
    import torch

    if not isinstance(instance, torch.Tensor):
        raise TypeError(f"instance must be a torch.Tensor (N, H, W), got {type(instance).__name__}")
    allowed = (torch.uint8, torch.int16, torch.int32, torch.int64)
    if instance.ndim != 3 or instance.dtype not in allowed:
        raise ValueError(
            "instance must be an integer (N, H, W) tensor of uint8, int16, int32 or int64, "
            f"got {instance.dtype} {tuple(instance.shape)}"
        )
    if instance.shape[1] == 0 or instance.shape[2] == 0:
        raise ValueError(f"instance has an empty image size, shape {tuple(instance.shape)}")


def _slots_per_sample(instance: torch.Tensor, max_id: int | None, *, check: bool) -> int:
    """K = max_id + 1; with ``check``, the ids are read back (one sync) and checked against it."""
    import torch

    if max_id is not None and (isinstance(max_id, bool) or not isinstance(max_id, (int, np.integer)) or max_id < 0):
        raise ConfigError(f"max_id must be an integer >= 0 or None, got {max_id!r}")
    if not check or instance.numel() == 0:
        return (0 if max_id is None else int(max_id)) + 1
    low, high = torch.stack(torch.aminmax(instance)).tolist()
    if low < 0:
        raise ValueError(f"instance has negative ids (min {low}); ids are 0 or positive")
    if high > np.iinfo(np.int32).max:
        raise ValueError(f"instance has ids above the int32 range (max {high})")
    if max_id is not None and high > max_id:
        raise ValueError(f"instance has ids up to {high}, above max_id = {max_id}")
    return (high if max_id is None else int(max_id)) + 1


@dataclass(frozen=True)
class _Slots:
    """Per-(sample, id) statistics of a batch, slot ``n·K + id``."""

    per_sample: int  # K
    counts: torch.Tensor  # int64 (N·K,), pixels at full resolution
    centres: torch.Tensor  # float64 (N·K, 2), (row, column) in map pixels; 0 for a slot without pixels
    present: torch.Tensor  # bool (N·K,), an instance with pixels (never id 0)


def _slot_stats(ids: torch.Tensor, per_sample: int, stride: int) -> _Slots:
    import torch

    n, height, width = ids.shape
    flat = ids.reshape(n, height * width)
    pixel = torch.arange(height * width, device=ids.device)

    def total(values: torch.Tensor) -> torch.Tensor:  # int64 sums per slot: exact and order-free
        out = torch.zeros((n, per_sample), dtype=torch.int64, device=ids.device)
        return out.scatter_add_(1, flat, values.expand(n, height * width))

    counts = total(torch.ones(1, dtype=torch.int64, device=ids.device))
    sums = torch.stack([total(pixel // width), total(pixel % width)], dim=-1)
    # the float64 operations of _instance_stats and center_targets, in the same order
    centres = sums.to(torch.float64) / counts.clamp(min=1).to(torch.float64).unsqueeze(-1)
    if stride > 1:
        centres = (centres + 0.5) / stride - 0.5
    present = counts > 0
    present[:, 0] = False
    return _Slots(per_sample, counts.reshape(-1), centres.reshape(-1, 2), present.reshape(-1))


@dataclass(frozen=True)
class _Rows:
    """The slots that get a Gaussian window and an offset-table row (row 0 of the tables is background)."""

    centres: torch.Tensor  # float64 (P, 2), map pixels
    sample: torch.Tensor  # int64 (P,)
    on: torch.Tensor  # bool (P,), False for a row that stands for no instance
    table_row: torch.Tensor  # int64 (N, K): the table row of each slot, 1..P, 0 = none
    per_sample: int  # K


def _all_rows(slots: _Slots) -> _Rows:
    """Every slot, those without an instance switched off: no shape depends on the data (no sync)."""
    import torch

    index = torch.arange(slots.counts.numel(), device=slots.counts.device)
    table_row = (index + 1).reshape(-1, slots.per_sample)
    return _Rows(slots.centres, index // slots.per_sample, slots.present, table_row, slots.per_sample)


def _present_rows(slots: _Slots) -> _Rows:
    """Only the slots holding an instance (``nonzero``: one sync)."""
    import torch

    chosen = torch.nonzero(slots.present).squeeze(1)
    table_row = torch.where(slots.present, torch.cumsum(slots.present, 0), 0).reshape(-1, slots.per_sample)
    on = torch.ones_like(chosen, dtype=torch.bool)
    return _Rows(slots.centres[chosen], chosen // slots.per_sample, on, table_row, slots.per_sample)


def _subsample_batch(ids: torch.Tensor, stride: int) -> torch.Tensor:
    """The ``_subsample`` of every sample: (N, ceil(H/s), ceil(W/s))."""
    import torch

    if stride == 1:
        return ids
    _, height, width = ids.shape
    rows = (torch.arange(0, height, stride, device=ids.device) + stride // 2).clamp(max=height - 1)
    cols = (torch.arange(0, width, stride, device=ids.device) + stride // 2).clamp(max=width - 1)
    return ids[:, rows[:, None], cols[None, :]]


def _window_on(device: torch.device, sigma: float) -> tuple[int, torch.Tensor]:
    """``_gaussian_window`` copied to ``device``: pinned and non-blocking on CUDA, where a copy from
    pageable memory would wait for the stream."""
    import torch

    radius, window = _gaussian_window(sigma)
    host = torch.from_numpy(window)
    if device.type == "cuda":
        return radius, host.pin_memory().to(device, non_blocking=True)
    return radius, host.to(device)


def _paste_windows(rows: _Rows, shape: tuple[int, int, int], sigma: float) -> torch.Tensor:
    """float32 (N, 1, H', W'): the max of every row's window, all pasted in one ``scatter_reduce_``."""
    import torch

    n, height, width = shape
    device = rows.centres.device
    radius, window = _window_on(device, sigma)
    d = torch.arange(-radius, radius + 1, device=device)
    peaks = torch.round(rows.centres).to(torch.int64)  # half to even, as np.rint
    win_rows = peaks[:, :1] + d  # (P, 2r+1)
    win_cols = peaks[:, 1:] + d
    inside = ((win_rows >= 0) & (win_rows < height))[:, :, None] & ((win_cols >= 0) & (win_cols < width))[:, None, :]
    values = torch.where(inside & rows.on[:, None, None], window, 0.0)
    # as in _heatmap: pixels off the map are clamped onto the border with value 0, a no-op for the max
    flat = (rows.sample[:, None, None] * height + win_rows.clamp(0, height - 1)[:, :, None]) * width
    flat = flat + win_cols.clamp(0, width - 1)[:, None, :]
    heat = torch.zeros(n * height * width, dtype=torch.float32, device=device)
    heat.scatter_reduce_(0, flat.reshape(-1), values.reshape(-1), "amax")
    return heat.reshape(n, 1, height, width)


def _gather_offsets(rows: _Rows, sampled: torch.Tensor) -> torch.Tensor:
    """float32 (N, 2, H', W'): ``(dy, dx)`` gathered from per-(row, position) tables, one gather per coordinate."""
    import torch

    n, height, width = sampled.shape
    device = sampled.device
    row = rows.table_row.gather(1, sampled.reshape(n, height * width)).reshape(n, height, width)
    offset = torch.empty((n, 2, height, width), dtype=torch.float32, device=device)
    for axis, size in enumerate((height, width)):
        position = torch.arange(size, dtype=torch.float64, device=device)
        # centre − index in float64, rounded once, as _offsets' dy per run and dx table: (P + 1, size)
        table = torch.where(rows.on[:, None], rows.centres[:, axis, None] - position, 0.0).to(torch.float32)
        table = torch.cat([table.new_zeros((1, size)), table])  # row 0: background
        # two contiguous gathers (index `row`, out a plane of `offset`) take half the time of one
        # three-index gather on the CPU
        if axis == 0:  # dy[n, u, v] = table[row, u]
            torch.gather(table.T.contiguous().expand(n, -1, -1), 2, row, out=offset[:, 0])
        else:  # dx[n, u, v] = table[row, v]
            torch.gather(table.expand(n, -1, -1), 1, row, out=offset[:, 1])
    return offset


def _pixel_weights(slots: _Slots, ids: torch.Tensor, area: int, weight: float) -> torch.Tensor:
    """float32 (N, H, W): ``weight`` on the pixels of instances below ``area`` pixels, 1 elsewhere."""
    import torch

    small = slots.present & (slots.counts < area)
    per_slot = torch.where(small, weight, 1.0).to(torch.float32).reshape(-1, slots.per_sample)
    return per_slot.gather(1, ids.flatten(1)).reshape(ids.shape)


def center_targets_per_instance(
    instance_mask: np.ndarray, segment_ids: Sequence[int] | None = None, sigma: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """The slow reference: Panoptic-DeepLab's target generator as it is written, one full-image pass per instance.

    ``np.where`` over the whole image for each instance, the mean, a (6σ+3)² Gaussian patch pasted with a
    maximum, offsets assigned by fancy indexing. `center_targets` must equal it bit for bit (stride 1, integer
    sigma); the benchmarks use it as the "before". Returns heatmap float32 (H, W), offset float32 (2, H, W).
    """
    height, width = instance_mask.shape
    if segment_ids is None:
        segment_ids = [int(i) for i in np.unique(instance_mask) if i != 0]
    size = 6 * sigma + 3
    x = np.arange(0, size, 1, float)
    y = x[:, np.newaxis]
    x0 = y0 = 3 * sigma + 1
    gaussian = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))
    heat = np.zeros((height, width), dtype=np.float32)
    offset = np.zeros((2, height, width), dtype=np.float32)
    y_coord, x_coord = np.meshgrid(
        np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij"
    )
    for seg_id in segment_ids:
        mask_index = np.where(instance_mask == seg_id)
        if len(mask_index[0]) == 0:
            continue
        center_y, center_x = np.mean(mask_index[0]), np.mean(mask_index[1])
        py, px = int(round(center_y)), int(round(center_x))
        ul = int(np.round(px - 3 * sigma - 1)), int(np.round(py - 3 * sigma - 1))
        br = int(np.round(px + 3 * sigma + 2)), int(np.round(py + 3 * sigma + 2))
        gx0, gx1 = max(0, -ul[0]), min(br[0], width) - ul[0]
        gy0, gy1 = max(0, -ul[1]), min(br[1], height) - ul[1]
        cx0, cx1 = max(0, ul[0]), min(br[0], width)
        cy0, cy1 = max(0, ul[1]), min(br[1], height)
        heat[cy0:cy1, cx0:cx1] = np.maximum(heat[cy0:cy1, cx0:cx1], gaussian[gy0:gy1, gx0:gx1])
        offset[0][mask_index] = center_y - y_coord[mask_index]
        offset[1][mask_index] = center_x - x_coord[mask_index]
    return heat, offset
