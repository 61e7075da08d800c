"""What the build does to an image file's bytes so that every decoder sees the same pixel grid.

The cache stores an image's encoded bytes, and three decoders read them: OpenCV (``open_cache``, verify,
CpuLoader), DALI's CPU codecs and DALI's GPU codecs (Loader). They agree on plain JPEG, PNG, BMP and WebP
files, but not on everything a data set holds, so the build normalises a few containers before it stores them
(each normalisation is recorded in the manifest) and refuses what it cannot make agree:

================  ==================================================================================
input             what the build stores
================  ==================================================================================
JPEG + trailing   the JPEG up to its end-of-image marker (found by walking the marker structure, so a
data              "motion photo"'s appended video, which may hold FF DA, is not taken for a scan); a
                  JPEG without that marker is refused as truncated
TIFF / BigTIFF    a PNG of the pixels OpenCV decodes from the *stored* grid (the Orientation tag set to 1
                  in a copy of the bytes first): OpenCV applies the tag even with IMREAD_IGNORE_ORIENTATION
                  and DALI never does, and TIFF variants decode differently in each (alpha: OpenCV
                  premultiplies the colour by it, DALI drops it; 16-bit and palette TIFFs round
                  differently; on the GPU DALI may use nvTIFF)
WebP with         the same VP8/VP8L (and ALPH) chunks in a RIFF container without the metadata chunks
metadata          (EXIF, XMP, ICCP, unknown): DALI's WebP parser fails on a metadata chunk that follows an
                  odd-length image chunk; an animated WebP is refused
================  ==================================================================================

Orientation convention (`exif_orientation` in the cache config): an annotation is on the picture *as
displayed*, its orientation tag applied (EXIF in JPEG, PNG, WebP; IFD0 in TIFF), as OpenCV's ``imread``, labelme
and CVAT show it. With ``apply`` (the default) the build stores the displayed picture with orientation 1
(`apply_orientation`: the stored grid turned or flipped as the tag says, re-encoded, listed as normalised);
with ``ignore`` it keeps the stored grid, for data sets annotated on it. Either way the stored pixels are the
ones the annotations address, so no decoder applies a tag at load.

All functions are pure (bytes in, bytes or numbers out). The container parsers never raise on malformed input:
one that cannot make sense of a structure says so (``None`` or a problem string), and the decoder has the last
word. `image_header_size` is the exception: it reads the size a decoder will allocate, before anything
decodes, and raises `ImageError` when the header is not there to read.
"""

from __future__ import annotations

import struct

import numpy as np

from fastload.cache.jpeg import jpeg_exif, jpeg_size
from fastload.errors import ImageError

# --------------------------------------------------------------------------------------------------- TIFF

ORIENTATION_TAG = 0x0112
_WIDTH_TAG, _LENGTH_TAG = 0x0100, 0x0101  # ImageWidth, ImageLength
_KIND_FORMATS = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8 (BigTIFF)


def _tiff_entries(tiff: bytes, tags: tuple[int, ...]) -> dict[int, tuple[int, int, str]]:
    """``{tag: (value, offset of the value, struct format)}`` of IFD0's single-valued integer entries among
    ``tags`` (TIFF or BigTIFF, either byte order); tags that are absent or of another shape are left out."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return {}
    magic = struct.unpack_from(order + "H", tiff, 2)[0]
    if magic == 42:
        ifd = struct.unpack_from(order + "I", tiff, 4)[0]
        count_fmt, entry_size, head = "H", 12, 2
        value_at, count_of = 8, lambda e: struct.unpack_from(order + "I", tiff, e + 4)[0]
    elif magic == 43 and len(tiff) >= 16:
        ifd = struct.unpack_from(order + "Q", tiff, 8)[0]
        count_fmt, entry_size, head = "Q", 20, 8
        value_at, count_of = 12, lambda e: struct.unpack_from(order + "Q", tiff, e + 4)[0]
    else:
        return {}
    if ifd + head > len(tiff):
        return {}
    found = {}
    entries = struct.unpack_from(order + count_fmt, tiff, ifd)[0]
    for k in range(min(entries, (len(tiff) - ifd - head) // entry_size)):
        entry = ifd + head + k * entry_size
        tag, kind = struct.unpack_from(order + "HH", tiff, entry)
        if tag in tags and tag not in found and kind in _KIND_FORMATS and count_of(entry) == 1:
            fmt = order + _KIND_FORMATS[kind]
            if struct.calcsize(fmt) <= entry_size - value_at:  # a LONG8 only fits a BigTIFF entry
                found[tag] = (struct.unpack_from(fmt, tiff, entry + value_at)[0], entry + value_at, fmt)
    return found


def _tiff_orientation_entry(tiff: bytes) -> tuple[int, int, str] | None:
    """``(value, offset of the value, struct format)`` of IFD0's Orientation entry (TIFF or BigTIFF), or None."""
    entry = _tiff_entries(tiff, (ORIENTATION_TAG,)).get(ORIENTATION_TAG)
    return entry if entry is not None and entry[2][1] in "HI" else None


