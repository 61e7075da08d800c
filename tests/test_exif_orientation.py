"""The orientation rule, end to end: annotations are on the picture as displayed (its tag applied), and the masks a
build makes lie on the image content every loader hands out.

A synthetic "photo" is drawn as it is *displayed*: white polygons on a dark textured ground, the polygons
rasterised exactly as the build rasterises them (pycocotools), so the image content is the mask. The file holds
that picture turned back (the stored grid a camera writes) with an orientation tag 1..8 that displays it upright,
and the COCO entry gives the polygons and size of the displayed picture (what labelme and CVAT show). After the
build, the mask of the bright pixels of each path's image and the built instance mask have IoU >= 0.99 (a quarter
turn, a flip or a transpose gives < 0.5 with these asymmetric shapes). Square images matter most: their size
cannot reveal a quarter turn. With ``exif_orientation: ignore`` the stored grid is what is annotated.

The real sample photos, turned back and tagged, build into the same samples as the upright photos: the same
masks bit for bit and the same pixels within JPEG re-encoding.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cocofactory import CocoFactory
from imagefactory import exif, jpeg, pil_rgb

from fastload.augment.config import AugmentConfig
from fastload.build.build import build_cache
from fastload.build.raster import rasterize_polygons
from fastload.cache.images import apply_orientation
from fastload.samples import open_cache

UNDO = {6: 8, 8: 6}  # the orientation that turns a displayed picture back into the stored grid (others undo themselves)
SHAPES = {"square": (64, 64), "wide": (48, 80)}


def _polygons(height: int, width: int) -> list[list[tuple[float, float]]]:
    """An L in the top-left quarter and a triangle at the right, (x, y) in the displayed picture: no symmetry."""
    h, w = height, width
    ell = [(3, 3), (0.45 * w, 3), (0.45 * w, 0.15 * h), (0.15 * w, 0.15 * h), (0.15 * w, 0.55 * h), (3, 0.55 * h)]
    triangle = [(0.6 * w, 0.3 * h), (w - 3, 0.5 * h), (0.62 * w, h - 4)]
    return [ell, triangle]


def _displayed(height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3): white where the polygons are (the build's raster, pycocotools'), a dark texture elsewhere."""
    rng = np.random.default_rng(height * 1000 + width)
    image = rng.integers(20, 70, (height, width, 3), dtype=np.uint8)
    for polygon in _polygons(height, width):
        image[rasterize_polygons([np.asarray(polygon, np.float64)], height, width)] = 235
    return image


def _data_set(root: Path, shape: str, tags: list[int | None], *, annotated_on: str = "displayed") -> Path:
    """One image per tag; the file is the displayed picture turned back and tagged (``annotated_on="displayed"``), or
    the picture as stored, tagged, with the annotations on that stored grid (``"stored"``)."""
    height, width = SHAPES[shape]
    coco = CocoFactory(root)
    coco.category(1, "shape")
    coco.image_root.mkdir(parents=True)
    for k, tag in enumerate(tags, start=1):
        if annotated_on == "displayed":
            stored = np.ascontiguousarray(apply_orientation(_displayed(height, width), UNDO.get(tag, tag)))
            size = (height, width)
        else:
            stored = _displayed(height, width)
            size = stored.shape[:2]
        name = f"tag{tag}.jpg"
        (coco.image_root / name).write_bytes(jpeg(stored, **({} if tag is None else {"exif": exif(tag)})))
        coco.image(name, height=size[0], width=size[1], image_id=k, write_pixels=False)
        for polygon in _polygons(*size):
            coco.polygon(k, 1, polygon)
    coco.write()
    return root


def _build(root: Path, **config) -> Path:
    out = root / "cache"
    build_cache(coco=root / "annotations.json", images=root / "images", out=out, config=config, progress=False)
    return out


def _iou(image: np.ndarray, instance: np.ndarray) -> float:
    content = image.mean(axis=-1) > 150
    labelled = instance > 0
    return float((content & labelled).sum() / (content | labelled).sum())


TAGS = [None, 1, 2, 3, 4, 5, 6, 7, 8]


@pytest.fixture(scope="module", params=list(SHAPES))
def built(request, tmp_path_factory) -> tuple[str, Path]:
    root = _data_set(tmp_path_factory.mktemp(f"exif-{request.param}"), request.param, TAGS)
    return request.param, _build(root)


def test_open_cache_masks_lie_on_the_displayed_content(built):
    shape, cache = built
    ds = open_cache(cache)
    for k, tag in enumerate(TAGS):
        sample = ds[k]
        assert sample["image"].shape[:2] == SHAPES[shape], tag
        assert _iou(sample["image"], sample["instance"]) >= 0.99, f"tag {tag}"


