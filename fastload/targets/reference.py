"""detectron2's Panoptic-DeepLab target generator as it is written: the slow reference the benchmarks start from.

Its arithmetic is detectron2's (projects/Panoptic-DeepLab, ``PanopticDeepLabTargetGenerator``): the Gaussian sits
at the centre *rounded*. The official Panoptic-DeepLab repository truncates it (``int(centre)``); fastload
follows detectron2 (tests/test_detectron2_targets.py compares the whole generator)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def center_targets_per_instance(
    instance_mask: np.ndarray, segment_ids: Sequence[int] | None = None, sigma: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """The slow reference: detectron2's target generator as it is written, one full-image pass per instance.

    ``np.where`` over the whole image for each instance, the mean, a (6σ+3)² Gaussian patch pasted with a
    maximum, offsets assigned by fancy indexing. `center_targets` must equal it bit for bit (stride 1, integer
    sigma); the benchmarks use it as the "before". Returns heatmap float32 (H, W), offset float32 (2, H, W).
    """
    height, width = instance_mask.shape
    if segment_ids is None:
        segment_ids = [int(i) for i in np.unique(instance_mask) if i != 0]
    size = 6 * sigma + 3
    x = np.arange(0, size, 1, float)
    y = x[:, np.newaxis]
    x0 = y0 = 3 * sigma + 1
    gaussian = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))
    heat = np.zeros((height, width), dtype=np.float32)
    offset = np.zeros((2, height, width), dtype=np.float32)
    y_coord, x_coord = np.meshgrid(
        np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij"
    )
    for seg_id in segment_ids:
        mask_index = np.where(instance_mask == seg_id)
        if len(mask_index[0]) == 0:
            continue
        center_y, center_x = np.mean(mask_index[0]), np.mean(mask_index[1])
        py, px = int(round(center_y)), int(round(center_x))
        ul = int(np.round(px - 3 * sigma - 1)), int(np.round(py - 3 * sigma - 1))
        br = int(np.round(px + 3 * sigma + 2)), int(np.round(py + 3 * sigma + 2))
        gx0, gx1 = max(0, -ul[0]), min(br[0], width) - ul[0]
        gy0, gy1 = max(0, -ul[1]), min(br[1], height) - ul[1]
        cx0, cx1 = max(0, ul[0]), min(br[0], width)
        cy0, cy1 = max(0, ul[1]), min(br[1], height)
        heat[cy0:cy1, cx0:cx1] = np.maximum(heat[cy0:cy1, cx0:cx1], gaussian[gy0:gy1, gx0:gx1])
        offset[0][mask_index] = center_y - y_coord[mask_index]
        offset[1][mask_index] = center_x - x_coord[mask_index]
    return heat, offset