def tiff_orientation(tiff: bytes) -> int | None:
    """The Orientation (1..8) in IFD0 of a TIFF or BigTIFF structure (a TIFF file, or an EXIF payload), or None."""
    entry = _tiff_orientation_entry(tiff)
    return entry[0] if entry is not None else None


def tiff_with_orientation_1(tiff: bytes) -> bytes:
    """The same TIFF with IFD0's Orientation entry set to 1 (a byte patch; pixel data untouched).

    OpenCV's TIFF decoder applies the tag even with ``IMREAD_IGNORE_ORIENTATION``; with the tag at 1 it
    decodes the stored grid, as DALI does.
    """
    entry = _tiff_orientation_entry(tiff)
    if entry is None or entry[0] == 1:
        return tiff
    _, offset, fmt = entry
    patched = bytearray(tiff)
    struct.pack_into(fmt, patched, offset, 1)
    return bytes(patched)


# --------------------------------------------------------------------------------------------------- WebP

_WEBP_IMAGE = (b"VP8 ", b"VP8L", b"ALPH")  # the chunks that hold pixels (ALPH: a lossy image's alpha)
_VP8X_ALPHA = 0x10


def webp_chunks(data: bytes) -> tuple[list[tuple[bytes, memoryview]], int, str | None]:
    """The RIFF chunks of a WebP file: ``([(fourcc, payload), ...], bytes after the container, problem)``; each
    payload a view into ``data`` (the image chunk is most of the file: every read checks its header, copying
    nothing)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return [], 0, "not a WebP file (no RIFF/WEBP header)"
    end = 8 + int.from_bytes(data[4:8], "little")
    if end > len(data):
        return [], 0, f"WebP is truncated (its RIFF header says {end} bytes, the file has {len(data)})"
    chunks, pos, view = [], 12, memoryview(data)
    while pos + 8 <= end:
        fourcc, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if pos + 8 + size > end:
            return [], 0, f"WebP is truncated (chunk {fourcc.decode('latin-1')!r} runs past the end)"
        chunks.append((fourcc, view[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return chunks, len(data) - end, None


def _chunk(fourcc: bytes, payload: bytes) -> bytes:
    return fourcc + len(payload).to_bytes(4, "little") + payload + b"\0" * (len(payload) & 1)


def webp_without_metadata(data: bytes) -> tuple[bytes, str | None]:
    """A WebP with only its image chunks (VP8X, ALPH, VP8/VP8L, in that order), and what was removed.

    Returns the bytes unchanged and ``None`` when there is nothing to remove. The image chunks' payloads are
    copied as they are; VP8X keeps its canvas size and only its alpha flag (the ICC/EXIF/XMP flags would
    announce chunks that are gone); an image without ALPH needs no VP8X and is written in the simple format.
    The caller checks `webp_chunks`' problem and refuses animations first.
    """
    chunks, trailing, problem = webp_chunks(data)
    if problem:
        return data, None
    dropped = [fourcc.decode("latin-1").strip() for fourcc, _ in chunks if fourcc != b"VP8X" and fourcc not in _WEBP_IMAGE]
    if not dropped and not trailing:
        return data, None
    image = [(f, p) for f, p in chunks if f in _WEBP_IMAGE]
    body = b""
    vp8x = next((p for f, p in chunks if f == b"VP8X"), None)
    if vp8x is not None and any(f == b"ALPH" for f, _ in image):
        body += _chunk(b"VP8X", bytes([vp8x[0] & _VP8X_ALPHA]) + vp8x[1:])
    body += b"".join(_chunk(f, p) for f, p in sorted(image, key=lambda fp: fp[0] != b"ALPH"))
    out = b"RIFF" + (4 + len(body)).to_bytes(4, "little") + b"WEBP" + body
    what = []
    if dropped:
        what.append(f"removed the metadata chunk(s) {', '.join(dropped)} from the WebP container")
    if trailing:
        what.append(f"dropped {trailing} bytes after the WebP container")
    return out, "; ".join(what) + " (image data unchanged)"


def webp_animated(data: bytes) -> bool:
    chunks, _, _ = webp_chunks(data)
    return any(f in (b"ANIM", b"ANMF") for f, _ in chunks)


def webp_exif(data: bytes) -> bytes | None:
    chunks, _, _ = webp_chunks(data)
    view = next((p for f, p in chunks if f == b"EXIF"), None)
    payload = None if view is None else bytes(view)
    if payload is not None and payload.startswith(b"Exif\0\0"):  # some writers keep the JPEG prefix
        payload = payload[6:]
    return payload


# --------------------------------------------------------------------------------------------------- PNG


def png_exif(data: bytes) -> bytes | None:
    """The payload of a PNG's ``eXIf`` chunk (a TIFF structure), or None."""
    pos = 8
    while pos + 8 <= len(data):
        size, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind == b"eXIf":
            return data[pos + 8 : pos + 8 + size]
        if kind in (b"IDAT", b"IEND"):
            return None
        pos += 12 + size
    return None


