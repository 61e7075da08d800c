"""`read_checked_image`: a data set's image file → the bytes a cache stores, checked and normalised.

The build's one look at an image file: it refuses what no loader could read alike (named `ImageError`s, which
the build turns into a failure or a skip), reads the size from the header before anything decodes the file,
and normalises what decoders would read differently (`fastload.cache.images`; docs/design.md "The cache").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fastload.cache import images, jpeg
from fastload.cache.config import CacheConfig
from fastload.cache.format import sniff_image_format, truncation_problem
from fastload.errors import ImageError


@dataclass(frozen=True)
class CheckedImage:
    """An image ready to store: its bytes, the extension of their content, and how the build normalised them.

    normalised : None when ``data`` are the file's bytes unchanged; else what was done, in words (the
        manifest's ``normalised[].what``)
    """

    data: bytes
    fmt: str
    normalised: str | None = None


def read_checked_image(path: Path, height: int, width: int, cfg: CacheConfig) -> CheckedImage:
    """Read an image file, check it fully and normalise what decoders would read differently.

    Checks, in order: the file exists and is not empty, its magic bytes name a supported format, it is not
    truncated (see `truncation_problem`), its header declares at most ``cfg.max_image_pixels`` and the COCO
    ``height`` x ``width`` (as displayed under ``exif_orientation: apply``: a tag 5..8 swaps them) — all
    before anything decodes it — then it decodes completely to the size its header declares. A PNG named
    ``.jpg`` is accepted (decoders go by content) and stored as ``.png``. Normalised
    (`fastload.cache.images`): a JPEG is cut after its end-of-image marker, a WebP loses its metadata chunks,
    a TIFF becomes a PNG of its pixels, and under "apply" an image with an orientation tag other than 1
    becomes its displayed picture (`_displayed`).

    Raises
    ------
    ImageError
        With the reason and the path (the build adds the image id and turns it into a failure or a skip).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"file not found: {path}") from None
    except OSError as exc:
        raise ImageError(f"file unreadable: {path} ({exc.strerror or exc})") from None
    if not data:
        raise ImageError(f"file is empty (0 bytes): {path}")
    fmt = sniff_image_format(data)
    if fmt is None:
        raise ImageError(f"not a JPEG, PNG, BMP, TIFF or WebP file (starts with {data[:8]!r}): {path}")
    problem = truncation_problem(data, fmt)
    if problem:
        raise ImageError(f"{problem}: {path}")
    tag = images.orientation(data, fmt)  # before the container is normalised: a WebP's EXIF chunk goes
    data, normalised = _normalise_container(data, fmt, tag, path)
    try:
        stored = images.image_header_size(data)
    except ImageError as exc:
        raise ImageError(f"{exc}: {path}") from None
    if stored[0] * stored[1] > cfg.max_image_pixels:
        raise ImageError(
            f"its header declares {stored[0]} x {stored[1]} = {stored[0] * stored[1]} pixels, more than "
            f"max_image_pixels ({cfg.max_image_pixels}) in the cache config (raise it there if the image is real): {path}"
        )
    turn = tag if cfg.exif_orientation == "apply" and tag not in (None, 1) else None
    if images.displayed_size(stored, turn) != (height, width):
        raise ImageError(_size_problem(stored, (height, width), tag, cfg.exif_orientation, path))
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if decoded is None:
        raise ImageError(f"{fmt} file does not decode: {path}")
    if decoded.shape[:2] != stored:
        raise ImageError(
            f"decodes to {decoded.shape[0]} x {decoded.shape[1]}, its header declares {stored[0]} x {stored[1]}: {path}"
        )
    if turn is not None:
        return _displayed(decoded, fmt, turn)
    if fmt == "tif":
        # OpenCV's reading of the stored grid (tag set to 1 above), losslessly: every loader decodes a PNG alike
        data, fmt = cv2.imencode(".png", decoded)[1].tobytes(), "png"
    return CheckedImage(data, fmt, normalised)


# an image turned to its displayed orientation is re-encoded: a JPEG as a JPEG at quality 95 without chroma
# subsampling (on the sample photos 1.1x the bytes, PSNR 45-49 dB against the decoded original, and the GPU still
# decodes it with nvJPEG; a PNG would be 4-5x the bytes and decoded on the CPU), any other format losslessly as PNG
_DISPLAYED_JPEG = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]


def _displayed(decoded: np.ndarray, fmt: str, tag: int) -> CheckedImage:
    """The displayed picture of an image with orientation ``tag`` (2..8), re-encoded, and what was done."""
    shown = np.ascontiguousarray(images.apply_orientation(decoded, tag))
    how = f"orientation tag {tag} applied (the stored grid {images.ORIENTATION_NAMES[tag]})"
    if fmt == "jpg":
        return CheckedImage(cv2.imencode(".jpg", shown, _DISPLAYED_JPEG)[1].tobytes(), "jpg", f"{how}; re-encoded as JPEG (quality 95, 4:4:4)")
    data = cv2.imencode(".png", shown)[1].tobytes()
    if fmt == "tif":
        return CheckedImage(data, "png", f"TIFF re-encoded as PNG, losslessly from the pixels OpenCV decodes; its {how}")
    return CheckedImage(data, "png", f"{how}; re-encoded as PNG (lossless)")


def _normalise_container(data: bytes, fmt: str, tag: int | None, path: Path) -> tuple[bytes, str | None]:
    """The bytes to decode and store (before a TIFF's re-encoding), and what was changed, or None."""
    if fmt == "jpg":
        end, _ = jpeg.jpeg_end(data)  # truncation_problem checked that it has one
        if end is not None and end < len(data):
            return data[:end], f"dropped {len(data) - end} bytes after the JPEG's end-of-image marker (appended data)"
    elif fmt == "webp":
        if images.webp_animated(data):
            raise ImageError(f"animated WebP: a COCO image is one still picture; save the annotated frame as PNG: {path}")
        return images.webp_without_metadata(data)
    elif fmt == "tif":
        kept = f"; its Orientation tag {tag} is not applied (exif_orientation: ignore)" if tag not in (None, 1) else ""
        return images.tiff_with_orientation_1(data), f"TIFF re-encoded as PNG, losslessly from the pixels OpenCV decodes{kept}"
    return data, None


def _size_problem(stored: tuple[int, int], coco: tuple[int, int], tag: int | None, rule: str, path: Path) -> str:
    """Why the image's size is not the COCO entry's, with the fix when an orientation tag explains it."""
    shown = images.displayed_size(stored, tag)
    if rule == "apply" and images.transposes(tag):
        text = (
            f"its orientation tag ({tag}) displays it as {shown[0]} x {shown[1]} (H x W), the COCO entry says "
            f"{coco[0]} x {coco[1]}"
        )
        if tuple(coco) == stored:
            text += (
                ", the size of its stored pixel grid; fastload applies orientation tags (exif_orientation: apply: "
                "annotations are on the picture as displayed, as OpenCV's imread, labelme and CVAT show it): if "
                "these annotations address the stored grid, build with `--exif-orientation ignore` "
                "(`exif_orientation: ignore` in the cache config)"
            )
        return f"{text}: {path}"
    text = f"its size {stored[0]} x {stored[1]} (H x W) differs from the COCO entry's {coco[0]} x {coco[1]}"
    if rule == "ignore" and images.transposes(tag) and tuple(coco) == shown:
        text += (
            f", the size its orientation tag ({tag}) displays it at; with `exif_orientation: ignore` annotations "
            "address the stored pixel grid: if these are on the displayed picture, build with "
            "`--exif-orientation apply` (the default)"
        )
    return f"{text}: {path}"
