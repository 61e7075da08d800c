"""The ``albumentations`` peer: what a competent engineer writes today with a torch DataLoader and Albumentations.

Per sample, in DataLoader worker processes (persistent, one OpenCV thread each, as many as the CpuLoader gets):
read the cache sample, OpenCV decode, resize to fit the output (`fastload.tools.bench.peers.common.fit_to_output`),
one ``A.Compose`` on uint8 pixels, then the Panoptic-DeepLab targets from the *augmented* instance mask with
`fastload.targets.center_targets` and `semantic_weights` (or, as ``albumentations-loop``, with Panoptic-DeepLab's
per-instance loop `fastload.targets.center_targets_per_instance`: the user's true starting point). On a CPU
loader the worker also normalises (once, uint8 → float32 CHW); for CUDA it hands over uint8 and the main process
normalises on the GPU, from pinned memory.

The pipeline, built from the same YAML (`fastload.augment.config.AugmentConfig`), and where it differs from
fastload's distribution (``configs/default.yaml``):

=====================  ==============================================  =============================================
fastload               Albumentations                                  difference
=====================  ==============================================  =============================================
flip_x / flip_y        ``HorizontalFlip`` / ``VerticalFlip``           same
rotation, scale,       one ``Affine(rotate, scale, translate_percent,  one gate: applied with p = P(any of the three
translation            linear image, nearest masks, fill 0, mask       is on) = 0.825 by default, and then all three
(independent gates)    fill semantic 255 / instance 0)                 are drawn (fastload gates each); a second
                                                                       resampling after the resize-to-fit
hue (degrees), sat     ``HueSaturationValue(hue_shift_limit=hue/2,     OpenCV HSV (hue in 2-degree units, saturation
(factor)               sat_shift_limit=±(f−1)·128)``, one gate         *added*, ±(f − 1)·128 ≈ the factor at mid
                                                                       saturation) instead of DALI's YIQ rotation;
                                                                       one gate p = 1 − (1 − p_h)(1 − p_s)
brightness, contrast   ``RandomBrightnessContrast(brightness_by_max=   brightness added as a fraction of the image
(factors)              False)``, one gate                              mean, contrast about 0 (fastload: factors,
                                                                       contrast about 128); one gate as above
noise σ (0..255)       ``GaussNoise(std_range=σ/255)``                 fresh per-pixel Gaussian noise (fastload: a
                                                                       window of a fixed, replayable texture)
shadow (straight band) ``RandomShadow`` (whole image, one shadow,      a random polygon (5 vertices) instead of a
                       shadow_intensity_range=strength)                straight band of drawn half-width
=====================  ==============================================  =============================================

Order as fastload: geometry, hue/saturation, brightness/contrast, shadow, noise.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

from fastload.augment.config import AugmentConfig, TargetsConfig
from fastload.augment.reference import normalize_image
from fastload.errors import ConfigError
from fastload.labels import INSTANCE_FILL, SEMANTIC_FILL
from fastload.pipeline.batch import normalize_batch, numpy_targets, sample_target_entries
from fastload.pipeline.plan import TARGET_KEYS
from fastload.targets import center_targets_per_instance, panoptic_weights, semantic_weights
from fastload.tools.bench.peers.common import PeerParts, any_gate, require, widen_labels


def build_compose(cfg: AugmentConfig, *, seed: int | None = None) -> Any:
    """The ``A.Compose`` for ``cfg`` (see the module docstring for the mapping); masks as one uint16 (H, W, 2)
    stack (semantic, instance) so one nearest warp moves both, with per-channel fill (255, 0)."""
    A = require("albumentations", peer="albumentations")
    geo, pho = cfg.geometry, cfg.photometric
    ops: list[Any] = []
    if geo.flip_x > 0:
        ops.append(A.HorizontalFlip(p=geo.flip_x))
    if geo.flip_y > 0:
        ops.append(A.VerticalFlip(p=geo.flip_y))
    p_affine = any_gate(geo.rotation.p, geo.scale.p, geo.translation.p)
    if p_affine > 0:
        m = geo.translation.max_fraction if geo.translation.p > 0 else 0.0
        ops.append(
            A.Affine(
                rotate=tuple(geo.rotation.range) if geo.rotation.p > 0 else 0.0,
                scale=tuple(geo.scale.range) if geo.scale.p > 0 else 1.0,
                translate_percent={"x": (-m, m), "y": (-m, m)},
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=(SEMANTIC_FILL, INSTANCE_FILL),
                p=p_affine,
            )
        )
    p_hs = any_gate(pho.hue.p, pho.saturation.p)
    if p_hs > 0:
        hue = tuple(h / 2.0 for h in pho.hue.range) if pho.hue.p > 0 else 0.0  # OpenCV hue: 2 degrees per unit
        sat = tuple((f - 1.0) * 128.0 for f in pho.saturation.range) if pho.saturation.p > 0 else 0.0
        ops.append(A.HueSaturationValue(hue_shift_limit=hue, sat_shift_limit=sat, val_shift_limit=0, p=p_hs))
    p_bc = any_gate(pho.brightness.p, pho.contrast.p)
    if p_bc > 0:
        bri = tuple(f - 1.0 for f in pho.brightness.range) if pho.brightness.p > 0 else 0.0
        con = tuple(f - 1.0 for f in pho.contrast.range) if pho.contrast.p > 0 else 0.0
        ops.append(A.RandomBrightnessContrast(brightness_limit=bri, contrast_limit=con, brightness_by_max=False, p=p_bc))
    if pho.shadow.p > 0:
        ops.append(
            A.RandomShadow(
                shadow_roi=(0.0, 0.0, 1.0, 1.0),
                num_shadows_limit=(1, 1),
                shadow_intensity_range=tuple(pho.shadow.strength),
                p=pho.shadow.p,
            )
        )
    if pho.noise.p > 0:
        ops.append(A.GaussNoise(std_range=tuple(s / 255.0 for s in pho.noise.range), p=pho.noise.p))
    return A.Compose(ops, seed=seed)


def loop_targets(semantic: np.ndarray, instance: np.ndarray, targets: TargetsConfig | None) -> dict[str, np.ndarray]:
    """`fastload.pipeline.batch.numpy_targets` with Panoptic-DeepLab's per-instance loop for heat and offsets."""
    if targets is None:
        return {}
    heatmap, offset = center_targets_per_instance(instance, sigma=int(targets.sigma))
    weight = semantic_weights(
        instance, small_instance_area=targets.small_instance_area, small_instance_weight=targets.small_instance_weight
    )
    return sample_target_entries(heatmap, offset, weight, *panoptic_weights(semantic, instance))


