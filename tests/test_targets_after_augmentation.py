"""The targets both loaders deliver are Panoptic-DeepLab's definition applied to their own augmented masks.

Panoptic-DeepLab builds its targets after augmentation: the centre is the mass centre of the instance's pixels
visible in the output, the Gaussian has sigma 8 *output* pixels. The loaders render heatmap, offsets and the
semantic loss weights from each batch's ``instance`` output, so `fastload.targets.center_targets` and
`semantic_weights` applied to that output must give the very same arrays, bit for bit: on the real photos,
under configs/default.yaml, at an output size that shrinks the 800x600 photos ~3x (where targets made before
augmentation were off by up to 0.99 in the heatmap) and at 512x512, with a strided config too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from loader_kit import LOADER_KINDS, make_loader

from fastload.augment.config import AugmentConfig, TargetsConfig
from fastload.targets import center_targets, semantic_weights

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULT = AugmentConfig.from_yaml(CONFIGS / "default.yaml")
STRIDED = DEFAULT.replace(targets=TargetsConfig(sigma=2.0, stride=4, small_instance_area=1024))


def check_targets_follow_the_instance_output(batch, targets: TargetsConfig) -> int:
    """Every sample's maps equal the definition on its own instance mask; returns the instance pixels seen."""
    seen = 0
    for j in range(len(batch["index"])):
        instance = batch["instance"][j].numpy()
        heat, offset = center_targets(instance, targets.sigma, stride=targets.stride)
        weights = semantic_weights(
            instance, small_instance_area=targets.small_instance_area, small_instance_weight=targets.small_instance_weight
        )
        index = int(batch["index"][j])
        np.testing.assert_array_equal(batch["heatmap"][j, 0].numpy(), heat, err_msg=f"heatmap of sample {index}")
        np.testing.assert_array_equal(batch["offset"][j].numpy(), offset, err_msg=f"offsets of sample {index}")
        np.testing.assert_array_equal(batch["semantic_weight"][j].numpy(), weights, err_msg=f"weights of {index}")
        seen += int(np.count_nonzero(instance))
    return seen


@pytest.mark.parametrize("kind", LOADER_KINDS)
@pytest.mark.parametrize(
    ("size", "cfg"),
    [((256, 256), DEFAULT), ((512, 512), DEFAULT), ((256, 256), STRIDED)],
    ids=["256-shrinks-3x", "512", "256-stride-4"],
)
def test_targets_are_the_definition_applied_to_the_loaders_own_instance_output(kind, size, cfg, sample_cache):
    loader = make_loader(kind, sample_cache, batch_size=6, size=size, augment=cfg, seed=3)
    try:
        seen = sum(check_targets_follow_the_instance_output(batch, cfg.targets) for batch in loader)
    finally:
        loader.close()
    assert seen > 0


def test_small_instances_get_the_small_instance_weight(sample_cache):
    # at 256x256 the photos' objects cover a few hundred to a few thousand output pixels: all "small" (< 4096)
    loader = make_loader("cpu", sample_cache, batch_size=4, size=(256, 256), augment=DEFAULT)
    batch = next(iter(loader))
    loader.close()
    on = batch["instance"] > 0
    assert set(batch["semantic_weight"][on].unique().tolist()) == {3.0}
    assert set(batch["semantic_weight"][~on].unique().tolist()) == {1.0}
