"""A small but real segmentation network and its Panoptic-DeepLab style loss, for measuring stall.

The benchmark needs compute that looks like the user's training step (strided convolutions, an upsampling
decoder, three heads, a loss over all targets, an optimizer step under bf16 autocast), not a sleep. It is
deliberately small so that the demo finishes on a 2-core CPU; on a GPU it is light enough that the loader, not
the network, is what a stall measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastload.labels import IGNORE
from fastload.validation import check_int

# Panoptic-DeepLab (Cheng et al., 2020) loss weights: semantic 1, centre heatmap 200, offsets 0.01
SEMANTIC_WEIGHT = 1.0
HEATMAP_WEIGHT = 200.0
OFFSET_WEIGHT = 0.01


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SegNet(nn.Module):
    """Encoder (4 strided stages, output stride 16) → decoder with skips (stride 4) → three heads.

    Parameters
    ----------
    num_classes : the semantic logits, K + 1 with background: ``loader.num_classes`` (``len(loader.classes)``),
        the same number as ``num_classes`` everywhere in fastload and torchvision's segmentation models
    width : channels of the first stage; later stages use 2x and 4x

    forward(image float32 (N, 3, H, W)) → dict
        semantic : (N, num_classes, H, W) logits; channel k scores train id k (0 = background)
        heatmap  : (N, 1, H, W)
        offset   : (N, 2, H, W) (dy, dx)
    H and W must be divisible by 16. N may be 0 (an empty batch: see `segnet_loss`).
    """

    def __init__(self, num_classes: int, *, width: int = 32) -> None:
        super().__init__()
        try:
            check_int("SegNet: num_classes", num_classes, 2, error=ValueError)
        except ValueError as exc:
            raise ValueError(f"{exc} (background + at least one class: loader.num_classes)") from None
        w = width
        self.num_classes = num_classes
        self.stem = nn.Sequential(_conv_bn_relu(3, w, 2), _conv_bn_relu(w, w))  # /2
        self.stage2 = nn.Sequential(_conv_bn_relu(w, 2 * w, 2), _conv_bn_relu(2 * w, 2 * w))  # /4
        self.stage3 = nn.Sequential(_conv_bn_relu(2 * w, 4 * w, 2), _conv_bn_relu(4 * w, 4 * w))  # /8
        self.stage4 = nn.Sequential(_conv_bn_relu(4 * w, 4 * w, 2), _conv_bn_relu(4 * w, 4 * w))  # /16
        self.skip8 = nn.Conv2d(4 * w, 2 * w, 1)
        self.skip4 = nn.Conv2d(2 * w, 2 * w, 1)
        self.up8 = _conv_bn_relu(4 * w + 2 * w, 2 * w)
        self.up4 = _conv_bn_relu(2 * w + 2 * w, 2 * w)
        self.semantic_head = nn.Sequential(_conv_bn_relu(2 * w, w), nn.Conv2d(w, num_classes, 1))
        self.heatmap_head = nn.Sequential(_conv_bn_relu(2 * w, w), nn.Conv2d(w, 1, 1))
        self.offset_head = nn.Sequential(_conv_bn_relu(2 * w, w), nn.Conv2d(w, 2, 1))

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = image.shape[-2:]
        if h % 16 or w % 16:
            raise ValueError(f"SegNet: input height and width must be divisible by 16, got {h}x{w}")
        x2 = self.stem(image)
        x4 = self.stage2(x2)
        x8 = self.stage3(x4)
        x16 = self.stage4(x8)
        y = F.interpolate(x16, size=x8.shape[-2:], mode="bilinear", align_corners=False)
        y = self.up8(torch.cat([y, self.skip8(x8)], dim=1))
        y = F.interpolate(y, size=x4.shape[-2:], mode="bilinear", align_corners=False)
        y = self.up4(torch.cat([y, self.skip4(x4)], dim=1))

        def full(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)

        return {
            "semantic": full(self.semantic_head(y)),
            "heatmap": full(self.heatmap_head(y)),
            "offset": full(self.offset_head(y)),
        }


@dataclass(frozen=True)
class LossParts:
    total: torch.Tensor
    semantic: torch.Tensor
    heatmap: torch.Tensor
    offset: torch.Tensor


def _to_map_size(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def segnet_loss(pred: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> LossParts:
    """Panoptic-DeepLab style loss, with the batch's own weights and masks.

    semantic : cross-entropy over (N, num_classes, H, W) logits (num_classes = K + 1 = ``loader.num_classes``)
               vs int64 (N, H, W) targets, 255 ignored, each pixel weighted by ``batch["semantic_weight"]``
               (small instances count 3x) when the batch has it
    heatmap  : MSE vs float32 (N, 1, H', W'), weighted by ``batch["center_weight"]`` (0 where ``semantic == 255``:
               crowd and outside-image pixels hold no centre the model could be asked for)
    offset   : L1 vs float32 (N, 2, H', W'), weighted by ``batch["offset_weight"]`` (1 on thing pixels)

    Each term is a sum over its pixels divided by their count (at least 1), so an empty batch (N = 0: a rank's
    share of a short last step with ``drop_last=False``) or a fully ignored one gives 0, not 0/0 = NaN, still
    attached to the predictions: ``backward()`` works (zero gradients) and every DDP rank joins the all-reduce.
    Predictions are computed in float32 whatever the autocast dtype of the forward pass.
    """
    semantic = pred["semantic"].float()
    target = batch["semantic"]
    if target.dtype != torch.long:
        target = target.long()
    # sum / count rather than the mean reduction: a fully ignored batch gives 0, not 0/0 = nan, and no
    # host-side check (which would make CUDA wait) is needed
    valid = target != IGNORE
    ce = F.cross_entropy(semantic, target, ignore_index=IGNORE, reduction="none")  # 0 where ignored
    weight = batch.get("semantic_weight")
    if weight is not None:
        ce = ce * weight
    sem = ce.sum() / valid.sum().clamp_min(1)

    map_size = tuple(batch["heatmap"].shape[-2:])
    centre_mask = batch["center_weight"]  # (N, 1, H', W')
    squared = (_to_map_size(pred["heatmap"].float(), map_size) - batch["heatmap"]).square() * centre_mask
    heat = squared.sum() / centre_mask.sum().clamp_min(1.0)

    mask = batch["offset_weight"]  # (N, 1, H', W')
    l1 = (_to_map_size(pred["offset"].float(), map_size) - batch["offset"]).abs() * mask
    off = l1.sum() / (2.0 * mask.sum()).clamp_min(1.0)

    total = SEMANTIC_WEIGHT * sem + HEATMAP_WEIGHT * heat + OFFSET_WEIGHT * off
    return LossParts(total=total, semantic=sem, heatmap=heat, offset=off)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the device runs it: CUDA with bf16 support, and CPU (works everywhere, slow without AMX)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16
    return None


PRECISIONS = ("bf16", "fp32")


class TrainStep:
    """One optimizer step of SegNet on a batch: forward under autocast, loss, backward, Adam step.

    precision : "bf16" runs the forward pass under ``torch.autocast(..., dtype=torch.bfloat16)`` where the
        device supports it (CUDA with bf16, and CPU — where it is emulated and much slower than fp32 unless
        the CPU has AVX512-BF16 or AMX); "fp32" runs without autocast.

    Calling it returns the (detached) loss tensor without reading it back, so on CUDA the host does not wait
    for the GPU and the next batch can be fetched while the step runs.
    """

    def __init__(
        self,
        num_classes: int,  # the semantic logits, K + 1 (the cache's num_classes)
        device: torch.device | str,
        *,
        width: int = 32,
        precision: str = "bf16",
        seed: int = 0,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"TrainStep: precision must be one of {PRECISIONS}, got {precision!r}")
        torch.manual_seed(seed)
        self.device = torch.device(device)
        # channels_last: the layout oneDNN and cuDNN run bf16 convolutions fastest in
        self.model = (
            SegNet(num_classes, width=width).to(self.device, memory_format=torch.channels_last).train()
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.dtype = autocast_dtype(self.device) if precision == "bf16" else None

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        image = batch["image"].contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        ):
            pred = self.model(image)
        loss = segnet_loss(pred, batch).total
        loss.backward()
        self.optimizer.step()
        return loss.detach()
