"""Per-kernel profile of the CpuLoader's per-sample work, beside the Albumentations equivalent of each stage.

Run: ``python benchmarks/profile_kernels.py [--size 512 512] [--samples 16] [--repeats 5] [--cache DIR]``

Prints a markdown table: for every stage of fastload's CPU reference path (the work a CpuLoader worker does
for one sample), the thread CPU time of fastload's kernel and of the Albumentations transform a user would
write instead (the issue-9 peer: HorizontalFlip, Affine, HueSaturationValue, RandomBrightnessContrast,
GaussNoise, RandomShadow, Normalize + ToTensorV2), in milliseconds per call, the median over
``samples x repeats`` calls on one thread (``time.thread_time``: robust to a busy machine, it counts only this
thread's CPU). Every augmentation is applied to every sample here (probability 1, values drawn from the
default ranges); the ``p`` column is how often ``configs/default.yaml`` applies it, and the last rows weigh
each stage by it: the expected CPU time of one sample.

Inputs: ``--samples`` synthetic images (``fastload.build.synth``, textured JPEGs with 5-20 overlapping instances)
built into a cache in a temporary folder, or an existing ``--cache``; both sides start from the same decoded
image and masks. The process is set up as a CpuLoader worker is: one OpenCV thread, one torch thread, and the
worker's allocator setting (freed memory kept for reuse; ``--default-malloc`` leaves glibc's defaults, whose
first-touch page faults depend on the process's allocation history: a loader worker suffered them on every
sample, this warm loop may not). Albumentations is optional (``pip install albumentations``): without
it only fastload's column is filled.

The two columns do the same *job*, not the same arithmetic: fastload warps once (flip, rotation, scale and
shift in one affine) where Albumentations flips and then warps; fastload's hue/saturation is DALI's YIQ
rotation, Albumentations' HSV arithmetic; fastload's noise is a window of a fixed Gaussian texture,
Albumentations draws fresh Gaussians; fastload's shadow is a straight band, Albumentations' a random polygon.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Kernel = Callable[[], Any]


@dataclass(frozen=True)
class Stage:
    """One step of the per-sample work: fastload's kernel and the peer's, each a prepared zero-argument call."""

    name: str
    fastload: Kernel | None
    peer: Kernel | None
    p: float  # how often configs/default.yaml runs it
    fastload_what: str
    peer_what: str


@dataclass
class Sample:
    """A decoded cache sample and the augmentation parameters both sides apply to it."""

    members: Any
    hw: tuple[int, int]
    image: np.ndarray  # uint8 (H, W, 3) RGB
    semantic: np.ndarray  # uint8 (H, W)
    instance: np.ndarray  # int16 (H, W), as the CpuLoader worker holds it
    params: Any  # SampleParams: every augmentation on, rotation included
    flat_params: Any  # the same without rotation


# --------------------------------------------------------------------------------------------- inputs


def synthetic_cache(root: Path, n: int, size: tuple[int, int]) -> Path:
    """``n`` synthetic images of ``size`` (H, W) with 5-20 instances, built into ``root/cache``."""
    from fastload.build.build import build_cache
    from fastload.build.synth import synth_coco

    synth_coco(out=root / "data", n=n, size=size, instances=(5, 20), seed=0)
    build_cache(coco=root / "data/annotations.json", images=root / "data/images", out=root / "cache", progress=False)
    return root / "cache"


def always_on(cfg):
    """The config with every augmentation's probability set to 1 (same ranges)."""
    geo, pho = cfg.geometry, cfg.photometric
    on = {k: dataclasses.replace(getattr(pho, k), p=1.0) for k in ("hue", "saturation", "brightness", "contrast", "noise", "shadow")}
    geometry = dataclasses.replace(
        geo,
        flip_x=1.0,
        rotation=dataclasses.replace(geo.rotation, p=1.0),
        scale=dataclasses.replace(geo.scale, p=1.0),
        translation=dataclasses.replace(geo.translation, p=1.0),
    )
    return dataclasses.replace(cfg, geometry=geometry, photometric=dataclasses.replace(pho, **on))


