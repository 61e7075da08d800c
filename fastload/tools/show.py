"""``fastload show``: a picture grid of loader output, to see at a glance that masks and maps follow the image.

One row per sample (and per loader with ``--loader both``: the cpu row, then the dali row of the same sample
with the same augmentation parameters). Columns:

1. the augmented image, denormalised;
2. the semantic mask over it: a colour per class, things and stuff apart (a stuff class as a desaturated tint, a
   thing's instances each in a shade of its class colour, outlined in white), ignore (255: crowd, and the
   letterbox outside the warped image) as grey/white stripes; the footer's key names the classes;
3. the centre heatmap (inferno) over a dimmed grey image;
4. the offsets as a colour wheel: hue = the direction each pixel points to its instance centre, brightness =
   distance (the wheel in the header gives the key; black = no offset).

The grid is composed with NumPy (`fastload.tools.picture`) and written with OpenCV, so its size is exact: see
`fastload.tools.picture.grid_size`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastload.tools.picture import denormalize, grid_size, render_grid
from fastload.validation import MAX_PIXELS, MAX_SIDE, check_int, check_size

if TYPE_CHECKING:
    from fastload.augment.config import AugmentConfig


def _batch_numpy(batch: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    arrays = {k: v.detach().cpu().numpy() for k, v in batch.items()}
    n = len(arrays["index"])
    return [{k: v[i] for k, v in arrays.items()} for i in range(n)]


def first_batch(
    cache: Any,
    loader: str,
    *,
    n: int,
    size: tuple[int, int],
    augment: Any,
    seed: int,
    epoch: int,
    device: str,
) -> list[dict[str, np.ndarray]]:
    """The first ``n`` samples of ``epoch`` from the named loader ("cpu" or "dali", GPU or not), as NumPy."""
    from fastload.tools.loaders import fastload_loader

    ld = fastload_loader(
        loader, cache, batch_size=n, shuffle=True, seed=seed, size=size, augment=augment, device=device, num_threads=None
    )
    try:
        ld.set_epoch(epoch)
        batch = next(iter(ld))
        return _batch_numpy(batch)
    finally:
        ld.close()


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray], mean, std) -> tuple[float, float]:
    """(semantic pixels equal, %; mean |difference| of the denormalised images, 0..255) of two loaders' samples."""
    sem = 100.0 * float(np.mean(a["semantic"] == b["semantic"]))
    da = denormalize(a["image"], mean, std).astype(np.float32)
    db = denormalize(b["image"], mean, std).astype(np.float32)
    return sem, float(np.mean(np.abs(da - db)))


LOADER_CHOICES = ("cpu", "dali", "both")


def grid_rows(
    cache: Any,
    *,
    n: int,
    loader: str,
    augment: AugmentConfig,
    size: tuple[int, int],
    seed: int,
    epoch: int,
    device: str,
) -> list[dict[str, Any]]:
    """The grid's rows: the first ``n`` samples of ``epoch``, one row per sample and loader (the cpu row first).

    Each row is ``{"sample": dict of NumPy arrays, "label": [lines of text], "agreement": None | (semantic
    pixels equal %, mean |difference| of the images)}``; with ``loader="both"`` each dali row holds its
    `agreement` with the cpu row of the same sample (same augmentation parameters), and shows it in its label.
    """
    names = ("cpu", "dali") if loader == "both" else (loader,)
    got = {
        name: first_batch(cache, name, n=n, size=size, augment=augment, seed=seed, epoch=epoch, device=device)
        for name in names
    }
    rows = []
    for i in range(len(got[names[0]])):
        for name in names:
            s = got[name][i]
            row = {"sample": s, "label": [f"#{int(s['index'])}", name], "agreement": None}
            if name == "dali" and "cpu" in got:
                norm = augment.normalize
                sem, img = row["agreement"] = agreement(got["cpu"][i], s, norm.mean, norm.std)
                row["label"] += ["vs cpu:", f"sem {sem:.1f}% same", f"img |d| {img:.2f}"]
            rows.append(row)
    return rows


def show(
    cache: Any,
    out: str | Path,
    *,
    n: int = 8,
    loader: str = "cpu",
    augment: Any = "default",
    size: tuple[int, int] = (512, 512),
    seed: int = 0,
    epoch: int = 0,
    tile: int = 256,
    device: str = "auto",
) -> Path:
    """Render the grid of the first ``n`` samples of ``epoch`` and write it to ``out`` (PNG). Returns the path.

    loader : "cpu", "dali" or "both" (cpu row then dali row for each sample, same parameters: `grid_rows`)
    """
    import cv2

    import fastload
    from fastload.augment.config import load_augment

    if loader not in LOADER_CHOICES:
        raise ValueError(f"show: loader must be one of {', '.join(LOADER_CHOICES)}; got {loader!r}")
    check_int("show: n", n, 1, error=ValueError)
    check_int("show: tile", tile, 16, MAX_SIDE, error=ValueError)
    grid_h, grid_w = grid_size(2 * n if loader == "both" else n, check_size("show: size", size), tile)
    if grid_h * grid_w > MAX_PIXELS:  # the picture is allocated whole: say so before loading anything
        raise ValueError(
            f"show: {n} samples in tiles {tile} wide make a {grid_h} x {grid_w} picture, above the {MAX_PIXELS} pixels "
            "fastload allows; lower n or tile"
        )
    cfg = load_augment(augment)
    # open a cache given by path once, for both loaders and the class names
    opened = isinstance(cache, (str, Path))
    if opened:
        cache = fastload.open_cache(cache)
    try:
        rows = grid_rows(cache, n=n, loader=loader, augment=cfg, size=size, seed=seed, epoch=epoch, device=device)
        class_names = [c.name for c in cache.manifest.categories]
        stuff = cache.manifest.stuff_train_ids
    finally:
        if opened:
            cache.close()
    grid = render_grid(
        rows, out_hw=tuple(size), tile=tile, mean=cfg.normalize.mean, std=cfg.normalize.std, class_names=class_names,
        stuff=stuff,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"show: could not write {out} (use a .png name in a writable folder)")
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show",
        help="render a picture grid of augmented samples with their masks and maps",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--cache", required=True, help="cache directory")
    p.add_argument("--n", type=int, default=8, help="samples (default 8)")
    p.add_argument("--out", default="grid.png", help="PNG to write (default grid.png)")
    p.add_argument("--config", default="default", help="augmentation YAML, or 'default' / 'none'")
    p.add_argument("--loader", choices=LOADER_CHOICES, default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    p.add_argument("--tile", type=int, default=256, help="width of one panel in pixels (default 256)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from fastload.errors import ConfigError

    if not Path(args.cache).is_dir():
        raise ConfigError(f"--cache {args.cache!r} is not a directory; build one with `fastload cache build`")
    try:
        path = show(
            args.cache,
            args.out,
            n=args.n,
            loader=args.loader,
            augment=args.config,
            size=tuple(args.size),
            seed=args.seed,
            epoch=args.epoch,
            tile=args.tile,
            device=args.device,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    print(f"wrote {path}")
    return 0