class AlbumentationsTransform:
    """The worker's per-sample step: ``A.Compose``, targets, and (CPU loader) normalisation."""

    def __init__(self, cfg: AugmentConfig, *, loop: bool, normalize: bool) -> None:
        self.cfg, self.loop, self.normalize = cfg, loop, normalize
        self.compose = build_compose(cfg)

    def reseed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        masks = np.stack([sample["semantic"].astype(np.uint16), sample["instance"]], axis=-1)
        out = self.compose(image=sample["image"], mask=masks)
        image, masks = out["image"], out["mask"]
        semantic, instance = masks[..., 0].astype(np.uint8), masks[..., 1].view(np.int16)  # ids <= 32767
        targets = (loop_targets if self.loop else numpy_targets)(semantic, instance, self.cfg.targets)
        if self.normalize:
            image = normalize_image(image, self.cfg.normalize.mean, self.cfg.normalize.std)
        return {
            "image": image,
            "semantic": semantic,
            "instance": instance,
            **targets,
            "index": sample["index"],
        }


def _worker_init(_worker_id: int) -> None:
    import torch.utils.data as tud

    cv2.setNumThreads(1)
    info = tud.get_worker_info()
    # each worker its own augmentation stream (torch gives every worker a different seed)
    info.dataset.transform.reseed(info.seed % 2**32)


def albumentations_parts(augment: AugmentConfig, *, device: torch.device, seed: int, loop: bool) -> PeerParts:
    """The Albumentations peer (``loop``: Panoptic-DeepLab's per-instance target loop): `AlbumentationsTransform`
    in the workers (normalising there on a CPU loader), the labels widened and the image normalised on ``device``."""
    t = augment.targets
    if loop and t is not None and (t.stride != 1 or t.sigma != int(t.sigma)):
        raise ConfigError(
            "albumentations-loop: Panoptic-DeepLab's per-instance loop renders stride 1 with an integer sigma; "
            f"the config has stride {t.stride}, sigma {t.sigma}"
        )
    transform = AlbumentationsTransform(augment, loop=loop, normalize=torch.device(device).type == "cpu")
    transform.reseed(seed)
    norm = augment.normalize

    def finish(raw: dict[str, torch.Tensor], dev: torch.device) -> dict[str, torch.Tensor]:
        cuda = dev.type == "cuda"
        batch = widen_labels(raw, dev)
        image = raw["image"].to(dev, non_blocking=cuda)
        batch["image"] = image if image.dtype == torch.float32 else normalize_batch(image, norm.mean, norm.std)
        for key in TARGET_KEYS:
            if key in raw:  # none with `targets: none`
                batch[key] = raw[key].to(dev, non_blocking=cuda)
        return batch

    return PeerParts(transform, finish, _worker_init)
