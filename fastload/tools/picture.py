"""The picture of `fastload show`, pure NumPy + OpenCV: colour codings of masks, heatmap and offsets, composed
into one grid whose size is exact (`grid_size`). Its rows and columns are those `fastload.tools.show` describes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastload.labels import IGNORE

COLUMNS = ("image (augmented)", "semantic + instances", "centre heatmap", "offsets: hue = direction")
LABEL_W = 112  # left strip: sample index, loader, agreement
HEADER_H = 40  # top strip: column titles, the offset colour wheel
FOOTER_H = 26  # bottom strip: the class colour key

# a fixed palette so that a class keeps its colour across pictures (tab10-like, then golden-angle hues)
_PALETTE = np.array(
    [
        (0, 0, 0),
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (188, 189, 34),
        (23, 190, 207),
    ],
    dtype=np.uint8,
)


def class_colours(num: int = 256) -> np.ndarray:
    """uint8 (num, 3) RGB: 0 black, 1..9 tab10, then evenly spread hues."""
    import cv2

    out = np.zeros((num, 3), dtype=np.uint8)
    k = min(num, len(_PALETTE))
    out[:k] = _PALETTE[:k]
    if num > k:
        hues = ((np.arange(k, num) * 137.508) % 180).astype(np.uint8)  # OpenCV hue is 0..179
        hsv = np.stack([hues, np.full_like(hues, 200), np.full_like(hues, 230)], axis=-1)[None]
        out[k:] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
    return out


def denormalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """float32 (3, H, W) normalised → uint8 (H, W, 3) RGB."""
    img = image.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _stripes(h: int, w: int) -> np.ndarray:
    ii, jj = np.mgrid[0:h, 0:w]
    light = ((ii + jj) // 4) % 2 == 0
    out = np.empty((h, w, 3), np.uint8)
    out[light] = (235, 235, 235)
    out[~light] = (120, 120, 120)
    return out


def _outlines(instance: np.ndarray) -> np.ndarray:
    """bool (H, W): pixels whose right or lower neighbour belongs to another instance (either being > 0)."""
    edge = np.zeros(instance.shape, bool)
    dx = instance[:, 1:] != instance[:, :-1]
    dy = instance[1:, :] != instance[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return edge & ((instance > 0) | np.roll(instance > 0, 1, axis=1) | np.roll(instance > 0, 1, axis=0))


def stuff_colours(colours: np.ndarray) -> np.ndarray:
    """The desaturated tint a stuff class is drawn in: its class colour moved 65 % of the way to its own grey."""
    grey = colours.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(0.35 * colours + 0.65 * grey[..., None] + 0.5, 0, 255).astype(np.uint8)


def instance_shades(colours: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """uint8 (N, 3): instance ``ids[k]``'s colour, a shade of its class colour ``colours[k]``.

    Brightness steps through five levels (x0.55 .. x1.25) with the id and the hue turns by up to ±10°, so that
    neighbouring instances of one class differ while the class stays recognisable (Cityscapes' own panoptic
    pictures jitter the class colour the same way).
    """
    import cv2

    hsv = cv2.cvtColor(colours.reshape(-1, 1, 3).astype(np.uint8), cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.float32)
    step = ids.astype(np.int64)
    hsv[:, 0] = (hsv[:, 0] + ((step * 3) % 11 - 5)) % 180  # OpenCV's hue: 0..179, 2 degrees a unit
    hsv[:, 2] = np.clip(hsv[:, 2] * (0.55 + 0.175 * (step % 5)), 0, 255)
    return cv2.cvtColor(hsv.reshape(-1, 1, 3).astype(np.uint8), cv2.COLOR_HSV2RGB).reshape(-1, 3)


def semantic_overlay(
    rgb: np.ndarray, semantic: np.ndarray, instance: np.ndarray | None = None, *, stuff: Sequence[int] = ()
) -> np.ndarray:
    """uint8 (H, W, 3): classes blended over the image, ignore striped, instance outlines white.

    Things and stuff apart: a stuff class (train ids ``stuff``) as a desaturated tint of its colour
    (`stuff_colours`); a thing pixel of an instance in its instance's shade of the class colour
    (`instance_shades`), other thing pixels in the class colour; background dimmed.
    """
    colours = class_colours()
    is_stuff = np.zeros(256, bool)
    is_stuff[list(stuff)] = True
    colours[is_stuff] = stuff_colours(colours[is_stuff])
    out = rgb.astype(np.float32)
    fg = (semantic > 0) & (semantic != IGNORE)
    paint = colours[semantic[fg]]
    if instance is not None:
        shaded = (instance[fg] > 0) & ~is_stuff[semantic[fg]]
        paint[shaded] = instance_shades(paint[shaded], instance[fg][shaded])
    out[fg] = 0.45 * out[fg] + 0.55 * paint.astype(np.float32)
    out[semantic == 0] *= 0.6  # background dimmed so that the classes stand out
    ign = semantic == IGNORE
    out[ign] = 0.25 * out[ign] + 0.75 * _stripes(*semantic.shape)[ign].astype(np.float32)
    out = out.astype(np.uint8)
    if instance is not None:
        out[_outlines(instance)] = (255, 255, 255)
    return out


def heatmap_overlay(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): heat in [0, 1] (inferno) over a dimmed grey copy of the image; heat is resized to it."""
    import cv2

    h, w = rgb.shape[:2]
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    coded = cv2.applyColorMap(np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    coded = cv2.cvtColor(coded, cv2.COLOR_BGR2RGB).astype(np.float32)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
    alpha = np.clip(heat, 0.0, 1.0)[..., None] * 0.6 + 0.4
    return np.clip(alpha * coded + (1 - alpha) * 0.5 * grey, 0, 255).astype(np.uint8)


def offset_wheel(offset: np.ndarray, *, max_magnitude: float | None = None) -> np.ndarray:
    """uint8 (H', W', 3) RGB from float32 (2, H', W') (dy, dx): hue = direction, value = magnitude.

    Directions as on screen: right red, down yellow-green, left cyan, up blue/violet (OpenCV's HSV wheel,
    angle measured from +x towards +y, i.e. clockwise on screen since rows grow downwards).
    ``max_magnitude`` maps to full brightness (default: the 99th percentile of the non-zero magnitudes).
    """
    import cv2

    dy, dx = offset[0].astype(np.float32), offset[1].astype(np.float32)
    mag = np.hypot(dy, dx)
    if max_magnitude is None:
        nz = mag[mag > 0]
        max_magnitude = float(np.percentile(nz, 99)) if nz.size else 1.0
    ang = (np.degrees(np.arctan2(dy, dx)) % 360.0) / 2.0  # OpenCV hue 0..180
    val = np.clip(mag / max(max_magnitude, 1e-6), 0.0, 1.0) * 255.0
    hsv = np.stack([ang, np.full_like(ang, 255.0), val], axis=-1).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def wheel_legend(diameter: int) -> np.ndarray:
    """uint8 (d, d, 3): the key to :func:`offset_wheel` (each pixel's offset points away from the centre)."""
    r = diameter / 2.0
    yy, xx = np.mgrid[0:diameter, 0:diameter].astype(np.float32) + 0.5 - r
    wheel = offset_wheel(np.stack([yy, xx]), max_magnitude=r)
    wheel[np.hypot(yy, xx) > r] = 0
    return wheel


def grid_size(rows: int, out_hw: tuple[int, int], tile: int) -> tuple[int, int]:
    """(height, width) in pixels of a grid of ``rows`` rows for loader output ``out_hw`` and tile width."""
    th, tw = _tile_hw(out_hw, tile)
    return HEADER_H + rows * th + FOOTER_H, LABEL_W + len(COLUMNS) * tw


def _tile_hw(out_hw: tuple[int, int], tile: int) -> tuple[int, int]:
    h, w = out_hw
    return max(1, round(h * tile / w)), tile


def _put(
    img: np.ndarray, text: str, xy: tuple[int, int], *, scale: float = 0.45, colour=(255, 255, 255)
) -> None:
    import cv2

    cv2.putText(img, text, xy, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def sample_panels(sample: dict[str, np.ndarray], mean, std, *, stuff: Sequence[int] = ()) -> list[np.ndarray]:
    """The four panels (RGB uint8, the loader's output size) of one sample (tensors as NumPy, no batch axis);
    ``stuff``: the stuff classes' train ids (`semantic_overlay`)."""
    import cv2

    rgb = denormalize(sample["image"], mean, std)
    h, w = rgb.shape[:2]
    heat = sample["heatmap"][0]
    off = offset_wheel(sample["offset"])
    if off.shape[:2] != (h, w):
        off = cv2.resize(off, (w, h), interpolation=cv2.INTER_NEAREST)
    return [
        rgb,
        semantic_overlay(
            rgb, sample["semantic"].astype(np.int64).clip(0, 255).astype(np.uint8), sample["instance"], stuff=stuff
        ),
        heatmap_overlay(rgb, heat),
        off,
    ]


def key_entries(
    names: Sequence[str], stuff: Sequence[int] = (), present: Sequence[int] | None = None
) -> list[tuple[np.ndarray | None, str]]:
    """The footer's key: ``(swatch colour, text)`` per class (train ids 1..K; only those in ``present`` when
    given), things first, each in the colour its pixels get (a thing's class colour, of which its instances are
    shades; a stuff class's tint), then ignore (None: the stripes)."""
    colours = class_colours()
    shown = [(k, name) for k, name in enumerate(names, start=1) if present is None or k in present]
    things = [(colours[k], name) for k, name in shown if k not in stuff]
    tinted = [(stuff_colours(colours[k]), f"{name} (stuff)") for k, name in shown if k in stuff]
    return [*things, *tinted, (None, f"ignore ({IGNORE})")]


def _class_key(grid: np.ndarray, entries: list[tuple[np.ndarray | None, str]]) -> None:
    """Colour swatches and names along the footer (`key_entries`), as many as fit."""
    y0 = grid.shape[0] - FOOTER_H + 6
    x = 6
    for colour, name in entries:
        if x + 16 > grid.shape[1]:
            break
        grid[y0 : y0 + 14, x : x + 14] = _stripes(14, 14) if colour is None else colour
        _put(grid, name, (x + 18, y0 + 12))
        x += 18 + 9 * len(name) + 14


def render_grid(
    rows: list[dict[str, Any]],
    *,
    out_hw: tuple[int, int],
    tile: int,
    mean,
    std,
    class_names: Sequence[str] = (),
    stuff: Sequence[int] = (),
) -> np.ndarray:
    """uint8 RGB grid. Each row: {"sample": dict of NumPy arrays, "label": [lines of text]}.

    class_names : names of train ids 1..K, for the colour key in the footer
    stuff : train ids of the stuff classes (drawn as a tint, things in shades per instance: `semantic_overlay`)
    """
    import cv2

    th, tw = _tile_hw(out_hw, tile)
    height, width = grid_size(len(rows), out_hw, tile)
    grid = np.full((height, width, 3), 32, np.uint8)
    for c, name in enumerate(COLUMNS):
        _put(grid, name, (LABEL_W + c * tw + 8, 24), scale=0.55)
    d = HEADER_H - 6
    x0 = LABEL_W + 3 * tw + tw - d - 4
    grid[3 : 3 + d, x0 : x0 + d] = wheel_legend(d)
    for r, row in enumerate(rows):
        y = HEADER_H + r * th
        for c, panel in enumerate(sample_panels(row["sample"], mean, std, stuff=stuff)):
            interp = cv2.INTER_AREA if panel.shape[1] > tw else cv2.INTER_NEAREST
            grid[y : y + th, LABEL_W + c * tw : LABEL_W + (c + 1) * tw] = cv2.resize(
                panel, (tw, th), interpolation=interp
            )
        for k, line in enumerate(row["label"]):
            _put(grid, line, (6, y + 20 + 18 * k))
        grid[y, :] = 64  # a thin line between rows
    present = set().union(*(np.unique(row["sample"]["semantic"]).tolist() for row in rows)) if rows else None
    _class_key(grid, key_entries(class_names, stuff, present))  # the classes shown: Cityscapes' 19 do not fit
    return grid
