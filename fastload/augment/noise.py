"""The fixed Gaussian noise texture both engines cut their noise from (the data, apart from the kernels).

A sample's noise is a window of one texture per output size, at the sample's ``noise_offset`` (drawn with its
other parameters, `fastload.augment.params`): the CPU reference (`fastload.augment.reference.add_noise`) and the
DALI graph (``fn.slice`` of the same texture) add the same values, and a resumed run adds them again.
"""

from __future__ import annotations

import functools

import numpy as np

from fastload.augment.params import NOISE_SHIFTS

NOISE_TEXTURE_SEED = 0x0015E
"""The seed of the noise texture: a constant, so the CPU reference and the DALI graph add the same noise."""


@functools.lru_cache(maxsize=8)
def noise_texture(out_hw: tuple[int, int], channels: int = 3) -> np.ndarray:
    """The fixed Gaussian noise texture for an output size: float32 (H + 256, W + 256, C), read-only.

    A sample's noise is the (H, W) window at its ``noise_offset``: one of 65,536 windows of unit Gaussian
    noise, replayable (resume, the CPU reference, the DALI graph) and cheap to apply (a slice and a
    multiply-add, where a per-pixel hash of transcendental functions cost ~25x more).
    """
    oh, ow = (int(v) for v in out_hw)
    rng = np.random.default_rng([NOISE_TEXTURE_SEED, oh, ow, channels])
    texture = rng.standard_normal((oh + NOISE_SHIFTS, ow + NOISE_SHIFTS, channels), dtype=np.float32)
    texture.flags.writeable = False
    return texture


def noise_window(out_hw: tuple[int, int], offset: tuple[int, int], channels: int = 3) -> np.ndarray:
    """The sample's unit noise: the (H, W, C) view of :func:`noise_texture` at ``offset`` = (row, column)."""
    oy, ox = (int(v) for v in offset)
    if not (0 <= oy < NOISE_SHIFTS and 0 <= ox < NOISE_SHIFTS):
        raise ValueError(f"noise offset {offset} is outside [0, {NOISE_SHIFTS})²")
    oh, ow = out_hw
    return noise_texture((oh, ow), channels)[oy : oy + oh, ox : ox + ow]
