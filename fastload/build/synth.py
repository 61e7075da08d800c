"""A synthetic COCO dataset: textured JPEG photos-alike with random concave, overlapping polygon instances.

Used by the tests (tiny images, any number), by benchmarks (thousands of 512x512 images) and by ``fastload
synth`` / ``fastload demo``. Arguments are checked before anything is written. Every image is a pure function
of ``(seed, image index)``, so a dataset is reproducible bit for bit and can be generated in parallel in any
order.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fastload.labels import MAX_INSTANCES
from fastload.validation import MAX_SEED, MAX_SIDE, MAX_THREADS, check_int, short_repr

# four classes with sparse COCO ids (train ids 1..4 follow COCO id order) and a base colour (RGB) each
CATEGORIES = (
    {"id": 3, "name": "red_blob", "rgb": (200, 60, 50)},
    {"id": 8, "name": "green_blob", "rgb": (60, 170, 70)},
    {"id": 21, "name": "blue_blob", "rgb": (50, 90, 200)},
    {"id": 42, "name": "yellow_blob", "rgb": (220, 200, 60)},
)
JPEG_QUALITY = 90


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 (H, W, 3) background: low-frequency colour noise + a linear gradient + a few shapes."""
    coarse = rng.uniform(40, 200, size=(4, 5, 3)).astype(np.float32)
    # the gradient is added on the coarse grid: cubic upsampling keeps a linear ramp linear, at no cost
    gy, gx = rng.uniform(-40, 40, size=2).astype(np.float32)
    coarse += np.linspace(-gy, gy, 4, dtype=np.float32)[:, None, None]
    coarse += np.linspace(-gx, gx, 5, dtype=np.float32)[None, :, None]
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    scale = max(height, width)
    for _ in range(int(rng.integers(2, 6))):  # distractor shapes that are not instances
        colour = tuple(float(c) for c in rng.uniform(0, 255, size=3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        size = int(rng.integers(max(2, scale // 40), max(3, scale // 8)))
        if rng.random() < 0.5:
            cv2.circle(image, centre, size, colour, thickness=-1, lineType=cv2.LINE_AA)
        else:
            end = (centre[0] + size, centre[1] + int(rng.integers(-size, size + 1)))
            cv2.line(image, centre, end, colour, thickness=max(1, size // 6), lineType=cv2.LINE_AA)
    return image


def _star_polygon(rng: np.random.Generator, height: int, width: int, near: np.ndarray | None) -> np.ndarray:
    """A random radial (star-shaped, usually concave) polygon, float64 (K, 2) (x, y), inside the image."""
    short = min(height, width)
    radius = rng.uniform(0.06, 0.22) * short
    radius = min(radius, 0.5 * short - 1.0)
    lo = np.array([radius, radius])
    hi = np.array([width - radius, height - radius])
    if near is not None:  # pull half of the instances onto an earlier one so that overlaps are common
        centre = np.clip(near + rng.normal(0, radius, size=2), lo, hi)
    else:
        centre = rng.uniform(lo, hi)
    k = int(rng.integers(6, 17))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=k))
    radii = radius * rng.uniform(0.35, 1.0, size=k)
    xy = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return np.round(xy, 2)


def _polygon_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def synth_image(seed: int, index: int, size: tuple[int, int], instances: tuple[int, int]) -> tuple[bytes, list]:
    """One synthetic image: JPEG bytes and its instances as ``(category_id, polygon (K, 2) x/y)``.

    Instances are drawn largest first so that the picture agrees with the rasteriser's rule (smaller on top).
    """
    height, width = size
    rng = np.random.default_rng([seed, index])
    image = _texture(rng, height, width)
    count = int(rng.integers(instances[0], instances[1] + 1))
    objects: list[tuple[int, np.ndarray]] = []
    for _ in range(count):
        near = objects[int(rng.integers(len(objects)))][1].mean(axis=0) if objects and rng.random() < 0.5 else None
        cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        objects.append((cat["id"], _star_polygon(rng, height, width, near)))
    colours = {c["id"]: np.array(c["rgb"][::-1], np.float32) for c in CATEGORIES}  # BGR for OpenCV
    for cat_id, xy in sorted(objects, key=lambda o: -_polygon_area(o[1])):
        colour = colours[cat_id] + rng.uniform(-25, 25, size=3).astype(np.float32)
        # COCO puts pixel centres at +0.5, OpenCV at integers; 4 fractional bits keep sub-pixel vertices
        points = np.round((xy - 0.5) * 16).astype(np.int32)
        cv2.fillPoly(image, [points], tuple(float(c) for c in colour), lineType=cv2.LINE_8, shift=4)
    # grain on background and objects; integer uniform noise costs a tenth of Gaussian noise
    pixels = image.astype(np.int16)
    pixels += rng.integers(-14, 15, size=image.shape, dtype=np.int16)
    np.clip(pixels, 0, 255, out=pixels)
    ok, buf = cv2.imencode(".jpg", pixels.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes(), objects


def _write_chunk(args: tuple[Path, int, Sequence[int], tuple[int, int], tuple[int, int]]) -> list[list]:
    images_dir, seed, indices, size, instances = args
    out = []
    for index in indices:
        data, objects = synth_image(seed, index, size, instances)
        (images_dir / f"{index:06d}.jpg").write_bytes(data)
        out.append([(cat, xy.tolist()) for cat, xy in objects])
    return out


def synth_coco(
    *,
    out: str | Path,
    n: int,
    size: tuple[int, int] = (512, 512),
    instances: tuple[int, int] = (3, 12),
    seed: int = 0,
    workers: int | None = None,
) -> Path:
    """Write a synthetic COCO dataset: ``out/images/000000.jpg ...`` and ``out/annotations.json``.

    Parameters
    ----------
    out : output folder (created; existing files of the same names are overwritten)
    n : number of images
    size : (height, width) of every image, each 8 .. `fastload.validation.MAX_SIDE`
    instances : (min, max) instances per image, inclusive, at most `fastload.labels.MAX_INSTANCES`
    seed : the dataset is a pure function of (seed, n, size, instances)
    workers : processes to use (default: up to 2, fewer for small sets); never changes the output

    Returns
    -------
    Path of ``annotations.json``.
    """
    n, (height, width), (lo, hi), seed, workers = _checked(n, size, instances, seed, workers)
    out = Path(out)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    chunk = max(1, -(-n // (workers * 8)))
    tasks = [(images_dir, seed, range(i, min(n, i + chunk)), (height, width), (lo, hi)) for i in range(0, n, chunk)]
    if workers > 1 and len(tasks) > 1:
        # spawn: the caller may hold threads (torch, DALI) that a forked child would inherit half-locked
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            results = [obj for part in pool.map(_write_chunk, tasks) for obj in part]
    else:
        results = [obj for task in tasks for obj in _write_chunk(task)]
    coco = _coco_json(results, height, width)
    path = out / "annotations.json"
    path.write_text(json.dumps(coco, separators=(",", ":")) + "\n", encoding="utf-8")
    return path


def _checked(n: Any, size: Any, instances: Any, seed: Any, workers: Any) -> tuple:
    """The arguments of `synth_coco`, checked (``ValueError`` naming the argument), ``workers`` defaulted."""
    n = check_int("n", n, 0, error=ValueError)
    pairs = []
    for key, pair, lo, hi in (("size", size, 8, MAX_SIDE), ("instances", instances, 0, MAX_INSTANCES)):
        if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"{key} must be two integers, got {short_repr(pair)}")
        first = check_int(f"{key}[0]", pair[0], lo, hi, error=ValueError)
        pairs.append((first, check_int(f"{key}[1]", pair[1], lo if key == "size" else first, hi, error=ValueError)))
    seed = check_int("seed", seed, 0, MAX_SEED, error=ValueError)
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if n >= 64 else 1
    return n, pairs[0], pairs[1], seed, check_int("workers", workers, 1, MAX_THREADS, error=ValueError)


def _coco_json(per_image: list[list], height: int, width: int) -> dict[str, Any]:
    images, annotations = [], []
    for index, objects in enumerate(per_image):
        image_id = index + 1
        images.append({"id": image_id, "file_name": f"{index:06d}.jpg", "height": height, "width": width})
        for cat_id, xy in objects:
            poly = np.asarray(xy, dtype=np.float64)
            x0, y0 = poly.min(axis=0)
            x1, y1 = poly.max(axis=0)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_id,
                    "segmentation": [[round(float(v), 2) for v in poly.ravel()]],
                    "area": round(_polygon_area(poly), 2),
                    "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c["id"], "name": c["name"], "supercategory": "blob"} for c in CATEGORIES]
    return {"images": images, "annotations": annotations, "categories": categories}