def _loader_pairs(kind: str, cache: Path, shape: str) -> list[tuple[np.ndarray, np.ndarray]]:
    import fastload

    norm = AugmentConfig.none().normalize
    loader = getattr(fastload, kind)(cache, batch_size=1, shuffle=False, size=SHAPES[shape], augment="none", device="cpu", num_threads=0 if kind == "CpuLoader" else 1)
    try:
        pairs = []
        for batch in loader:
            chw = batch["image"][0].numpy().astype(np.float64)
            image = np.clip(np.rint((chw.transpose(1, 2, 0) * norm.std + norm.mean) * 255), 0, 255)
            pairs.append((image, batch["instance"][0].numpy()))
        return pairs
    finally:
        loader.close()


@pytest.mark.parametrize("kind", ["CpuLoader", "Loader"])
def test_loader_masks_lie_on_the_displayed_content(built, kind):
    shape, cache = built
    pairs = _loader_pairs(kind, cache, shape)
    assert len(pairs) == len(TAGS)
    for tag, (image, instance) in zip(TAGS, pairs, strict=True):
        assert _iou(image, instance) >= 0.99, f"{kind}, tag {tag}"


def test_a_wrong_orientation_is_caught_by_this_measure(built):
    shape, cache = built
    sample = open_cache(cache)[TAGS.index(6)]
    for tag in range(2, 9) if shape == "square" else (2, 3, 4):  # masks turned or flipped miss the content
        assert _iou(sample["image"], np.ascontiguousarray(apply_orientation(sample["instance"], tag))) < 0.5, tag


@pytest.mark.parametrize("shape", list(SHAPES))
def test_under_ignore_the_stored_grid_is_annotated(tmp_path, shape):
    tags = [3, 6, 8]
    root = _data_set(tmp_path, shape, tags, annotated_on="stored")
    ds = open_cache(_build(root, exif_orientation="ignore"))
    for k, tag in enumerate(tags):
        assert _iou(ds[k]["image"], ds[k]["instance"]) >= 0.99, tag
        assert ds[k]["image"].shape[:2] == SHAPES[shape]
    if shape == "square":  # the same square files under "apply": turned, so these masks would be 90 degrees off
        shutil.rmtree(root / "cache")
        turned = open_cache(_build(root))[1]
        assert _iou(turned["image"], turned["instance"]) < 0.5


def test_tagged_sample_photos_build_into_the_upright_samples(tmp_path, sample_coco, sample_images):
    # the first two real photos (800 x 600 and its neighbour), each saved turned back with every tag 2..8
    coco = json.loads(sample_coco.read_text())
    upright = coco["images"][:2]
    images, annotations = [], []
    (tmp_path / "images").mkdir()
    for tag in range(2, 9):
        for record in upright:
            pixels = pil_rgb((sample_images / record["file_name"]).read_bytes())
            stored = np.ascontiguousarray(apply_orientation(pixels, UNDO.get(tag, tag)))
            name = f"tag{tag}-{record['file_name']}"
            (tmp_path / "images" / name).write_bytes(jpeg(stored, exif=exif(tag)))
            image_id = len(images) + 1
            images.append({**record, "id": image_id, "file_name": name})
            for ann in coco["annotations"]:
                if ann["image_id"] == record["id"]:
                    annotations.append({**ann, "id": len(annotations) + 1, "image_id": image_id})
    (tmp_path / "annotations.json").write_text(json.dumps({**coco, "images": images, "annotations": annotations}))
    turned = open_cache(_build(tmp_path))
    reference = open_cache(_build_upright(tmp_path / "upright", sample_coco, sample_images, upright))
    for k in range(len(images)):
        want, got = reference[k % 2], turned[k]
        assert np.array_equal(got["semantic"], want["semantic"]) and np.array_equal(got["instance"], want["instance"])
        diff = np.abs(got["image"].astype(np.int16) - want["image"])
        assert diff.mean() < 2.0, (images[k]["file_name"], diff.mean())  # three JPEG generations apart, not turned


def _build_upright(root: Path, sample_coco: Path, sample_images: Path, upright: list[dict]) -> Path:
    coco = json.loads(sample_coco.read_text())
    ids = {r["id"] for r in upright}
    coco["images"] = upright
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    root.mkdir()
    (root / "annotations.json").write_text(json.dumps(coco))
    out = root / "cache"
    build_cache(coco=root / "annotations.json", images=sample_images, out=out, progress=False)
    return out
