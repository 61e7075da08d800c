"""The batched torch twin of the target definition: `render_targets`.

A fixed sequence of about 50 torch ops besides views (60 with a stride) whatever the batch size, ``K`` and
the number of instances, each a full-size pass at most; no float atomics, no Python loop over samples or
instances. Every (sample, id) pair is a slot, ``K`` slots per sample:

* statistics: one int64 ``scatter_add_`` of every pixel into an ``(N, K, W)`` table of per-column pixel
  counts and row sums (two fields of one int64), then small exact reductions over the columns (column
  sums weight the counts by the column): exact integers, and on CUDA integer atomics spread over ``N·K·W``
  addresses, none shared by two lanes of a warp, instead of ``N·K``; the centres come from them in float64
  on the small ``(N, K)`` table,
  with the float64 operations of the definition in the same order, so every centre and peak is the
  definition's;
* heatmap: each slot's Gaussian window (the definition's own float32 window, cut to the map) is one block
  of a zero-padded table, read by two indices (its first row and column), and all are pasted with one
  ``scatter_reduce_(..., "amax")`` over the float32 bits viewed as int32 (non-negative floats order like
  their bits): an integer max, exact, order-free;
* offsets: two gathers, by the ids at the sampled pixels, from ``(N, H', K)`` and ``(N, K, W')`` tables of
  centre − position computed in float64 and rounded once, as the definition does;
* semantic weights: one gather from an ``(N, K)`` table.

The result equals the definition bit for bit. On the CPU, tensors of a full map are allocated by NumPy,
which asks the kernel for huge pages: fresh memory then costs a few faults of 2 MB instead of one per 4 kB
page, which on a VM is as much as the pass that writes it.

torch is imported inside each function: the module stays NumPy-only at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fastload.errors import ConfigError
from fastload.labels import IGNORE
from fastload.targets.definition import check_target_params, check_weight_params, gaussian_window

if TYPE_CHECKING:
    import torch

# bytes the slot tables of one call may take (per-column statistics, offset tables, Gaussian windows)
_SLOT_BYTES_LIMIT = 2 << 30


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

    Equal bit for bit to the NumPy definitions applied to each sample, for any sigma and stride (how:
    the module docstring). Same input, same bits, on every device: no float atomics, and the integer
    ones only add or take a max.

    Host synchronisation
        * ``max_id`` given: ``K = max_id + 1`` slots per sample, every one with a window and table rows
          (those without pixels switched off), so no shape depends on the data and, on CUDA, nothing is
          read back to the host; the number of torch ops does not depend on the batch or its instances.
          Give the true largest id of the batch (the loader has it from the metadata): memory grows as
          ``N·K·(8W + 12(H' + W') + 12·S·S')`` bytes, ``S = min(2r+1, H')``, ``S' = min(2r+1, W')``,
          ``r = round(3σ + 1)``, and a ``max_id`` that would take more than 2 GiB is refused
          (``ConfigError``) before anything is allocated. On the CPU the ids are checked against
          ``max_id`` (a min/max, named errors); on CUDA they are not read, and an id outside
          ``[0, max_id]`` trips the scatter's device-side index assertion.
        * ``max_id=None``: the smallest and largest id are read back (one sync) to check them and set
          ``K``; ids so sparse that those tables would pass 2 GiB are first replaced by their rank among
          the ids of their sample (``torch.unique``: a sort of the batch, a second sync). The natural
          choice on the CPU, where a sync is free.

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
    sigma, stride = check_target_params(sigma, stride)
    area, weight = check_weight_params(small_instance_area, small_instance_weight)
    _check_instance_batch(instance)
    layout = _Layout.of(instance, sigma, stride)
    ids, per_sample = _slot_ids(instance, max_id, layout)
    slots = _slot_stats(ids, per_sample, stride)
    sampled = _subsample_batch(ids, stride)
    return {
        "heatmap": _paste_windows(slots, layout),
        "offset": _gather_offsets(slots, sampled),
        "semantic_weight": _pixel_weights(slots, ids, area, weight),
    }


# ------------------------------------------------------------------------------------------- helpers


def render_weights(semantic: torch.Tensor, instance: torch.Tensor, *, stride: int = 1) -> dict[str, torch.Tensor]:
    """The batched twin of `fastload.targets.panoptic_weights`: ``center_weight`` and ``offset_weight`` float32
    (N, 1, H', W') on the masks' device, from semantic and instance masks (N, H, W); two comparisons, no sync."""
    import torch

    if semantic.shape != instance.shape or semantic.ndim != 3:
        raise ValueError(f"semantic {tuple(semantic.shape)} and instance {tuple(instance.shape)} must be the same (N, H, W)")
    _, stride = check_target_params(1.0, stride)
    semantic, instance = _subsample_batch(semantic, stride), _subsample_batch(instance, stride)
    if semantic.device.type != "cpu":
        return {
            "center_weight": (semantic != IGNORE).to(torch.float32).unsqueeze(1),
            "offset_weight": (instance > 0).to(torch.float32).unsqueeze(1),
        }
    # on the CPU NumPy writes the comparisons straight into huge-page float32 maps: no bool temporary and no
    # fresh small pages
    center = _empty((len(semantic), 1, *semantic.shape[1:]), torch.float32, semantic.device)
    offset = _empty(tuple(center.shape), torch.float32, semantic.device)
    np.not_equal(semantic.numpy(), IGNORE, out=center.numpy()[:, 0], casting="unsafe")
    np.greater(instance.numpy(), 0, out=offset.numpy()[:, 0], casting="unsafe")
    return {"center_weight": center, "offset_weight": offset}


