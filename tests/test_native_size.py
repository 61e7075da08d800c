"""Evaluation at each sample's own size (``size=None``), on both engines.

The cache here holds four images of four shapes (40x60, a 64x36 portrait, 30x30, 20x20), so a batch of them is
padded to its largest height and width, rounded up to the targets' stride. Every sample comes exactly once, in
cache order, with its own pixels in the top-left corner: masks exactly as stored, the image as decoded (PSNR),
padding 0 / 255 / 0, and ``valid`` True exactly on its own pixels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from cocofactory import unseen_coco
from loader_kit import LOADER_KINDS, make_loader

from fastload import open_cache
from fastload.augment.config import AugmentConfig, TargetsConfig
from fastload.build.build import build_cache
from fastload.targets import center_targets, panoptic_weights

MEAN = np.array(AugmentConfig().normalize.mean, np.float32)[:, None, None]
STD = np.array(AugmentConfig().normalize.std, np.float32)[:, None, None]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    coco = unseen_coco(root / "data")
    out = root / "cache"
    build_cache(coco=coco.root / "annotations.json", images=coco.image_root, out=out, config={"samples_per_shard": 2}, progress=False)
    return out


def strided(stride: int) -> AugmentConfig:
    return dataclasses.replace(AugmentConfig.none(), targets=TargetsConfig(sigma=2.0, stride=stride))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("kind", LOADER_KINDS)
@pytest.mark.parametrize(("batch_size", "stride"), [(1, 1), (3, 1), (4, 4)])
def test_every_sample_once_in_cache_order_at_its_own_size(kind, cache, batch_size, stride):
    samples = open_cache(cache)
    loader = make_loader(kind, cache, batch_size=batch_size, size=None, augment=strided(stride), shuffle=False)
    batches = list(loader)
    loader.close()
    order = torch.cat([b["index"] for b in batches]).tolist()
    assert order == list(range(len(samples)))  # exactly once, in cache order
    for batch in batches:
        hws = np.array([samples.image_size(i) for i in batch["index"].tolist()])
        height, width = (-(-int(v) // stride) * stride for v in hws.max(axis=0))
        assert tuple(batch["image"].shape) == (len(hws), 3, height, width)
        assert tuple(batch["heatmap"].shape) == (len(hws), 1, height // stride, width // stride)
        assert tuple(batch) == ("image", "semantic", "instance", "heatmap", "offset", "semantic_weight",
                                "center_weight", "offset_weight", "valid", "index")  # fmt: skip
        for k, index in enumerate(batch["index"].tolist()):
            check_sample(batch, k, samples[index], stride=stride)


def check_sample(batch: dict, k: int, stored: dict, *, stride: int) -> None:
    h, w = stored["semantic"].shape
    semantic, instance = batch["semantic"][k].numpy(), batch["instance"][k].numpy()
    valid = np.zeros(semantic.shape, bool)
    valid[:h, :w] = True
    np.testing.assert_array_equal(batch["valid"][k].numpy(), valid)
    np.testing.assert_array_equal(semantic[:h, :w], stored["semantic"])
    np.testing.assert_array_equal(instance[:h, :w], stored["instance"])
    assert (semantic[~valid] == 255).all() and (instance[~valid] == 0).all()
    image = batch["image"][k].numpy()
    assert (image[:, ~valid] == 0).all()  # padding is 0 after normalisation
    pixels = np.clip(np.round((image[:, :h, :w] * STD + MEAN) * 255), 0, 255).transpose(1, 2, 0)
    assert psnr(pixels, stored["image"]) > 45
    heatmap, offset = center_targets(instance, 2.0, stride=stride)  # rendered from the padded masks
    np.testing.assert_array_equal(batch["heatmap"][k, 0].numpy(), heatmap)
    np.testing.assert_array_equal(batch["offset"][k].numpy(), offset)
    center, _ = panoptic_weights(semantic, instance, stride=stride)
    np.testing.assert_array_equal(batch["center_weight"][k, 0].numpy(), center)


@pytest.mark.cuda
def test_the_gpu_graph_at_native_size(cache):
    samples = open_cache(cache)
    with make_loader("dali", cache, batch_size=3, size=None, augment=strided(4), shuffle=False, device="cuda") as loader:
        batches = [{key: value.cpu() for key, value in batch.items()} for batch in loader]
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(len(samples)))
    for batch in batches:
        for k, index in enumerate(batch["index"].tolist()):
            check_sample(batch, k, samples[index], stride=4)


def test_both_engines_give_the_same_masks(cache):
    made = {}
    for kind in LOADER_KINDS:
        with make_loader(kind, cache, batch_size=4, size=None, augment="none", shuffle=False) as loader:
            made[kind] = next(iter(loader))
    for key in ("semantic", "instance", "valid", "index", "heatmap", "offset"):
        assert torch.equal(made["cpu"][key], made["dali"][key]), key


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_an_augmenting_config_is_refused(kind, cache):
    with pytest.raises(ValueError, match=r"size=None .* takes no augmentation, but the augment config turns on geometry.flip_x"):
        make_loader(kind, cache, batch_size=2, size=None, augment="default")


def test_valid_is_a_key_only_at_native_size(cache):
    with make_loader("cpu", cache, batch_size=4, size=None, augment="none", keys=("image", "valid")) as loader:
        image, valid = next(iter(loader))
    assert valid.dtype == torch.bool and valid.shape == (4, *image.shape[-2:])
    with pytest.raises(ValueError, match="'valid' comes with size=None"):
        make_loader("cpu", cache, batch_size=4, size=(32, 32), keys=("image", "valid"))
