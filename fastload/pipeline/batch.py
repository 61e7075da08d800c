"""The last steps of every batch, on the loader's device: normalise the image, widen the masks, render targets.

Both backends end here, so the batch contract (docs/design.md, "Loader") is produced in one place:

- the DALI graph hands over the normalised image and the warped masks (on the GPU, or on the CPU);
- the CPU backend's workers hand over uint8 images and compact masks, the cheapest bytes to move between
  processes, and the main process finishes them (on the GPU when the loader's device is CUDA; on the CPU it
  only normalises and widens them, `widen_batch`, the workers having rendered the targets).

Heat and offset maps and the semantic loss weights are rendered here, after augmentation, from each batch's own
``instance`` mask, by whichever of the definition's two kernels is faster where the batch is:

- on CUDA, `fastload.targets.render_targets`, the batched torch twin: integer scatter-adds, one gather, one
  scatter-max, no Python loop over samples or instances and, given the largest instance id from the samples'
  metadata, no host synchronisation;
- on the CPU, `fastload.targets.center_targets` and `semantic_weights` per sample (`sample_targets`: both from one
  pass, NumPy over runs of pixels:
  1.5-6x faster there than the torch twin, which touches every pixel several times; see
  benchmarks/test_bench_targets.py). The CPU loader's workers call `numpy_targets` themselves, in parallel.

Both are bit-identical (tests/test_targets.py), so where a batch is finished never changes its values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fastload.augment.config import AugmentConfig, TargetsConfig
from fastload.augment.params import map_hw
from fastload.augment.reference import normalize_constants, normalize_image
from fastload.pipeline.nvtx import nvtx_range
from fastload.targets import sample_targets


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


def numpy_targets(instance: np.ndarray, targets: TargetsConfig) -> dict[str, np.ndarray]:
    """One sample's targets from its augmented instance mask (H, W): ``heatmap`` float32 (1, H', W'),
    ``offset`` float32 (2, H', W'), ``semantic_weight`` float32 (H, W) — the NumPy definition."""
    heatmap, offset, weight = sample_targets(
        instance,
        sigma=targets.sigma,
        stride=targets.stride,
        small_instance_area=targets.small_instance_area,
        small_instance_weight=targets.small_instance_weight,
    )
    return {"heatmap": heatmap[None], "offset": offset, "semantic_weight": weight}


def render_batch_targets(instance: torch.Tensor, targets: TargetsConfig, *, max_id: int | None) -> dict[str, torch.Tensor]:
    """``heatmap`` (N, 1, H', W'), ``offset`` (N, 2, H', W'), ``semantic_weight`` (N, H, W), all float32, on the
    instance mask's device (see the module docstring for which kernel runs where)."""
    from fastload.targets import render_targets

    with nvtx_range("fastload/targets"):
        if instance.device.type == "cuda":
            return render_targets(
                instance,
                sigma=targets.sigma,
                stride=targets.stride,
                small_instance_area=targets.small_instance_area,
                small_instance_weight=targets.small_instance_weight,
                max_id=max_id,
            )
        (mh, mw), (n, h, w) = map_hw(tuple(instance.shape[1:]), targets.stride), tuple(instance.shape)
        out = {
            "heatmap": torch.empty((n, 1, mh, mw), dtype=torch.float32),
            "offset": torch.empty((n, 2, mh, mw), dtype=torch.float32),
            "semantic_weight": torch.empty((n, h, w), dtype=torch.float32),
        }
        masks = instance.numpy()
        for k in range(n):
            for key, value in numpy_targets(masks[k], targets).items():
                out[key][k] = torch.from_numpy(value)
        return out


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
    batch.update(render_batch_targets(batch["instance"], cfg.targets, max_id=max_id))
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