def load_samples(cache_root: Path, n: int) -> tuple[Any, list[Sample]]:
    from fastload.augment.config import load_augment
    from fastload.augment.params import draw_params
    from fastload.cache.format import decode_image
    from fastload.cache.reader import decode_labels
    from fastload.samples import open_cache

    cfg = load_augment("default")
    every = always_on(cfg)
    ds = open_cache(cache_root)
    samples = []
    for i in range(min(n, len(ds))):
        members = ds.read_members(i)
        hw = ds.image_size(i)
        semantic, instance = decode_labels(members, hw)
        params = draw_params(0, 0, i, every)
        samples.append(
            Sample(members, hw, decode_image(members.image), semantic, instance.view(np.int16), params,
                   dataclasses.replace(params, angle=0.0))
        )
    ds.close()
    return cfg, samples


# --------------------------------------------------------------------------------------------- stages


def fastload_stages(s: Sample, cfg, out_hw: tuple[int, int]) -> dict[str, tuple[Kernel, str]]:
    """fastload's kernels on one sample, each with the inputs the stage before it would hand it."""
    from fastload.augment import reference as R
    from fastload.augment.params import affine_matrix, shadow_band
    from fastload.cache.format import decode_image
    from fastload.cache.reader import decode_labels
    from fastload.pipeline.batch import numpy_targets
    from fastload.targets import center_targets_per_instance

    p = s.params
    m = affine_matrix(p, s.hw, out_hw)
    m_flat = affine_matrix(s.flat_params, s.hw, out_hw)
    warped = R.warp_image(s.image, m, out_hw)
    coloured = R.adjust_brightness_contrast(R.adjust_hue_saturation(warped, p.hue, p.saturation), p.brightness, p.contrast)
    band = shadow_band(p, out_hw)
    instance = R.warp_mask(s.instance, m, out_hw, fill=R.INSTANCE_FILL)
    semantic = R.warp_mask(s.semantic, m, out_hw, fill=R.SEMANTIC_FILL)

    def mask_warp(matrix):
        def run():
            xy_map = R.nearest_map(matrix, s.hw, out_hw)
            return R.take_nearest(s.semantic, xy_map, R.SEMANTIC_FILL), R.take_nearest(s.instance, xy_map, R.INSTANCE_FILL)

        return run

    def shadow_only():
        return R.round_to_uint8(R.apply_shadow(coloured.astype(np.float32), band))

    def noise_only():
        return R.round_to_uint8(R.add_noise(coloured.astype(np.float32), p.noise_sigma, p.noise_offset))

    return {
        "decode image": (lambda: decode_image(s.members.image), "`decode_image` (cv2.imdecode + BGR→RGB)"),
        "decode masks": (lambda: decode_labels(s.members, s.hw), "`decode_labels` (LZ4)"),
        "flip": (lambda: None, "part of the one affine"),
        "warp image": (lambda: R.warp_image(s.image, m, out_hw), "`warp_image` (cv2.warpAffine linear)"),
        "warp 2 masks, rotated": (mask_warp(m), "`nearest_map` + 2 `take_nearest`"),
        "warp 2 masks, no rotation": (mask_warp(m_flat), "`nearest_map` + 2 `take_nearest`"),
        "hue/saturation": (lambda: R.adjust_hue_saturation(warped, p.hue, p.saturation), "`adjust_hue_saturation` (DALI hsv)"),
        "brightness/contrast": (
            lambda: R.adjust_brightness_contrast(warped, p.brightness, p.contrast),
            "`adjust_brightness_contrast` (LUT)",
        ),
        "shadow": (shadow_only, "`apply_shadow` + round"),
        "noise": (noise_only, "`add_noise` + round"),
        "targets (heat, offsets, weights)": (
            lambda: numpy_targets(semantic, instance, cfg.targets),
            "`sample_targets` (the three maps, one pass) + `panoptic_weights`",
        ),
        "targets, per-instance loop": (
            lambda: center_targets_per_instance(instance.astype(np.int32)),
            "Panoptic-DeepLab's loop (the user's start)",
        ),
    }