@dataclass(frozen=True)
class _Layout:
    """The shapes of one call: batch, maps, and the Gaussian window cut to the map."""

    n: int
    height: int
    width: int
    map_h: int
    map_w: int
    radius: int  # r = round(3σ + 1)
    sigma: float
    device: torch.device

    @staticmethod
    def of(instance: torch.Tensor, sigma: float, stride: int) -> _Layout:
        n, height, width = instance.shape
        radius = int(round(3 * sigma + 1))
        return _Layout(n, height, width, -(-height // stride), -(-width // stride), radius, sigma, instance.device)

    def slot_bytes(self, per_sample: int) -> int:
        """Bytes of the slot tables: per-column statistics, offset tables (float64 and float32), windows."""
        span = min(2 * self.radius + 1, self.map_h) * min(2 * self.radius + 1, self.map_w)
        return self.n * per_sample * (8 * self.width + 12 * (self.map_h + self.map_w) + 12 * span)


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, zero: bool = False) -> torch.Tensor:
    """A tensor of a full map: on the CPU allocated by NumPy (huge pages, see the module docstring)."""
    import torch

    if device.type != "cpu":
        return (torch.zeros if zero else torch.empty)(shape, dtype=dtype, device=device)
    numpy_dtype = np.dtype(str(dtype).removeprefix("torch."))  # int32, int64, float32
    return torch.from_numpy((np.zeros if zero else np.empty)(shape, dtype=numpy_dtype))


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
    if _field_shift(instance.shape[1]) + instance.shape[1].bit_length() > 62:
        raise ValueError(f"instance is {instance.shape[1]} pixels high; render_targets takes heights up to 2^21 - 1")


def _slot_ids(instance: torch.Tensor, max_id: int | None, layout: _Layout) -> tuple[torch.Tensor, int]:
    """int64 (N, H, W) slot of every pixel within its sample (0 = background), and K, slots per sample."""
    import torch

    if max_id is not None and (isinstance(max_id, bool) or not isinstance(max_id, (int, np.integer)) or max_id < 0):
        raise ConfigError(f"max_id must be an integer >= 0 or None, got {max_id!r}")
    high = 0
    if (max_id is None or instance.device.type == "cpu") and instance.numel() > 0:
        low, high = torch.stack(torch.aminmax(instance)).tolist()  # on CUDA: one sync
        if low < 0:
            raise ValueError(f"instance has negative ids (min {low}); ids are 0 or positive")
        if high > np.iinfo(np.int32).max:
            raise ValueError(f"instance has ids above the int32 range (max {high})")
        if max_id is not None and high > max_id:
            raise ValueError(f"instance has ids up to {high}, above max_id = {max_id}")
    if max_id is not None:
        _check_slot_bytes(layout, int(max_id) + 1, f"max_id = {max_id}")
        return _as_int64(instance), int(max_id) + 1
    if layout.slot_bytes(high + 1) <= _SLOT_BYTES_LIMIT:
        return _as_int64(instance), high + 1
    ids, per_sample = _sample_ranks(instance)
    _check_slot_bytes(layout, per_sample, f"{per_sample - 1} instances in one sample")
    return ids, per_sample


def _check_slot_bytes(layout: _Layout, per_sample: int, what: str) -> None:
    need = layout.slot_bytes(per_sample)
    if need > _SLOT_BYTES_LIMIT:
        raise ConfigError(
            f"render_targets: {what} gives {layout.n}x{per_sample} slots, whose tables would take "
            f"{need / 2**30:.1f} GiB (limit {_SLOT_BYTES_LIMIT / 2**30:.0f} GiB) for {layout.n} masks of "
            f"{layout.height}x{layout.width}, sigma {layout.sigma:g}; pass the batch's true largest id as "
            "max_id, or max_id=None to read the ids, or render fewer masks per call"
        )


def _as_int64(instance: torch.Tensor) -> torch.Tensor:
    """The ids as int64, torch's index dtype (one full-size copy unless they already are)."""
    import torch

    if instance.dtype == torch.int64:
        return instance
    if instance.device.type != "cpu":
        return instance.to(torch.int64)
    return _empty(tuple(instance.shape), torch.int64, instance.device).copy_(instance)


def _sample_ranks(instance: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Each id replaced by its rank among the ids of its sample (the background stays 0): a sort."""
    import torch

    n = instance.shape[0]
    base = torch.arange(n, device=instance.device) << 32  # sample n's keys: n·2^32 + id (ids < 2^31)
    keys = _as_int64(instance) + base[:, None, None]
    # every sample's background key is added, so rank 0 of each sample is its background
    unique, inverse = torch.unique(torch.cat([base, keys.reshape(-1)]), return_inverse=True)
    first = torch.searchsorted(unique, base)
    per_sample = int(torch.diff(first, append=first.new_tensor([unique.numel()])).max())
    return inverse[n:].reshape(instance.shape) - first[:, None, None], per_sample


@dataclass(frozen=True)
class _Slots:
    """Per-(sample, slot) statistics of a batch."""

    counts: torch.Tensor  # int64 (N, K), pixels at full resolution
    centres: torch.Tensor  # float64 (N, K, 2), (row, column) in map pixels; 0 for a slot without pixels
    present: torch.Tensor  # bool (N, K), an instance with pixels (never slot 0)


def _field_shift(height: int) -> int:
    """Bits of the row-sum field: a column's row sum is at most H(H−1)/2."""
    return max(1, (height * (height - 1) // 2).bit_length())


def _slot_stats(ids: torch.Tensor, per_sample: int, stride: int) -> _Slots:
    import torch

    n, height, width = ids.shape
    device = ids.device
    shift = _field_shift(height)
    # a pixel at row y adds 2^shift + y into its (sample, slot, column): the pixel count above `shift`, the row
    # sum below. Integer atomics over N·K·W addresses, the 32 lanes of a CUDA warp (32 columns of a row) on
    # 32 different ones.
    one_pixel = torch.arange(1 << shift, (1 << shift) + height, device=device)[:, None]
    per_column = _empty((n, per_sample, width), torch.int64, device, zero=True)
    per_column.scatter_add_(1, ids, one_pixel.expand(n, height, width))
    pixels = per_column >> shift
    per_column &= (1 << shift) - 1  # row sums per (sample, slot, column)
    columns = torch.arange(width, device=device)
    # (N, K, 3): pixels, row sums, column sums (in place: no more temporaries of the table's size)
    totals = torch.stack([pixels.sum(2), per_column.sum(2), pixels.mul_(columns).sum(2)], dim=-1)
    counts = totals[..., 0]
    # the float64 operations of _instance_stats and center_targets, in the same order
    totals = totals.to(torch.float64)
    centres = totals[..., 1:] / totals[..., :1].clamp(min=1)
    if stride > 1:
        centres = (centres + 0.5) / stride - 0.5
    present = counts > 0
    present.select(1, 0).fill_(False)  # slot 0 is the background
    return _Slots(counts, centres, present)


def _subsample_batch(ids: torch.Tensor, stride: int) -> torch.Tensor:
    """The ``_subsample`` of every sample: (N, ceil(H/s), ceil(W/s))."""
    import torch

    if stride == 1:
        return ids
    _, height, width = ids.shape
    map_h, map_w = -(-height // stride), -(-width // stride)
    grid = torch.arange(stride // 2, stride // 2 + stride * max(map_h, map_w), stride, device=ids.device)
    return ids[:, grid[:map_h, None].clamp(max=height - 1), grid[None, :map_w].clamp(max=width - 1)]


def _window_blocks(layout: _Layout) -> torch.Tensor:
    """int32 view (4r+2, 4r+2, S, S'): every (S, S') block of the window table, ``S = min(2r+1, H')``,
    ``S' = min(2r+1, W')``, by its first row and column.

    The table holds the bits of ``gaussian_window`` (made on the host, so its values are the definition's
    whatever the device's ``exp``) at rows and columns ``r..3r``, zeros around, and an all-zero block at
    row ``4r+1``: a window cut to the map is the block at ``(r + first cut row, r + first cut column)``.
    Copied from pinned memory without blocking on CUDA, where a copy from pageable memory would wait for
    the stream.
    """
    import torch

    radius, window = gaussian_window(layout.sigma)
    spans = (min(2 * radius + 1, layout.map_h), min(2 * radius + 1, layout.map_w))
    padded = np.zeros((4 * radius + 1 + spans[0], 4 * radius + 1 + spans[1]), dtype=np.float32)
    padded[radius : 3 * radius + 1, radius : 3 * radius + 1] = window
    host = torch.from_numpy(padded.view(np.int32))
    if layout.device.type == "cuda":
        table = host.pin_memory().to(layout.device, non_blocking=True)
    else:
        table = host.to(layout.device)
    return table.unfold(0, spans[0], 1).unfold(1, spans[1], 1)


def _window_axis(peak: torch.Tensor, radius: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Map positions (P, S) of each peak's window along one axis, cut to the map (``S = min(2r+1, size)``
    positions, all inside), and the first row of its block in the window table (in ``[0, 2r]``)."""
    import torch

    span = min(2 * radius + 1, size)
    low = peak - radius  # the window's first position, maybe off the map
    start = low.clamp(0, size - span)
    return start[:, None] + torch.arange(span, device=peak.device), start - peak + 2 * radius


def _paste_windows(slots: _Slots, layout: _Layout) -> torch.Tensor:
    """float32 (N, 1, H', W'): every slot's window, maxed in by one integer scatter over the float bits."""
    import torch

    n, per_sample = slots.present.shape
    blocks = _window_blocks(layout)
    # slot 0, the background, has no window
    peaks = torch.round(slots.centres[:, 1:]).to(torch.int64).reshape(-1, 2)  # half to even, as np.rint
    rows, first_row = _window_axis(peaks[:, 0], layout.radius, layout.map_h)
    cols, first_col = _window_axis(peaks[:, 1], layout.radius, layout.map_w)
    zeros = 4 * layout.radius + 1  # the all-zero block, for a slot without an instance
    first_row = torch.where(slots.present[:, 1:], first_row.view(n, per_sample - 1), zeros).view(-1)
    values = blocks[first_row, first_col]  # int32 (N·(K−1), S, S')
    target = (rows * layout.map_w)[:, :, None] + cols[:, None, :]  # flat map pixel within the sample
    heat = _empty((n, layout.map_h * layout.map_w), torch.int32, layout.device, zero=True)
    pasted = (per_sample - 1) * values.shape[1] * values.shape[2]  # window pixels per sample (N may be 0)
    heat.scatter_reduce_(1, target.reshape(n, pasted), values.reshape(n, pasted), "amax")
    return heat.view(torch.float32).reshape(n, 1, layout.map_h, layout.map_w)


def _gather_offsets(slots: _Slots, sampled: torch.Tensor) -> torch.Tensor:
    """float32 (N, 2, H', W'): ``(dy, dx)`` gathered by the sampled ids from per-(slot, position) tables."""
    import torch

    n, map_h, map_w = sampled.shape
    device = sampled.device
    offset = _empty((n, 2, map_h, map_w), torch.float32, device)
    # centre − index in float64, rounded once, as _offsets does; 0 for the background and empty slots.
    # One (N, K, 2, max(H', W')) table: [..., 0, :H'] holds dy by row, [..., 1, :W'] dx by column.
    position = torch.arange(max(map_h, map_w), dtype=torch.float64, device=device)
    table = torch.where(slots.present[:, :, None, None], slots.centres[..., None] - position, 0.0).to(torch.float32)
    torch.gather(table[:, :, 0, :map_h].transpose(1, 2), 2, sampled, out=offset[:, 0])  # dy = table[n, id, 0, u]
    torch.gather(table[:, :, 1, :map_w], 1, sampled, out=offset[:, 1])  # dx = table[n, id, 1, v]
    return offset


def _pixel_weights(slots: _Slots, ids: torch.Tensor, area: int, weight: float) -> torch.Tensor:
    """float32 (N, H, W): ``weight`` on the pixels of instances below ``area`` pixels, 1 elsewhere."""
    import torch

    n = ids.shape[0]
    per_slot = torch.where(slots.present & (slots.counts < area), weight, 1.0).to(torch.float32)
    out = _empty(tuple(ids.shape), torch.float32, ids.device)
    pixels = ids.shape[1] * ids.shape[2]
    torch.gather(per_slot, 1, ids.reshape(n, pixels), out=out.view(n, pixels))
    return out
