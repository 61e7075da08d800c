"""The batched torch twin of the target definition: `render_targets`.

torch is imported inside each function: the module stays NumPy-only at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fastload.errors import ConfigError
from fastload.targets.definition import _check_params, _check_weight_params, _gaussian_window

if TYPE_CHECKING:
    import torch


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