def peer_stages(s: Sample, cfg, out_hw: tuple[int, int]) -> dict[str, tuple[Kernel, str]]:
    """The Albumentations transform for each stage, with the same sample's values where they translate."""
    import albumentations as A
    import cv2
    from albumentations.pytorch import ToTensorV2

    from fastload.cache.format import decode_image
    from fastload.targets import center_targets, semantic_weights

    p = s.params
    if s.hw != tuple(out_hw):
        raise SystemExit(f"the peer column assumes images of the output size; got {s.hw}, output {tuple(out_hw)}")

    def fixed(v: float) -> tuple[float, float]:
        return (v, v)

    affine = A.Affine(
        scale=fixed(p.scale),
        translate_percent={"x": fixed(p.shift[1]), "y": fixed(p.shift[0])},
        rotate=fixed(p.angle),
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        fill=0,
        fill_mask=0,
        p=1.0,
    )
    flat_affine = A.Affine(
        scale=fixed(p.scale), translate_percent={"x": fixed(p.shift[1]), "y": fixed(p.shift[0])}, rotate=fixed(0.0),
        interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST, fill=0, fill_mask=0, p=1.0,
    )
    flip = A.HorizontalFlip(p=1.0)
    # OpenCV's uint8 HSV hue is in 2-degree steps; saturation is shifted, not scaled (an approximation)
    hsv = A.HueSaturationValue(hue_shift_limit=fixed(p.hue / 2.0), sat_shift_limit=fixed(255.0 * (p.saturation - 1.0)),
                               val_shift_limit=(0, 0), p=1.0)
    bc = A.RandomBrightnessContrast(brightness_limit=fixed(p.brightness - 1.0), contrast_limit=fixed(p.contrast - 1.0), p=1.0)
    noise = A.GaussNoise(std_range=fixed(p.noise_sigma / 255.0), p=1.0)
    shadow = A.RandomShadow(p=1.0)
    to_tensor = A.Compose([A.Normalize(mean=cfg.normalize.mean, std=cfg.normalize.std), ToTensorV2()])
    image = s.image
    affine(image=image)  # draws its params once, for the mask calls below
    flat_affine(image=image)
    masks = (s.semantic, s.instance)
    instance = affine.apply_to_mask(s.instance, **affine.params).astype(np.int32)

    def mask_warp(t):
        return lambda: [t.apply_to_mask(mask, **t.params) for mask in masks]

    return {
        "decode image": (lambda: decode_image(s.members.image), "the same `cv2.imdecode` + BGR→RGB"),
        "flip": (lambda: flip(image=image), "`HorizontalFlip`"),
        "warp image": (lambda: affine(image=image), "`Affine` (cv2.warpAffine linear)"),
        "warp 2 masks, rotated": (mask_warp(affine), "`Affine` on 2 masks (nearest)"),
        "warp 2 masks, no rotation": (mask_warp(flat_affine), "`Affine` on 2 masks (nearest)"),
        "hue/saturation": (lambda: hsv(image=image), "`HueSaturationValue`"),
        "brightness/contrast": (lambda: bc(image=image), "`RandomBrightnessContrast`"),
        "shadow": (lambda: shadow(image=image), "`RandomShadow`"),
        "noise": (lambda: noise(image=image), "`GaussNoise`"),
        "targets (heat, offsets, weights)": (
            lambda: (center_targets(instance, cfg.targets.sigma), semantic_weights(instance)),
            "`fastload.targets.center_targets` + `semantic_weights`",
        ),
        "normalise": (lambda: to_tensor(image=image), "`Normalize` + `ToTensorV2` (in the worker)"),
    }


