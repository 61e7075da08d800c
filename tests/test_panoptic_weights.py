"""Panoptic-DeepLab's centre and offset loss weights: the definition, its torch twin, and both loaders.

detectron2's ``PanopticDeepLabTargetGenerator`` (``ignore_stuff_in_offset=True``) walks ``segments_info``: a
non-crowd segment's pixels get centre weight 1, and offset weight 1 when it is a thing; void and crowd pixels get
0. fastload keeps masks, not segments, so `panoptic_weights` reads the same facts off them: centre weight where
the semantic mask is not 255 (void, crowd, outside the image), offset weight where the instance mask is not 0
(non-crowd things only). tests/test_detectron2_targets.py holds the two readings equal on panoptic PNGs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loader_kit import LOADER_KINDS, make_loader, make_synth_cache

from fastload.labels import IGNORE
from fastload.targets import panoptic_weights, render_weights


def test_weights_on_a_hand_made_mask():
    semantic = np.array([[1, 1, IGNORE], [2, 2, 0]], np.uint8)  # 255: crowd or void
    instance = np.array([[0, 0, 0], [3, 3, 0]], np.int32)  # class 2 is a thing, instance 3
    center, offset = panoptic_weights(semantic, instance)
    assert center.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert offset.tolist() == [[0, 0, 0], [1, 1, 0]]
    assert center.dtype == offset.dtype == np.float32


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_the_torch_twin_equals_the_definition(stride, device):
    rng = np.random.default_rng(stride)
    semantic = rng.choice([0, 1, 2, IGNORE], size=(3, 32, 48)).astype(np.uint8)
    instance = np.where(rng.random((3, 32, 48)) < 0.4, rng.integers(1, 9, (3, 32, 48)), 0).astype(np.int32)
    masks = (torch.from_numpy(semantic).long().to(device), torch.from_numpy(instance).to(device))
    twin = {key: value.cpu() for key, value in render_weights(*masks, stride=stride).items()}
    for n in range(3):
        center, offset = panoptic_weights(semantic[n], instance[n], stride=stride)
        np.testing.assert_array_equal(twin["center_weight"][n, 0].numpy(), center)
        np.testing.assert_array_equal(twin["offset_weight"][n, 0].numpy(), offset)


def test_masks_of_other_shapes_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        panoptic_weights(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.int32))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_synth_cache(tmp_path_factory.mktemp("weights"), n=8)


@pytest.mark.parametrize("kind", LOADER_KINDS)
@pytest.mark.parametrize("data", ["synthetic", "photos"])
def test_each_loaders_weights_are_the_definition_of_its_own_masks(kind, data, cache, sample_cache):
    # synthetic scenes and the real photos, warped by the default augmentation (ignore fill at the borders)
    path, size = (cache, (32, 48)) if data == "synthetic" else (sample_cache, (96, 128))
    loader = make_loader(kind, path, batch_size=4, size=size, augment="default")
    seen_ignore = False
    for batch in loader:
        for k in range(len(batch["index"])):
            semantic, instance = batch["semantic"][k].numpy(), batch["instance"][k].numpy()
            center, offset = panoptic_weights(semantic, instance)
            np.testing.assert_array_equal(batch["center_weight"][k, 0].numpy(), center)
            np.testing.assert_array_equal(batch["offset_weight"][k, 0].numpy(), offset)
            seen_ignore |= bool((semantic == IGNORE).any())
    loader.close()
    assert seen_ignore, "augmentation should have moved some pixels outside the image (weight 0 there)"
