"""The ``kornia`` peer: DataLoader workers decode and resize (uint8), Kornia augments whole batches on the device.

Workers (persistent, one OpenCV thread each) read the cache sample, decode it with OpenCV and resize it to fit the
output (`fastload.tools.bench.peers.common.fit_to_output`), and hand over compact uint8 images and masks (pinned for
CUDA). The main process moves them to the loader's device (the GPU on a GPU machine; the CPU in CI), converts
the image to float32 in [0, 1] and runs one ``kornia.augmentation.AugmentationSequential`` over the batch, image
linear and masks nearest (one affine for all three), then normalises and renders the Panoptic-DeepLab targets
from the augmented masks with the loaders' own `fastload.pipeline.batch.render_batch_targets` (the batched torch
twin of `center_targets` on a GPU), on the same device.

Where the distribution differs from fastload's (``configs/default.yaml``):

=====================  ==============================================  =============================================
fastload               Kornia                                          difference
=====================  ==============================================  =============================================
flip_x / flip_y        ``RandomHorizontalFlip`` / ``RandomVerticalFlip`` same
rotation, scale,       one ``RandomAffine(degrees, translate, scale)``  one gate p = P(any of the three is on), then
translation                                                            all three drawn (as the Albumentations peer);
                                                                       a second resampling after the resize-to-fit
hue, saturation,       ``ColorJitter`` one per factor, each with its   torchvision's HSV hue/saturation (fastload:
brightness, contrast   own p                                           DALI's YIQ rotation); brightness a factor,
                                                                       contrast about the image mean (fastload: 128)
noise σ (0..255)       ``RandomGaussianNoise(std=mid(σ)/255)``         one fixed σ (Kornia draws no σ range), fresh
                                                                       noise per pixel (fastload: a texture window)
shadow (straight band) ``RandomPlasmaShadow(shade_intensity=           a fractal (plasma) shade over part of the image
                       −strength)``                                    instead of a straight band
=====================  ==============================================  =============================================

Mask fill: Kornia pads warped masks with 0, so the semantic mask is warped as ``semantic + 1`` in float32 and
shifted back (0 → 255, the ignore label); instance ids (≤ 32767) are exact in float32 and pad with 0 as they
should. Order as fastload: geometry, colour, shadow, noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastload.augment.config import AugmentConfig
from fastload.labels import SEMANTIC_FILL
from fastload.pipeline.batch import render_batch_targets
from fastload.tools.bench.peers.common import PeerParts, any_gate, require


def build_sequential(cfg: AugmentConfig) -> Any:
    """The ``AugmentationSequential`` for ``cfg``: data keys image, mask (semantic + 1), mask (instance)."""
    K = require("kornia.augmentation", peer="kornia")
    from kornia.constants import DataKey, Resample

    geo, pho = cfg.geometry, cfg.photometric
    ops: list[Any] = []
    if geo.flip_x > 0:
        ops.append(K.RandomHorizontalFlip(p=geo.flip_x))
    if geo.flip_y > 0:
        ops.append(K.RandomVerticalFlip(p=geo.flip_y))
    p_affine = any_gate(geo.rotation.p, geo.scale.p, geo.translation.p)
    if p_affine > 0:
        m = geo.translation.max_fraction if geo.translation.p > 0 else 0.0
        ops.append(
            K.RandomAffine(
                degrees=tuple(geo.rotation.range) if geo.rotation.p > 0 else 0.0,
                translate=(m, m) if m > 0 else None,
                scale=tuple(geo.scale.range) if geo.scale.p > 0 else None,
                resample="bilinear",
                padding_mode="zeros",
                p=p_affine,
            )
        )
    for name, rr in (("hue", pho.hue), ("saturation", pho.saturation)):
        if rr.p > 0:
            value = tuple(h / 360.0 for h in rr.range) if name == "hue" else tuple(rr.range)
            ops.append(K.ColorJitter(**{name: value}, p=rr.p))
    for name, rr in (("brightness", pho.brightness), ("contrast", pho.contrast)):
        if rr.p > 0:
            ops.append(K.ColorJitter(**{name: tuple(rr.range)}, p=rr.p))
    if pho.shadow.p > 0:
        lo, hi = pho.shadow.strength
        ops.append(K.RandomPlasmaShadow(shade_intensity=(-hi, -lo), shade_quantity=(0.0, 0.5), p=pho.shadow.p))
    if pho.noise.p > 0:
        sigma = 0.5 * (pho.noise.range[0] + pho.noise.range[1]) / 255.0
        ops.append(K.RandomGaussianNoise(mean=0.0, std=sigma, p=pho.noise.p))
    mask_args = {"resample": Resample.NEAREST, "align_corners": None}
    return K.AugmentationSequential(
        *ops, data_keys=["input", "mask", "mask"], extra_args={DataKey.MASK: mask_args}
    )


class KorniaFinish:
    """The main process's step: batch augmentation, normalisation and targets on the loader's device."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        self.sequential = build_sequential(cfg)
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._constants:
            norm = self.cfg.normalize
            self._constants[device] = tuple(
                torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1) for v in (norm.mean, norm.std)
            )
        return self._constants[device]

    @torch.no_grad()
    def __call__(self, raw: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        cuda = device.type == "cuda"
        image = raw["image"].to(device, non_blocking=cuda).permute(0, 3, 1, 2).float().div_(255.0)
        semantic = raw["semantic"].to(device, non_blocking=cuda).unsqueeze(1).float().add_(1.0)
        instance = raw["instance"].to(device, non_blocking=cuda).unsqueeze(1).float()
        image, semantic, instance = self.sequential(image, semantic, instance)
        image = image.clamp_(0.0, 1.0)
        mean, std = self._mean_std(device)
        semantic = semantic[:, 0].round_().to(torch.int64).sub_(1)
        semantic[semantic < 0] = SEMANTIC_FILL  # Kornia's zero padding: outside the image
        instance = instance[:, 0].round_().to(torch.int32)
        max_id = int(raw["max_id"].max()) if raw["max_id"].numel() else 0
        targets = render_batch_targets(semantic, instance, self.cfg.targets, max_id=max_id)  # as the loaders do
        return {
            "image": image.sub_(mean).div_(std).contiguous(),
            "semantic": semantic,
            "instance": instance,
            **targets,
            "index": raw["index"].to(device, non_blocking=cuda).to(torch.int64),
        }


def _compact(sample: dict[str, Any]) -> dict[str, Any]:
    # the worker's whole job: uint8 image and masks (ids <= 32767 as int16: torch has no uint16 collate)
    sample["instance"] = sample["instance"].view(np.int16)
    return sample


def kornia_parts(augment: AugmentConfig, *, seed: int) -> PeerParts:
    """The Kornia peer: the workers only decode and resize (`_compact`); `KorniaFinish` augments on the device."""
    finish = KorniaFinish(augment)
    torch.manual_seed(seed)  # Kornia draws from torch's global generator
    return PeerParts(_compact, finish)
