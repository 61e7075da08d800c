"""What a DALI graph is built from and what it takes in: `GraphSpec`, `PhotometricOps`, the input columns.

Every input of the graph is one dense array per batch (N first), made by the feed workers
(`fastload.pipeline.dali.feed`): the training process hands DALI a handful of arrays per batch and never a
Python object per sample. What varies in length from sample to sample (encoded bytes, band tables) travels padded,
with its length beside it, and the graph slices it back (`fastload.pipeline.dali.graph`).

=================  ============================  ==============================================================
input              dtype, shape                  content
=================  ============================  ==============================================================
``image``          uint8 (N, L)                  the encoded image member, zero-padded to the batch's longest
``image_len``      int32 (N, 1)                  its length in bytes
``sem``, ``ins``   uint8 / int16 (N, H, W, 1)    "cpu": the decoded masks (ids <= 32767 read as int16), padded
                                                 to the batch's largest with the warp's fill (255 / 0): a
                                                 nearest warp reads the same values there as outside the image
``labels``         uint8 (N, L)                  "gpu": the two LZ4 label members, semantic then instance, padded
``sem_chunks``,    int32 (N, 2, B)               "gpu": (offset in ``labels``, compressed size) of each LZ4 band,
``ins_chunks``                                   padded to the batch's most bands
``sem_dims``,      int32 (N, 6)                  "gpu": bands, rows per band, width (a band's shape), padded
``ins_dims``                                     height, width, 1 (the inflated array's shape)
``image_hw``       int32 (N, 2)                  native size (``out_size`` None) only, instead of the parameters:
                                                 each sample's stored (H, W), to which its masks are cut
``image_affine``   float32 (N, 2, 3)             forward affine, source image -> output (``inverse_map=False``)
``scalars``        float32 (N, len(SCALARS))     photometric values in the order of `SCALARS`
``noise_anchor``   int32 (N, 2)                  (row, column) of the sample's window in the noise texture
=================  ============================  ==============================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fastload.augment.config import AugmentConfig, PhotometricConfig, RandomRange
from fastload.augment.params import ParamsBatch, ShadowBand, map_hw
from fastload.pipeline.native import check_native

IMAGE_INPUTS = ("image", "image_len")
CPU_LABEL_INPUTS = ("sem", "ins")
GPU_LABEL_INPUTS = ("labels", "sem_chunks", "sem_dims", "ins_chunks", "ins_dims")
PARAM_INPUTS = ("image_affine", "scalars", "noise_anchor")
NATIVE_INPUTS = ("image_hw",)

SCALARS = (
    "hue",
    "saturation",
    "brightness",
    "contrast",
    "shadow_nx",
    "shadow_ny",
    "shadow_c",
    "shadow_half_width",
    "shadow_strength",
    "noise_sigma",
)
"""The per-sample photometric scalars, packed in this order into one float32 vector (the ``scalars`` input)."""
SHADOW_SCALARS = SCALARS[4:9]
"""The shadow band's five scalars, in the order `fastload.augment.params.shadow_band` returns them."""

OUTPUTS = {
    "image": torch.float32,  # (N, 3, H, W), normalised
    "semantic": torch.uint8,  # (N, H, W), widened to int64 by the backend
    "instance": torch.int16,  # (N, H, W), widened to int32 by the backend
}
"""The graph's outputs, in order, and their dtypes as they leave DALI (the batch contract widens the masks)."""


@dataclass(frozen=True)
class PhotometricOps:
    """Which photometric ops the graph holds: those the config can turn on with a non-identity value."""

    hsv: bool = False
    brightness_contrast: bool = False
    shadow: bool = False
    noise: bool = False

    @classmethod
    def from_config(cls, cfg: PhotometricConfig) -> PhotometricOps:
        def active(rr: RandomRange, identity: float) -> bool:
            return rr.p > 0 and tuple(rr.range) != (identity, identity)

        return cls(
            hsv=active(cfg.hue, 0.0) or active(cfg.saturation, 1.0),
            brightness_contrast=active(cfg.brightness, 1.0) or active(cfg.contrast, 1.0),
            shadow=cfg.shadow.p > 0 and tuple(cfg.shadow.strength) != (0.0, 0.0),
            noise=active(cfg.noise, 0.0),
        )

    @property
    def any(self) -> bool:
        return self.hsv or self.brightness_contrast or self.shadow or self.noise

    def check(self, params: ParamsBatch) -> None:
        """Raise ValueError if ``params`` ask for an op the graph leaves out (it would be ignored silently)."""
        asked = {
            "hue/saturation": (np.any(params.hue != 0.0) or np.any(params.saturation != 1.0), self.hsv),
            "brightness/contrast": (
                np.any(params.brightness != 1.0) or np.any(params.contrast != 1.0),
                self.brightness_contrast,
            ),
            "shadow": (np.any(params.shadow[:, ShadowBand._fields.index("strength")] != 0.0), self.shadow),
            "noise": (np.any(params.noise_sigma != 0.0), self.noise),
        }
        missing = [name for name, (wants, present) in asked.items() if wants and not present]
        if missing:
            raise ValueError(
                f"SampleParams ask for {', '.join(missing)}, which the AugmentConfig of this DALI graph never "
                "enables; draw the parameters from the same config (draw_batch(seed, epoch, indices, cfg))"
            )


@dataclass(frozen=True)
class GraphSpec:
    """What the graph is built from; fixed for a pipeline's lifetime.

    out_size     : (H, W) of image, semantic and instance; None: each sample at its own size, the batch padded to
                   its largest, each side a multiple of ``align`` (`fastload.pipeline.native`)
    device       : "cpu" | "gpu": where the graph runs, and so where the labels are decoded
    fit          : "contain" | "cover" (AugmentConfig.geometry.fit)
    photometric  : which photometric ops the graph holds
    mean, std    : normalisation per RGB channel, 0..1 scale
    align        : native size: what the padded height and width are multiples of (the targets' stride)
    """

    out_size: tuple[int, int] | None
    device: Literal["cpu", "gpu"] = "cpu"
    fit: str = "contain"
    photometric: PhotometricOps = PhotometricOps()
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    align: int = 1

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {self.device!r}")

    @classmethod
    def create(cls, *, out_size: Sequence[int] | None, augment: AugmentConfig, device: Literal["cpu", "gpu"]) -> GraphSpec:
        """The spec for an output size (None: native), the augmentation config and a device."""
        if out_size is None:
            check_native(augment, loader="DaliBackend")
        else:
            map_hw(tuple(out_size), augment.map_stride)  # ConfigError unless the size is divisible by the stride
        return cls(
            out_size=None if out_size is None else (int(out_size[0]), int(out_size[1])),
            device=device,
            fit=augment.geometry.fit,
            photometric=PhotometricOps.from_config(augment.photometric),
            mean=tuple(float(m) for m in augment.normalize.mean),
            std=tuple(float(s) for s in augment.normalize.std),
            align=augment.map_stride,
        )

    @property
    def inputs(self) -> tuple[str, ...]:
        """The external source's outputs, in order (table in the module docstring)."""
        labels = GPU_LABEL_INPUTS if self.device == "gpu" else CPU_LABEL_INPUTS
        if self.out_size is None:
            return IMAGE_INPUTS + labels + NATIVE_INPUTS
        params = PARAM_INPUTS if self.photometric.noise else PARAM_INPUTS[:-1]
        return IMAGE_INPUTS + labels + (params if self.photometric.any else params[:1])
