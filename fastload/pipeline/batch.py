"""The last steps of every batch, on the loader's device: normalise the image, widen the masks, render targets.

Both backends end here, so the batch contract (docs/design.md, "Loader") is produced in one place:

- the DALI graph hands over the normalised image and the warped masks (on the GPU, or on the CPU);
- the CPU backend's workers hand over uint8 images and compact masks, the cheapest bytes to move between
  processes, and the main process finishes them (on the GPU when the loader's device is CUDA).

Heat and offset maps and the semantic loss weights are rendered here, after augmentation, from each batch's own
``instance`` mask, with `fastload.targets.render_targets` (the torch twin of `center_targets`): integer
scatter-adds, one gather, one scatter-max; no Python loop over samples or instances and, given the largest
instance id from the samples' metadata, no host synchronisation on CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastload.augment.config import AugmentConfig, TargetsConfig
from fastload.augment.reference import normalize_constants
from fastload.pipeline.nvtx import nvtx_range


def normalize_batch(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB → float32 (N, 3, H, W) ``(x/255 − mean)/std``, on the image's device.

    ``(x − 255·mean) · (1 / (255·std))`` in float32, the arithmetic of `fastload.augment.reference.normalize_image`
    (and of DALI's ``crop_mirror_normalize``, up to how each rounds its constants).
    """
    if image.dtype != torch.uint8 or image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"normalize_batch: image must be uint8 (N, H, W, 3), got {image.dtype} {tuple(image.shape)}")
    shift, inv_scale = (torch.from_numpy(c).to(image.device).view(1, 3, 1, 1) for c in normalize_constants(mean, std))
    out = image.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    return out.sub_(shift).mul_(inv_scale)


def render_batch_targets(instance: torch.Tensor, targets: TargetsConfig, *, max_id: int | None) -> dict[str, torch.Tensor]:
    """``heatmap`` (N, 1, H', W'), ``offset`` (N, 2, H', W'), ``semantic_weight`` (N, H, W), all float32."""
    from fastload.targets import render_targets

    with nvtx_range("fastload/targets"):
        return render_targets(
            instance,
            sigma=targets.sigma,
            stride=targets.stride,
            small_instance_area=targets.small_instance_area,
            small_instance_weight=targets.small_instance_weight,
            max_id=max_id,
        )


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
        batch = {
            "image": normalize_batch(image, cfg.normalize.mean, cfg.normalize.std),
            "semantic": semantic.to(torch.int64),
            "instance": instance.to(torch.int32),
        }
    batch.update(render_batch_targets(batch["instance"], cfg.targets, max_id=max_id))
    batch["index"] = index
    return batch
