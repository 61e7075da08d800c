"""The last steps of every batch, on the loader's device: normalise the image, widen the masks, render targets.

Both backends end here, so the batch contract (docs/design.md, "Loader") is produced in one place:

- the DALI graph hands over the normalised image and the warped masks (on the GPU, or on the CPU);
- the CPU backend's workers hand over uint8 images and compact masks, the cheapest bytes to move between
  processes, and the main process finishes them (on the GPU when the loader's device is CUDA; on the CPU it
  only normalises and widens them, `widen_batch`, the workers having rendered the targets).

The targets (`TARGET_KEYS`: heatmap, offsets, semantic weights, and Panoptic-DeepLab's centre and offset loss
weights) are rendered here, after augmentation, from each batch's own masks, by whichever of the definition's two
kernels is faster where the batch is:

- on CUDA, and on the CPU for masks of up to `TWIN_ON_CPU_PIXELS` (64x64), `fastload.targets.render_targets`,
  the batched torch twin: a fixed sequence of torch ops whatever the batch, no Python loop over samples or
  instances and, given the largest instance id from the samples' metadata, no host synchronisation on CUDA. On
  the CPU it runs on one intra-op thread (`_one_intra_op_thread`): the loader's own threads hold the cores;
- on the CPU for larger masks, `fastload.targets.sample_targets` per sample (NumPy over runs of pixels);
- the loss weights, everywhere, by `render_weights` for the whole batch (two comparisons).

The CPU loader's workers, which hold one sample at a time, call the NumPy definition (`numpy_targets`:
`sample_targets`, `panoptic_weights`) themselves, in parallel.

Both are bit-identical (tests/test_targets.py, tests/test_panoptic_weights.py), so where a batch is finished
never changes its values. With ``targets: none`` nothing is rendered and the batches hold the image and the masks only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from fastload.augment.config import AugmentConfig, TargetsConfig
from fastload.augment.params import map_hw
from fastload.augment.reference import normalize_constants, normalize_image
from fastload.pipeline.nvtx import nvtx_range
from fastload.targets import panoptic_weights, render_targets, render_weights, sample_targets


def normalize_batch(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB → float32 (N, 3, H, W) ``(x/255 − mean)/std``, on the image's device.

    ``(x − 255·mean) · (1 / (255·std))`` in float32, the arithmetic of `fastload.augment.reference.normalize_image`
    (and of DALI's ``crop_mirror_normalize``, up to how each rounds its constants).
    """
    if image.dtype != torch.uint8 or image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"normalize_batch: image must be uint8 (N, H, W, 3), got {image.dtype} {tuple(image.shape)}")
    n, h, w, _ = image.shape
    out = _empty((n, 3, h, w), torch.float32, image.device)
    if image.device.type == "cpu":  # the reference itself, per sample (planes, NumPy): 1.5x torch's strided copy
        rows, pixels = out.numpy(), image.numpy()
        for k in range(n):
            normalize_image(pixels[k], mean, std, out=rows[k])
        return out
    shift, inv_scale = (torch.from_numpy(c).to(image.device).view(1, 3, 1, 1) for c in normalize_constants(mean, std))
    return out.copy_(image.permute(0, 3, 1, 2)).sub_(shift).mul_(inv_scale)


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor; on the CPU allocated by NumPy, which asks the kernel for huge pages (arrays of
    4 MB and more): a batch's fresh memory then costs a few faults of 2 MB instead of one per 4 kB page, which is
    most of the cost of widening a batch on a VM (torch's own allocator gets small pages)."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.empty(shape, dtype=torch.empty(0, dtype=dtype).numpy().dtype))


def widen_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``mask`` as ``dtype`` (the contract's int64 semantic / int32 instance), a new tensor on its device.

    On the CPU NumPy copies (one thread): torch's parallel copy wakes its OpenMP threads, which then spin for a
    while after every such copy, taking cores the loader's own threads need."""
    out = _empty(tuple(mask.shape), dtype, mask.device)
    if mask.device.type == "cpu":
        np.copyto(out.numpy(), mask.numpy(), casting="unsafe")
        return out
    return out.copy_(mask)


def target_layout(out_hw: tuple[int, int], targets: TargetsConfig | None, n: int) -> dict[str, tuple[int, ...]]:
    """The shape of each target of a batch of ``n`` samples of ``out_hw`` (all float32); {} without targets."""
    if targets is None:
        return {}
    (h, w), (mh, mw) = out_hw, map_hw(out_hw, targets.stride)
    return {
        "heatmap": (n, 1, mh, mw),
        "offset": (n, 2, mh, mw),
        "semantic_weight": (n, h, w),
        "center_weight": (n, 1, mh, mw),
        "offset_weight": (n, 1, mh, mw),
    }


def numpy_targets(semantic: np.ndarray, instance: np.ndarray, targets: TargetsConfig | None) -> dict[str, np.ndarray]:
    """One sample's targets from its augmented masks (H, W), as `target_layout` shapes them without the N: the
    NumPy definition (`sample_targets`, `panoptic_weights`); {} without targets."""
    if targets is None:
        return {}
    heatmap, offset, weight = sample_targets(instance, **targets.kernel_args)
    return sample_target_entries(heatmap, offset, weight, *panoptic_weights(semantic, instance, stride=targets.stride))


def sample_target_entries(
    heatmap: np.ndarray, offset: np.ndarray, semantic_weight: np.ndarray, center_weight: np.ndarray, offset_weight: np.ndarray
) -> dict[str, np.ndarray]:
    """One sample's `TARGET_KEYS` entries from the definitions' outputs, shaped as a batch row."""
    return {
        "heatmap": heatmap[None],
        "offset": offset,
        "semantic_weight": semantic_weight,
        "center_weight": center_weight[None],
        "offset_weight": offset_weight[None],
    }


TWIN_ON_CPU_PIXELS = 64 * 64
"""On the CPU, masks of up to this many pixels render by the batched twin (one intra-op thread), larger ones by the
NumPy definition per sample: where each was the faster in every run of benchmarks/test_bench_targets.py's
``cpu-kernel-choice`` group (this function made to take either branch, 48 masks of 64x64 to 256x256; results in
benchmarks/results/). From 96x96 on the twin's times spread over a factor 2 from run to run and NumPy's do not."""


def render_batch_targets(
    semantic: torch.Tensor, instance: torch.Tensor, targets: TargetsConfig | None, *, max_id: int | None
) -> dict[str, torch.Tensor]:
    """The batch's `TARGET_KEYS` (`target_layout`), all float32, on the masks' device (see the module docstring for
    which kernel runs where); {} without targets."""
    if targets is None:
        return {}
    with nvtx_range("fastload/targets"):
        weights = render_weights(semantic, instance, stride=targets.stride)
        if instance.device.type == "cuda" or instance.shape[1] * instance.shape[2] <= TWIN_ON_CPU_PIXELS:
            with _one_intra_op_thread(instance.device):
                out = render_targets(instance, max_id=max_id, **targets.kernel_args)
            return {**out, **weights}
        layout = target_layout(tuple(instance.shape[1:]), targets, len(instance))
        maps = ("heatmap", "offset", "semantic_weight")
        out = {key: _empty(layout[key], torch.float32, instance.device) for key in maps}
        masks = instance.numpy()
        for k in range(len(instance)):
            rendered = sample_targets(masks[k], **targets.kernel_args)
            for key, value in zip(maps, rendered, strict=True):
                out[key].numpy()[k] = value[None] if key == "heatmap" else value
        return {**out, **weights}


@contextmanager
def _one_intra_op_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, torch's intra-op threads limited to one while the block runs, then restored.

    The targets of a batch render while the loader's own threads (DALI's, or the CpuLoader's workers) hold the
    cores: torch's intra-op threads would then wait for each other at every op of the twin, and spin after it.
    ``torch.set_num_threads`` is per process: a torch op another thread runs meanwhile gets one thread too.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def finish_batch(
    *,
    image: torch.Tensor,
    semantic: torch.Tensor,
    instance: torch.Tensor,
    index: torch.Tensor,
    cfg: AugmentConfig,
    device: torch.device,
    max_id: int | None,
) -> dict[str, torch.Tensor]:
    """The batch dict (`BATCH_KEYS`) from augmented uint8 images and masks, finished on ``device``.

    image uint8 (N, H, W, 3); semantic uint8 (N, H, W); instance int16/int32 (N, H, W); index int64 (N,).
    Moving the compact inputs first and widening on ``device`` moves the fewest bytes (uint8 instead of
    float32 images, uint8/int16 instead of int64/int32 masks).
    """
    cuda = device.type == "cuda"
    with nvtx_range("fastload/h2d" if cuda else "fastload/finish"):
        image, semantic, instance, index = (
            t.to(device, non_blocking=cuda) for t in (image, semantic, instance, index)
        )
        batch = widen_batch(image=image, semantic=semantic, instance=instance, cfg=cfg)
    batch.update(render_batch_targets(batch["semantic"], batch["instance"], cfg.targets, max_id=max_id))
    batch["index"] = index
    return batch


def widen_batch(
    *, image: torch.Tensor, semantic: torch.Tensor, instance: torch.Tensor, cfg: AugmentConfig
) -> dict[str, torch.Tensor]:
    """The contract's ``image`` (normalised float32 (N, 3, H, W)), ``semantic`` (int64) and ``instance`` (int32)
    from uint8 (N, H, W, 3) images, uint8 semantic and int16/int32 instance masks, on their device."""
    return {
        "image": normalize_batch(image, cfg.normalize.mean, cfg.normalize.std),
        "semantic": widen_mask(semantic, torch.int64),
        "instance": widen_mask(instance, torch.int32),
    }
