"""Image files as real data sets hold them, made with Pillow: every format and variant the build accepts.

    pixels = pattern(40, 56)                        # uint8 (H, W, 3): smooth, no symmetry (a flip shows)
    data = encode(pixels, "TIFF", exif=exif(6))     # bytes of a TIFF whose Orientation tag is 6
    data = jpeg(pixels) + MOTION_PHOTO_VIDEO        # a phone's "motion photo"

Each variant is a plain function of its pixels, so a test states what it expects: the stored grid, converted
to RGB the way the format defines it.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# what a phone appends to a motion photo: an MP4 whose bytes hold FF DA (a JPEG "start of scan") and no FF D9
MOTION_PHOTO_VIDEO = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00\x00\x01\x00mdat\xff\xda\x12\x34" * 8


def pattern(height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) RGB: red grows to the right (and a little upwards), green downwards (and a little to the
    right), blue is a blob near the top-left corner.

    Smooth (lossy codecs keep it within a few levels) and without symmetry, in colour and in grey: the grid
    flipped either way or turned by 180 degrees correlates with it below 0.35.
    """
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    x, y = cols / max(width - 1, 1), rows / max(height - 1, 1)
    red = 20 + 215 * (0.8 * x + 0.2 * (1 - y))
    green = 30 + 200 * (0.3 * x + 0.7 * y)
    blob = np.exp(-((rows - height / 4) ** 2 + (cols - width / 5) ** 2) / (2 * (min(height, width) / 4) ** 2))
    blue = 40 + 200 * blob
    return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


def exif(orientation: int) -> Image.Exif:
    """An EXIF block holding only an Orientation tag (1..8)."""
    block = Image.Exif()
    block[0x0112] = orientation
    return block


def encode(image: np.ndarray | Image.Image, fmt: str, **options) -> bytes:
    """The bytes Pillow writes for ``image`` (an RGB array or a PIL image of any mode) in format ``fmt``."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def jpeg(pixels: np.ndarray, **options) -> bytes:
    return encode(pixels, "JPEG", quality=95, **options)


def jpeg_declaring(height: int, width: int) -> bytes:
    """A 16 x 16 JPEG whose frame header (SOF0) is patched to declare ``height`` x ``width``: a few hundred bytes
    that a decoder turns into height · width · 3 bytes of grey (libjpeg fills what the data does not cover)."""
    data = bytearray(jpeg(np.full((16, 16, 3), 90, np.uint8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def gray16_big_endian(values: np.ndarray) -> Image.Image:
    """A 16-bit grey image (values: (H, W) integers) in mode I;16B, the mode Pillow writes as a big-endian TIFF."""
    return Image.frombytes("I;16B", values.shape[::-1], np.asarray(values).astype(">u2").tobytes())


def odd_lossless_webp(pixels: np.ndarray, **options) -> tuple[np.ndarray, bytes]:
    """A lossless WebP whose VP8L chunk has an odd length (a RIFF pad byte follows it), and its pixels.

    The length depends on the pixels; the first pixel's red value is changed until it is odd (one try in two).
    With ``exif=...`` the EXIF chunk then follows the pad byte: the file DALI's WebP parser failed on.
    """
    for value in range(256):
        changed = pixels.copy()
        changed[0, 0, 0] = value
        data = encode(changed, "WEBP", lossless=True, **options)
        size = int.from_bytes(data[data.index(b"VP8L") + 4 :][:4], "little")
        if size % 2:
            return changed, data
    raise AssertionError("no first-pixel value gives an odd-length VP8L chunk")


def pil_rgb(data: bytes) -> np.ndarray:
    """What Pillow decodes from ``data``, converted to RGB (it applies no EXIF orientation to JPEG or WebP)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