# --------------------------------------------------------------------------------------------------- all


def orientation(data: bytes, fmt: str) -> int | None:
    """The orientation tag (1..8) an image file carries, or None: EXIF in JPEG / PNG / WebP, IFD0 in TIFF.

    A value outside 1..8 is no orientation (as OpenCV and Pillow treat it).
    """
    tiff = {"jpg": jpeg_exif, "png": png_exif, "webp": webp_exif, "tif": lambda d: d}.get(fmt, lambda d: None)(data)
    value = tiff_orientation(tiff) if tiff else None
    return value if value in range(1, 9) else None


def transposes(value: int | None) -> bool:
    """Whether an orientation displays the image with height and width swapped (5..8: a quarter turn)."""
    return value in (5, 6, 7, 8)


# what each orientation does to the stored grid to display it (the EXIF / TIFF 6.0 definitions)
ORIENTATION_NAMES = {
    2: "flipped left-right",
    3: "turned 180 degrees",
    4: "flipped upside down",
    5: "transposed (flipped left-right, then turned 90 degrees counter-clockwise)",
    6: "turned 90 degrees clockwise",
    7: "transversed (flipped left-right, then turned 90 degrees clockwise)",
    8: "turned 90 degrees counter-clockwise",
}


def apply_orientation(pixels: np.ndarray, value: int | None) -> np.ndarray:
    """The displayed picture: the stored grid ``pixels`` (H, W, ...) flipped or turned as orientation ``value``
    says (1 or None: unchanged; 5..8 give (W, H, ...)). A view, not a copy; exact (a permutation of pixels).
    """
    if value in (None, 1):
        return pixels
    if value not in ORIENTATION_NAMES:
        raise ValueError(f"orientation must be 1..8 or None, got {value!r}")
    if value == 2:
        return pixels[:, ::-1]
    if value == 3:
        return pixels[::-1, ::-1]
    if value == 4:
        return pixels[::-1]
    turned = pixels.swapaxes(0, 1)  # 5: the transpose; the others are it flipped
    return {5: turned, 6: turned[:, ::-1], 7: turned[::-1, ::-1], 8: turned[::-1]}[value]