def default_probabilities(cfg) -> dict[str, float]:
    """How often configs/default.yaml runs each stage (a colour stage runs when either of its gates passes)."""
    geo, pho = cfg.geometry, cfg.photometric
    either = lambda a, b: 1.0 - (1.0 - a) * (1.0 - b)  # noqa: E731
    return {
        "flip": geo.flip_x,
        "warp 2 masks, rotated": geo.rotation.p,
        "warp 2 masks, no rotation": 1.0 - geo.rotation.p,
        "hue/saturation": either(pho.hue.p, pho.saturation.p),
        "brightness/contrast": either(pho.brightness.p, pho.contrast.p),
        "shadow": pho.shadow.p,
        "noise": pho.noise.p,
        "targets, per-instance loop": 0.0,
    }


# ---------------------------------------------------------------------------------------------- timing


def thread_ms(fn: Kernel, repeats: int) -> list[float]:
    """Thread CPU milliseconds of ``repeats`` calls (after one untimed call)."""
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        out.append((time.thread_time() - t0) * 1e3)
    return out


def _write_shared(layout: dict, batch: int) -> Kernel:
    """What a DataLoader worker does with a batch: fresh shared-memory tensors, one row written per sample."""
    import torch

    rows = {k: np.ones(shape[1:], dtype=torch.empty(0, dtype=dtype).numpy().dtype) for k, (shape, dtype) in layout.items()}

    def write():
        out = {}
        for key, (shape, dtype) in layout.items():
            storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * rows[key].itemsize)
            out[key] = torch.empty(0, dtype=dtype).set_(storage).view(shape)
            arr = out[key].numpy()
            for k in range(batch):
                arr[k] = rows[key]
        return out

    return write


def hand_over_rows(cfg, out_hw: tuple[int, int], batch: int, repeats: int) -> dict[str, tuple[float, float, str]]:
    """Per sample: (MB, ms, what) of the worker → main-process hand-over, fastload's and a finished contract's,
    and fastload's normalise-and-widen in the main process."""
    import torch

    from fastload.pipeline.batch import widen_batch
    from fastload.pipeline.opencv import AugmentedBatches

    compact = AugmentedBatches([], cfg, out_hw, finish=True, io_threads=1, max_read_bytes=0).layout(batch, out_hw)
    oh, ow = out_hw
    finished = {
        **compact,
        "image": ((batch, 3, oh, ow), torch.float32),
        "semantic": ((batch, oh, ow), torch.int64),
        "instance": ((batch, oh, ow), torch.int32),
    }

    def mb(layout: dict) -> float:
        return sum(np.prod(shape[1:]) * torch.empty(0, dtype=dtype).element_size() for shape, dtype in layout.values()) / 2**20

    def per_sample(fn: Kernel) -> float:
        return statistics.median(t / batch for t in thread_ms(fn, repeats))

    shared = _write_shared(compact, batch)()
    widen = lambda: widen_batch(image=shared["image"], semantic=shared["semantic"], instance=shared["instance"], cfg=cfg)  # noqa: E731
    return {
        "fastload": (mb(compact), per_sample(_write_shared(compact, batch)), "uint8 image and masks, the targets"),
        "finished": (mb(finished), per_sample(_write_shared(finished, batch)), "the finished batch contract"),
        "widen": (0.0, per_sample(widen), "`widen_batch` (main process: normalise, widen the masks)"),
    }


# ---------------------------------------------------------------------------------------------------- main


