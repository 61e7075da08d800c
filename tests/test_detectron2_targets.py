"""fastload's targets against detectron2's ``PanopticDeepLabTargetGenerator``, on panoptic PNGs with crowds.

`detectron2_generator` below is that generator's arithmetic, written again here from its definition
(detectron2, projects/Panoptic-DeepLab, with ``ignore_stuff_in_offset=True``, ``small_instance_area=4096``,
``small_instance_weight=3``): it walks ``segments_info`` over the PNG's segment ids, where fastload reads the
masks its panoptic reader made of the same PNG. The official Panoptic-DeepLab repository differs in one place:
it places each Gaussian at ``int(centre)`` (truncation), where detectron2 rounds, as fastload does.

The one difference on purpose: a crowd segment of a thing class. detectron2 pastes a Gaussian at its centre,
gives its pixels offsets and small-instance weights, and zeroes their centre and offset loss weights; fastload
makes no instance of a crowd region (it is no object), so draws nothing for it. The weights are equal; the
heatmap and offsets are detectron2's with the crowd segments' own contributions left out, bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastload.build.segment_png import decode_segment_ids
from fastload.build.synth_formats import write_panoptic
from fastload.targets import center_targets, panoptic_weights, semantic_weights

SIGMA = 8


def detectron2_generator(ids: np.ndarray, segments: list[dict], thing_ids: set[int], *, crowd_centres: bool = True) -> dict:
    """detectron2's per-segment loop on a segment-id map; ``crowd_centres=False`` skips crowd segments' centres,
    offsets and small-instance weights (fastload's rule)."""
    height, width = ids.shape
    size = 6 * SIGMA + 3
    x = np.arange(0, size, 1, float)
    y = x[:, None]
    g = np.exp(-((x - (3 * SIGMA + 1)) ** 2 + (y - (3 * SIGMA + 1)) ** 2) / (2 * SIGMA**2))
    center = np.zeros((height, width), np.float32)
    offset = np.zeros((2, height, width), np.float32)
    y_coord, x_coord = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    semantic_weight = np.ones((height, width), np.float32)
    center_weight = np.zeros((height, width), np.float32)
    offset_weight = np.zeros((height, width), np.float32)
    for seg in segments:
        here = ids == seg["id"]
        if not seg["iscrowd"]:
            center_weight[here] = 1
            if seg["category_id"] in thing_ids:
                offset_weight[here] = 1
        if seg["category_id"] not in thing_ids or (seg["iscrowd"] and not crowd_centres):
            continue
        rows, cols = np.where(here)
        if len(rows) == 0:
            continue
        if len(rows) < 4096:
            semantic_weight[here] = 3
        cy, cx = np.mean(rows), np.mean(cols)
        py, px = int(round(cy)), int(round(cx))
        ul = int(np.round(px - 3 * SIGMA - 1)), int(np.round(py - 3 * SIGMA - 1))
        br = int(np.round(px + 3 * SIGMA + 2)), int(np.round(py + 3 * SIGMA + 2))
        gx0, gx1 = max(0, -ul[0]), min(br[0], width) - ul[0]
        gy0, gy1 = max(0, -ul[1]), min(br[1], height) - ul[1]
        x0, x1 = max(0, ul[0]), min(br[0], width)
        y0, y1 = max(0, ul[1]), min(br[1], height)
        center[y0:y1, x0:x1] = np.maximum(center[y0:y1, x0:x1], g[gy0:gy1, gx0:gx1])
        offset[0][rows, cols] = cy - y_coord[rows, cols]
        offset[1][rows, cols] = cx - x_coord[rows, cols]
    return {"heatmap": center, "offset": offset, "semantic_weight": semantic_weight,
            "center_weight": center_weight, "offset_weight": offset_weight}  # fmt: skip


@pytest.fixture(scope="module")
def panoptic(tmp_path_factory):
    files = write_panoptic(out=tmp_path_factory.mktemp("d2"), n=8, size=(128, 192), seed=5)
    document = json.loads(files.annotations.read_text())
    thing_ids = {c["id"] for c in document["categories"] if c["isthing"]}
    return files, document, thing_ids


def both(files, document, thing_ids, *, crowd_centres: bool):
    for image, ann in zip(files.load().images, document["annotations"], strict=True):
        labels = image.labels()
        png = (files.png_dir / ann["file_name"]).read_bytes()
        ids = decode_segment_ids(png, image.height, image.width, max_image_pixels=10**8, where="test")
        heatmap, offset = center_targets(labels.instance, SIGMA)
        center_weight, offset_weight = panoptic_weights(labels.semantic, labels.instance)
        ours = {"heatmap": heatmap, "offset": offset, "semantic_weight": semantic_weights(labels.instance),
                "center_weight": center_weight, "offset_weight": offset_weight}  # fmt: skip
        theirs = detectron2_generator(ids, ann["segments_info"], thing_ids, crowd_centres=crowd_centres)
        yield image.image_id, ann, ours, theirs


def test_fastload_equals_detectron2_bit_for_bit_without_the_crowd_centres(panoptic):
    files, document, thing_ids = panoptic
    crowd_things = sum(s["iscrowd"] and s["category_id"] in thing_ids for a in document["annotations"] for s in a["segments_info"])
    assert crowd_things > 0, "the synthetic scenes must hold crowd things for this test to mean anything"
    for image_id, _, ours, theirs in both(files, document, thing_ids, crowd_centres=False):
        for key, expected in theirs.items():
            np.testing.assert_array_equal(ours[key], expected, err_msg=f"{key} of image {image_id}")


def test_the_only_difference_is_detectron2s_crowd_gaussians(panoptic):
    files, document, thing_ids = panoptic
    differ = 0
    for image_id, ann, ours, theirs in both(files, document, thing_ids, crowd_centres=True):
        has_crowd_thing = any(s["iscrowd"] and s["category_id"] in thing_ids for s in ann["segments_info"])
        for key in ("center_weight", "offset_weight"):  # the weights never differ
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{key} of image {image_id}")
        if not has_crowd_thing:
            np.testing.assert_array_equal(ours["heatmap"], theirs["heatmap"], err_msg=f"image {image_id}")
            continue
        differ += int(not np.array_equal(ours["heatmap"], theirs["heatmap"]))
        assert (ours["heatmap"] <= theirs["heatmap"]).all()  # detectron2 only adds peaks
    assert differ > 0
