"""Evaluation at each sample's own size (``size=None``): no warp, batches padded to their largest sample.

A loader made with ``size=None`` resizes nothing: every sample keeps its stored (H, W), and a batch is as large
as its largest sample, each side rounded up to a multiple of the targets' stride (so the maps divide evenly). A
sample smaller than its batch sits in the top-left corner; the rest is padding, with the same values as the
outside of an augmented image: image 0 (after normalisation, as detectron2's ``ImageList`` pads), semantic 255
(ignore), instance 0. The batch's ``valid`` entry, bool (N, H, W), is True exactly on each sample's own pixels:
a metric that counts pixels reads it (or ignores 255). Targets are rendered from the padded masks, so padding has
zero loss weight. With batch_size=1 nothing is padded but the rounding to the stride.

This is the definition both engines follow (`pad_sample` in the CPU engine's workers; ``fn.pad`` in the DALI
graph, `fastload.pipeline.dali.graph`); tests/test_native_size.py holds them to it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastload.augment.config import AugmentConfig
from fastload.labels import INSTANCE_FILL, SEMANTIC_FILL


def random_ops(cfg: AugmentConfig) -> list[str]:
    """The config's augmentations that can fire (probability > 0), by their YAML names."""
    geo, pho = cfg.geometry, cfg.photometric
    chances = {
        "geometry.flip_x": geo.flip_x,
        "geometry.flip_y": geo.flip_y,
        "geometry.rotation.p": geo.rotation.p,
        "geometry.scale.p": geo.scale.p,
        "geometry.translation.p": geo.translation.p,
        **{f"photometric.{name}.p": getattr(pho, name).p for name in ("hue", "saturation", "brightness", "contrast", "noise", "shadow")},
    }
    return [name for name, p in chances.items() if p > 0]


def check_native(cfg: AugmentConfig, *, loader: str) -> None:
    """``size=None`` evaluates samples as they are: refuse a config that would augment them."""
    ops = random_ops(cfg)
    if ops:
        raise ValueError(
            f"{loader}: size=None (each sample at its own size, for evaluation) takes no augmentation, but the "
            f"augment config turns on {', '.join(ops)}; pass augment='none' (normalisation and targets stay), "
            "or give a size"
        )


def padded_hw(hws: np.ndarray, align: int) -> tuple[int, int]:
    """A batch's (H, W): its samples' largest height and width (``hws`` int (N, 2)), each rounded up to a
    multiple of ``align``; (0, 0) for an empty batch."""
    if len(hws) == 0:
        return 0, 0
    h, w = (int(v) for v in np.asarray(hws).max(axis=0))
    return -(-h // align) * align, -(-w // align) * align


def pad_sample(sample: dict[str, Any], out_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """One decoded sample (``image`` uint8 (h, w, 3), ``semantic``, ``instance`` (h, w)) in the top-left corner of
    ``out_hw``: image 0, semantic 255, instance 0 elsewhere (the NumPy definition of the padding)."""
    h, w = sample["semantic"].shape
    oh, ow = out_hw
    if h > oh or w > ow:
        raise ValueError(f"a {h}x{w} sample does not fit a {oh}x{ow} batch")
    image = np.zeros((oh, ow, 3), np.uint8)
    semantic = np.full((oh, ow), SEMANTIC_FILL, sample["semantic"].dtype)
    instance = np.full((oh, ow), INSTANCE_FILL, sample["instance"].dtype)
    image[:h, :w], semantic[:h, :w], instance[:h, :w] = sample["image"], sample["semantic"], sample["instance"]
    return {"image": image, "semantic": semantic, "instance": instance}


def valid_mask(hws: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """bool (N, H, W), True on each sample's own pixels (``hws`` int (N, 2), on the device wanted): two
    comparisons for the whole batch."""
    oh, ow = out_hw
    rows = torch.arange(oh, device=hws.device).view(1, oh, 1) < hws[:, 0].view(-1, 1, 1)
    cols = torch.arange(ow, device=hws.device).view(1, 1, ow) < hws[:, 1].view(-1, 1, 1)
    return rows & cols


def zero_padding(image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The normalised image (N, 3, H, W) with 0 outside ``valid`` (in place)."""
    return image.masked_fill_(~valid.unsqueeze(1), 0.0)