def displayed_size(hw: tuple[int, int], value: int | None) -> tuple[int, int]:
    """``(H, W)`` of the picture an image of stored size ``hw`` is displayed as under orientation ``value``."""
    return (hw[1], hw[0]) if transposes(value) else (hw[0], hw[1])


# --------------------------------------------------------------------------------------------------- sizes

def image_header_size(data: bytes) -> tuple[int, int]:
    """``(height, width)`` of the stored grid as the image's header declares it, without decoding.

    What a decoder allocates from: a JPEG's frame header (SOF, the first before the first scan; the segments
    before it are skipped by their lengths, so a thumbnail inside EXIF is not taken for it), a PNG's IHDR, a
    WebP's VP8 / VP8L frame header (which must agree with a VP8X canvas), a BMP's info header, a TIFF's IFD0
    ImageWidth and ImageLength. Orientation tags are not applied here (see `displayed_size`).

    Raises
    ------
    ImageError
        When the format is unknown or its header is missing, cut short or declares an empty image.
    """
    head = data[:12]
    if head[:3] == b"\xff\xd8\xff":
        return _checked_size("JPEG frame header", *jpeg_size(data))
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageError("PNG has no IHDR chunk first")
        return _checked_size("PNG IHDR", *struct.unpack_from(">II", data, 16)[::-1])
    if head[:2] == b"BM":
        return _bmp_size(data)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(data)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        entries = _tiff_entries(data, (_WIDTH_TAG, _LENGTH_TAG))
        if len(entries) != 2:
            raise ImageError("TIFF has no single ImageWidth and ImageLength in its first IFD")
        return _checked_size("TIFF IFD0", entries[_LENGTH_TAG][0], entries[_WIDTH_TAG][0])
    raise ImageError(f"not a JPEG, PNG, BMP, TIFF or WebP image (starts with {data[:8]!r})")


def _checked_size(where: str, height: int, width: int) -> tuple[int, int]:
    if height < 1 or width < 1:
        raise ImageError(f"{where} declares an empty image ({height} x {width})")
    return int(height), int(width)


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 18:
        raise ImageError("BMP is cut short before its info header")
    info = struct.unpack_from("<I", data, 14)[0]
    if info == 12 and len(data) >= 22:  # BITMAPCOREHEADER: unsigned 16-bit sizes
        width, height = struct.unpack_from("<HH", data, 18)
    elif info >= 16 and len(data) >= 26:  # BITMAPINFOHEADER and later: signed, a negative height is top-down
        width, height = struct.unpack_from("<ii", data, 18)
        height = abs(height)
    else:
        raise ImageError(f"BMP info header of {info} bytes is unknown or cut short")
    return _checked_size("BMP info header", height, width)


def _webp_size(data: bytes) -> tuple[int, int]:
    chunks, _, problem = webp_chunks(data)
    if problem:
        raise ImageError(problem)
    if any(f in (b"ANIM", b"ANMF") for f, _ in chunks):
        raise ImageError("animated WebP (a cache image is one still picture)")
    frame = None
    for fourcc, payload in chunks:
        if fourcc == b"VP8 " and len(payload) >= 10 and payload[3:6] == b"\x9d\x01\x2a":
            width, height = struct.unpack_from("<HH", payload, 6)
            frame = (height & 0x3FFF, width & 0x3FFF)  # the top 2 bits are an upscaling hint decoders ignore
        elif fourcc == b"VP8L" and len(payload) >= 5 and payload[0] == 0x2F:
            bits = struct.unpack_from("<I", payload, 1)[0]
            frame = (((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1)
        else:
            continue
        break
    if frame is None:
        raise ImageError("WebP has no VP8 or VP8L frame header")
    vp8x = next((p for f, p in chunks if f == b"VP8X"), None)
    if vp8x is not None:
        if len(vp8x) < 10:
            raise ImageError("WebP VP8X chunk is cut short")
        canvas = (int.from_bytes(vp8x[7:10], "little") + 1, int.from_bytes(vp8x[4:7], "little") + 1)
        if canvas != frame:
            raise ImageError(f"WebP canvas is {canvas[0]} x {canvas[1]}, its frame {frame[0]} x {frame[1]}")
    return _checked_size("WebP frame header", *frame)
