"""DALI graph vs the CPU reference, and vs the geometry itself, on the real sample photos.

The same `SampleParams` go through the DALI pipeline (CPU here; tests/test_dali_gpu.py runs the same checks on
CUDA) and through `fastload.augment.reference.augment_sample`. Tolerances (DALI CPU vs reference):

==========================  ===================================================  =========================
what                        check                                                measured (CPU, 512x512)
==========================  ===================================================  =========================
semantic / instance         IoU >= 0.99 per class / instance present             >= 0.9998
labels after a warp         subset of labels before ∪ {fill}                     exact
flip only                   masks equal to the flipped source (native size)      exact
image, photometric off      PSNR >= 40 dB                                        >= 64 dB
image, photometric on       PSNR >= 40 dB                                        >= 55 dB
offsets                     |Δ(dy, dx)| <= 1 px on >= 99.5 % of instance pixels  100 %
heatmap                     max |Δ| <= 0.01                                      <= 4e-4
==========================  ===================================================  =========================

The targets are rendered after augmentation from each path's own instance mask, so their comparison measures
how far the two masks' centres are apart (the targets equal the definition applied to the loader's own mask
exactly: tests/test_targets_after_augmentation.py).

Against geometry, each warped instance mask is compared with its COCO polygons pushed through the same
forward affine and re-rasterised at the output size (`fastload.build.raster.rasterize_image`, same overlap rule).
Nearest-neighbour resampling of a raster can disagree with a re-rasterised polygon only where the polygon
boundary passes between an output pixel's source point and the centre of the source pixel holding it, or
where pycocotools' rasteriser (on either side) departs from "centre inside", within 0.25 px of an edge;
so every disagreeing pixel lies within ``(0.5·√2 + 0.25)·σ_max`` output pixels of a boundary (σ_max: the
affine's largest singular value, ≥ 0.51 in every draw here, so the re-rasterised side's own 0.25 output px
stays below that) — checked exactly (measured: 0.74·σ_max at most). The resulting per-instance IoU depends
on the instance's size (≈ 1 − 0.5/√area): measured ≥ 0.967 for every instance (smallest 530 px), 0.991
pixel-weighted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from fastload.augment.config import AugmentConfig
from fastload.augment.params import SampleParams, affine_matrix, draw_params
from fastload.augment.reference import augment_sample, normalize_image
from fastload.pipeline.plan import BatchPlan
from fastload.targets import center_targets

pytest.importorskip("nvidia.dali")

OUT = (512, 512)
MAX_REACH = 0.5 * np.sqrt(2) + 0.25  # source px from a boundary (see the module docstring)
CFG = AugmentConfig.default()
MEAN = np.array(CFG.normalize.mean)[:, None, None]
STD = np.array(CFG.normalize.std)[:, None, None]

GEOMETRY = {
    "flip": lambda i: SampleParams(flip_x=True),
    "rotate": lambda i: SampleParams(angle=12.5),
    "zoom_shift": lambda i: SampleParams(scale=1.2, shift=(0.05, -0.08)),
    "combined": lambda i: SampleParams(flip_x=True, angle=-15.0, scale=0.8, shift=(-0.07, 0.04)),
}
PHOTOMETRIC = {
    "default_draws": lambda i: draw_params(1, 0, i, CFG),
    "all_on": lambda i: dataclasses.replace(
        draw_params(2, 0, i, CFG),
        hue=7.0,
        saturation=1.2,
        brightness=0.9,
        contrast=1.15,
        noise_sigma=6.0,
        noise_offset=(37 * i % 256, 101 * i % 256),
        shadow=(0.6, 0.8, 0.05, 0.08, 0.4),
    ),
}


@dataclasses.dataclass
class Pair:
    """One sample through both paths: DALI's outputs and the reference's, as NumPy arrays."""

    index: int
    params: SampleParams
    source: dict  # the decoded cache sample
    dali: dict
    ref: dict


def run_pairs(
    cache,
    draws: dict[str, Callable[[int], SampleParams]],
    *,
    device: str,
    step: int = 1,
    out=OUT,
) -> dict[str, list[Pair]]:
    """Every ``step``-th sample of ``cache`` through DALI on ``device`` and through the reference, per draw."""
    from fastload.pipeline.dali import DaliBackend

    backend = DaliBackend(
        cache=cache,
        out_size=out,
        augment=CFG,
        device=device,
        batch_size=6,
        num_threads=2,
        prefetch=2,
    )
    chosen = np.arange(0, len(cache), step)
    sources = {int(i): cache[int(i)] for i in chosen}
    result = {}
    for name, draw in draws.items():
        plans = [
            BatchPlan(chunk, tuple(draw(int(i)) for i in chunk))
            for chunk in np.array_split(chosen, -(-len(chosen) // 6))
        ]
        pairs = []
        for batch, plan in zip(backend.iterate(iter(plans)), plans, strict=True):
            assert batch["index"].tolist() == plan.indices.tolist()
            for j, (i, params) in enumerate(zip(plan.indices.tolist(), plan.params, strict=True)):
                dali = {
                    key: batch[key][j].cpu().numpy()
                    for key in ("image", "semantic", "instance", "heatmap", "offset")
                }
                ref = augment_sample(sources[i], params, CFG, out_hw=out)
                ref["image"] = normalize_image(ref["image"], CFG.normalize.mean, CFG.normalize.std)
                heatmap, ref["offset"] = center_targets(ref["instance"], CFG.targets.sigma, stride=CFG.targets.stride)
                ref["heatmap"] = heatmap[None]
                pairs.append(Pair(i, params, sources[i], dali, ref))
        result[name] = pairs
    backend.close()
    return result


# ------------------------------------------------------------------------------------------------- checks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def check_mask_iou(pairs: Sequence[Pair], minimum: float = 0.99) -> float:
    """IoU of every class and every instance present in the reference; returns the smallest."""
    worst = 1.0
    for p in pairs:
        for key, skip in (("semantic", (0, 255)), ("instance", (0,))):
            for label in np.unique(p.ref[key]):
                if label in skip:
                    continue
                value = iou(p.dali[key] == label, p.ref[key] == label)
                assert value >= minimum, (
                    f"sample {p.index} {key} {label}: IoU {value:.4f} < {minimum} ({p.params})"
                )
                worst = min(worst, value)
    return worst


def check_label_subset(pairs: Sequence[Pair]) -> None:
    for p in pairs:
        for key, fill in (("semantic", 255), ("instance", 0)):
            after = set(np.unique(p.dali[key]).tolist())
            before = set(np.unique(p.source[key]).tolist()) | {fill}
            assert after <= before, (
                f"sample {p.index} {key}: labels {sorted(after - before)} appeared from nowhere"
            )


def grey_levels(image: np.ndarray) -> np.ndarray:
    """Normalised CHW float32 back to 0..255 grey levels."""
    return (image.astype(np.float64) * STD + MEAN) * 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def check_image_psnr(pairs: Sequence[Pair], minimum: float = 40.0) -> float:
    worst = float("inf")
    for p in pairs:
        value = psnr(grey_levels(p.dali["image"]), grey_levels(p.ref["image"]))
        assert value >= minimum, f"sample {p.index}: PSNR {value:.1f} dB < {minimum} ({p.params})"
        worst = min(worst, value)
    return worst


def check_offsets(pairs: Sequence[Pair], *, within: float = 1.0, share: float = 0.995) -> float:
    worst = 1.0
    for p in pairs:
        on = p.ref["instance"] > 0  # stride 1: map pixels are image pixels
        if not on.any():
            continue
        error = np.linalg.norm(p.dali["offset"] - p.ref["offset"], axis=0)[on]
        good = float(np.mean(error <= within))
        assert good >= share, f"sample {p.index}: offsets within {within} px on {good:.4f} of instance pixels"
        worst = min(worst, good)
    return worst


def check_heatmap(pairs: Sequence[Pair], atol: float = 0.01) -> float:
    worst = max(float(np.abs(p.dali["heatmap"] - p.ref["heatmap"]).max()) for p in pairs)
    assert worst <= atol, f"heatmap differs by up to {worst:.4f} > {atol}"
    return worst


def check_geometry(
    pairs: Sequence[Pair], records: dict, *, min_iou: float = 0.95, min_weighted: float = 0.985
):
    """Warped instance masks vs their polygons through the same affine, re-rasterised (see module doc).

    Returns (smallest IoU, pixel-weighted IoU, largest disagreement distance in units of σ_max).
    """
    import shapely

    from fastload.build.geometry import part_rings
    from fastload.build.raster import rasterize_image

    worst, inter, union, farthest = 1.0, 0, 0, 0.0
    for p in pairs:
        meta = p.source["meta"]
        matrix = affine_matrix(p.params, p.source["image"].shape[:2], OUT, fit=CFG.geometry.fit)
        record = _transformed_record(records[meta["image_id"]], matrix)
        raster = rasterize_image(record)
        raster_id = {inst.annotation_id: k + 1 for k, inst in enumerate(raster.instances)}
        truth = np.zeros(OUT, np.int32)  # the re-rasterised polygons, in the cache's instance ids
        for inst in meta["instances"]:
            if inst["annotation_id"] in raster_id:
                truth[raster.instance == raster_id[inst["annotation_id"]]] = inst["id"]
        warped = p.dali["instance"]
        for inst in meta["instances"]:
            a, b = warped == inst["id"], truth == inst["id"]
            if np.count_nonzero(b) >= 32:
                value = iou(a, b)
                assert value >= min_iou, (
                    f"sample {p.index} instance {inst['id']}: IoU {value:.4f} vs its polygon"
                )
                worst = min(worst, value)
                inter += np.count_nonzero(a & b)
                union += np.count_nonzero(a | b)
        wrong = np.argwhere(warped != truth)
        if len(wrong):
            rings = [
                shapely.LinearRing(r)
                for inst in record.instances
                for part in inst.polygons
                for r in part_rings(part)
            ]
            distance = shapely.distance(
                shapely.points(wrong[:, 1] + 0.5, wrong[:, 0] + 0.5), shapely.union_all(rings)
            )
            sigma = np.linalg.svd(matrix[:, :2], compute_uv=False).max()
            reach = float(distance.max() / sigma)
            assert reach <= MAX_REACH, (
                f"sample {p.index}: a pixel {reach:.3f} source px off a boundary"
            )
            farthest = max(farthest, reach)
    weighted = inter / union
    assert weighted >= min_weighted, f"pixel-weighted IoU vs polygons {weighted:.4f} < {min_weighted}"
    return worst, weighted, farthest


def _transformed_record(record, matrix: np.ndarray):
    a, t = matrix[:, :2], matrix[:, 2]
    instances = tuple(
        dataclasses.replace(inst, polygons=tuple(part @ a.T + t for part in inst.polygons))
        for inst in record.instances
    )
    return dataclasses.replace(record, height=OUT[0], width=OUT[1], instances=instances)


def coco_records(sample_coco: Path) -> dict:
    from fastload.build.coco import load_coco

    return {record.image_id: record for record in load_coco(sample_coco).images}


# -------------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def cache(sample_cache):
    from fastload.samples import open_cache

    return open_cache(sample_cache)


@pytest.fixture(scope="module")
def cpu_pairs(cache) -> dict[str, list[Pair]]:
    # every photo for the geometric draws (the polygon check wants them all), every other one for colour
    geometric = run_pairs(cache, GEOMETRY, device="cpu")
    return {**geometric, **run_pairs(cache, PHOTOMETRIC, device="cpu", step=2)}


@pytest.mark.parametrize("draw", [*GEOMETRY, *PHOTOMETRIC])
def test_masks_match_the_reference(cpu_pairs, draw):
    assert check_mask_iou(cpu_pairs[draw]) >= 0.99
    check_label_subset(cpu_pairs[draw])


@pytest.mark.parametrize("draw", list(GEOMETRY))
def test_image_matches_the_reference_without_photometric_augmentation(cpu_pairs, draw):
    assert check_image_psnr(cpu_pairs[draw], 40.0) >= 40.0


@pytest.mark.parametrize("draw", list(PHOTOMETRIC))
def test_image_matches_the_reference_with_photometric_augmentation(cpu_pairs, draw):
    assert check_image_psnr(cpu_pairs[draw], 40.0) >= 40.0


@pytest.mark.parametrize("draw", [*GEOMETRY, "default_draws"])
def test_target_maps_match_the_reference(cpu_pairs, draw):
    check_offsets(cpu_pairs[draw])
    check_heatmap(cpu_pairs[draw])


def test_flip_matches_the_reference_exactly(cpu_pairs):
    for p in cpu_pairs["flip"]:
        for key in ("semantic", "instance", "offset", "heatmap"):
            assert np.array_equal(p.dali[key], p.ref[key]), f"sample {p.index} {key}"


def check_flip_is_exact(cache, *, device: str) -> None:
    """At the native size a flip maps pixels onto pixels: every label map is the mirrored source, exactly."""
    from fastload.pipeline.dali import DaliBackend

    native = cache.image_size(0)
    indices = [i for i in range(len(cache)) if cache.image_size(i) == native][:4]
    backend = DaliBackend(
        cache=cache,
        out_size=native,
        augment=CFG,
        device=device,
        batch_size=4,
        num_threads=2,
        prefetch=1,
    )
    plans = [
        BatchPlan(
            np.array(indices),
            tuple(SampleParams(flip_x=True, flip_y=k % 2 == 1) for k in range(len(indices))),
        )
    ]
    (batch,) = backend.iterate(iter(plans))
    for j, i in enumerate(indices):
        source = cache[i]
        flip_y = j % 2 == 1
        mirror = (lambda x: x[..., ::-1, ::-1]) if flip_y else (lambda x: x[..., ::-1])
        assert np.array_equal(batch["semantic"][j].cpu().numpy(), mirror(source["semantic"]))
        assert np.array_equal(batch["instance"][j].cpu().numpy(), mirror(source["instance"]))
        # the targets of the mirrored mask: the mirrored field with the flipped components negated
        sign = np.array([-1.0 if flip_y else 1.0, -1.0], np.float32)[:, None, None]
        assert np.array_equal(batch["offset"][j].cpu().numpy(), mirror(source["offset"]) * sign)
    backend.close()


def test_flip_only_is_exact_for_masks(cache):
    check_flip_is_exact(cache, device="cpu")


def test_instances_follow_their_polygons_through_the_affine(cpu_pairs, sample_coco):
    records = coco_records(sample_coco)
    pairs = [p for draw in GEOMETRY for p in cpu_pairs[draw]]
    worst, weighted, farthest = check_geometry(pairs, records)
    assert worst >= 0.95 and weighted >= 0.985 and farthest <= MAX_REACH