def profile(cache_root: Path, n: int, out_hw: tuple[int, int], repeats: int, batch: int) -> str:
    cfg, samples = load_samples(cache_root, n)
    try:
        import albumentations  # noqa: F401

        have_peer = True
    except ImportError:
        have_peer = False
    probs = default_probabilities(cfg)
    ours: dict[str, list[float]] = {}
    theirs: dict[str, list[float]] = {}
    what: dict[str, tuple[str, str]] = {}
    for s in samples:
        fl = fastload_stages(s, cfg, out_hw)
        pe = peer_stages(s, cfg, out_hw) if have_peer else {}
        for name, (fn, desc) in fl.items():
            ours.setdefault(name, []).extend(thread_ms(fn, repeats))
            what[name] = (desc, what.get(name, ("", ""))[1])
        for name, (fn, desc) in pe.items():
            theirs.setdefault(name, []).extend(thread_ms(fn, repeats))
            what[name] = (what.get(name, ("", ""))[0], desc)
    hand = hand_over_rows(cfg, out_hw, batch, repeats)
    ours["normalise"] = [hand["widen"][1]]  # per sample, from a batch
    what["normalise"] = (hand["widen"][2], what.get("normalise", ("", ""))[1])
    names = list(dict.fromkeys([*ours, *theirs]))

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        f"| stage ({out_hw[0]}x{out_hw[1]}, {len(samples)} samples x {repeats}) | fastload | ms | albumentations | ms | p |",
        "|---|---|---|---|---|---|",
    ]
    expected = {"fastload": 0.0, "peer": 0.0}
    for name in names:
        a = statistics.median(ours[name]) if name in ours else None
        b = statistics.median(theirs[name]) if name in theirs else None
        p = probs.get(name, 1.0)
        if name == "flip":
            a = 0.0
        if p:
            expected["fastload"] += p * (a if a is not None else 0.0)
            expected["peer"] += p * (a if name in ("decode image", "decode masks") else (b or 0.0))
        fl_desc, pe_desc = what.get(name, ("", ""))
        if name in ("decode image", "decode masks"):  # the same call on both sides: one number, not two noises
            pe_desc = "the same call (same cache)"
            b = a
        lines.append(f"| {name} | {fl_desc} | {fmt(a)} | {pe_desc or '-'} | {fmt(b)} | {p:g} |")
    (f_mb, f_ms, f_what), (p_mb, p_ms, p_what) = hand["fastload"], hand["finished"]
    lines.append(
        f"| hand-over to the main process (batch {batch}) | {f_what}: {f_mb:.1f} MB into fresh shared memory | "
        f"{f_ms:.2f} | {p_what} (what torch's collate ships from the workers): {p_mb:.1f} MB | {p_ms:.2f} | 1 |"
    )
    expected["fastload"] += f_ms
    expected["peer"] += p_ms
    lines.append(
        f"| **expected per sample** (stages × p) | | **{expected['fastload']:.1f}** | | "
        f"**{expected['peer']:.1f}**{'' if have_peer else ' (albumentations not installed)'} | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"), help="output (and synthetic image) size")
    ap.add_argument("--samples", type=int, default=16, help="synthetic samples (or the first N of --cache)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per sample and stage")
    ap.add_argument("--batch", type=int, default=16, help="batch size for the transfer row")
    ap.add_argument("--cache", type=Path, default=None, help="an existing cache instead of a synthetic one")
    ap.add_argument("--default-malloc", action="store_true", help="leave glibc's allocator defaults (see the docstring)")
    args = ap.parse_args(argv)

    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    if not args.default_malloc:
        from fastload.procs import keep_freed_memory

        keep_freed_memory()
    out_hw = (int(args.size[0]), int(args.size[1]))
    with tempfile.TemporaryDirectory(prefix="fastload-profile-") as tmp:
        root = args.cache if args.cache is not None else synthetic_cache(Path(tmp), args.samples, out_hw)
        print(profile(root, args.samples, out_hw, args.repeats, args.batch))
    print(f"\nthread CPU ms per call, median; malloc: {'glibc defaults' if args.default_malloc else 'CpuLoader worker setting'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
