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

Orientation convention: COCO coordinates address the stored pixel grid, so no decoder applies an orientation
tag (EXIF in JPEG, PNG, WebP; IFD0 in TIFF). `orientation` reads the tag only to explain a size mismatch: an
image whose COCO size is its *displayed* (turned) size.

All functions are pure (bytes in, bytes or numbers out) and never raise on malformed input: a parser that
cannot make sense of a structure says so (``None`` or a problem string), and the decoder has the last word.
"""

from __future__ import annotations

import re
import struct

# --------------------------------------------------------------------------------------------------- JPEG

_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])  # TEM, RST0..7, SOI: markers without a length
# inside entropy-coded data FF 00 is a stuffed FF and FF D0..D7 a restart marker; FF FF is fill before a
# marker; any other FF xx is the marker that ends the scan
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_end(data: bytes) -> tuple[int | None, str | None]:
    """Where a JPEG image ends: ``(offset just past its end-of-image marker, None)``, or ``(None, problem)``.

    Walks the marker structure from SOI: marker segments by their lengths, each scan's entropy-coded data up
    to the next marker that is not a stuffed byte or a restart marker, more segments and scans (progressive
    JPEGs) until EOI. Bytes after EOI are not part of the image (a phone's appended video, padding).
    Stray bytes between segments are skipped, as libjpeg does.
    """
    n = len(data)
    if data[:2] != b"\xff\xd8":
        return None, "not a JPEG (no start-of-image marker)"
    pos, scans = 2, 0
    while True:
        pos = data.find(b"\xff", pos)
        while 0 <= pos < n - 1 and data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        if pos < 0 or pos >= n - 1:
            return None, _jpeg_cut(scans)
        marker = data[pos + 1]
        pos += 2
        if marker == 0xD9:
            return (pos, None) if scans else (None, "JPEG has no image data (no start-of-scan marker)")
        if marker in _STANDALONE:
            continue
        if pos + 2 > n:
            return None, _jpeg_cut(scans)
        end = pos + int.from_bytes(data[pos : pos + 2], "big")
        if end > n:
            return None, _jpeg_cut(scans)
        pos = end
        if marker == 0xDA:
            scans += 1
            found = _SCAN_END.search(data, pos)
            if found is None:
                return None, _jpeg_cut(scans)
            pos = found.start()


def _jpeg_cut(scans: int) -> str:
    if scans:
        return "JPEG is truncated (no end-of-image marker after the last scan)"
    return "JPEG is truncated (cut before its image data)"


def jpeg_exif(data: bytes) -> bytes | None:
    """The TIFF structure inside a JPEG's APP1 ``Exif`` segment (before the first scan), or None."""
    pos, n = 2, len(data)
    while pos + 4 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA or marker == 0xD9:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\0\0":
            return data[pos + 10 : pos + 2 + length]
        pos += 2 + length
    return None


# --------------------------------------------------------------------------------------------------- TIFF

ORIENTATION_TAG = 0x0112
_SHORT, _LONG = 3, 4


def _tiff_orientation_entry(tiff: bytes) -> tuple[int, int, str] | None:
    """``(value, offset of the value, struct format)`` of IFD0's Orientation entry (TIFF or BigTIFF), or None."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
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
        return None
    if ifd + head > len(tiff):
        return None
    entries = struct.unpack_from(order + count_fmt, tiff, ifd)[0]
    for k in range(min(entries, (len(tiff) - ifd - head) // entry_size)):
        entry = ifd + head + k * entry_size
        tag, kind = struct.unpack_from(order + "HH", tiff, entry)
        if tag == ORIENTATION_TAG and kind in (_SHORT, _LONG) and count_of(entry) == 1:
            fmt = order + ("H" if kind == _SHORT else "I")
            return struct.unpack_from(fmt, tiff, entry + value_at)[0], entry + value_at, fmt
    return None


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


def webp_chunks(data: bytes) -> tuple[list[tuple[bytes, bytes]], int, str | None]:
    """The RIFF chunks of a WebP file: ``([(fourcc, payload), ...], bytes after the container, problem)``."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return [], 0, "not a WebP file (no RIFF/WEBP header)"
    end = 8 + int.from_bytes(data[4:8], "little")
    if end > len(data):
        return [], 0, f"WebP is truncated (its RIFF header says {end} bytes, the file has {len(data)})"
    chunks, pos = [], 12
    while pos + 8 <= end:
        fourcc, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if pos + 8 + size > end:
            return [], 0, f"WebP is truncated (chunk {fourcc.decode('latin-1')!r} runs past the end)"
        chunks.append((fourcc, data[pos + 8 : pos + 8 + size]))
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
    payload = next((p for f, p in chunks if f == b"EXIF"), None)
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

    fastload never applies it (COCO coordinates address the stored grid); it explains size mismatches.
    """
    tiff = {"jpg": jpeg_exif, "png": png_exif, "webp": webp_exif, "tif": lambda d: d}.get(fmt, lambda d: None)(data)
    value = tiff_orientation(tiff) if tiff else None
    return value if value in range(1, 9) else None


def transposes(value: int | None) -> bool:
    """Whether an orientation displays the image with height and width swapped (5..8: a quarter turn)."""
    return value in (5, 6, 7, 8)
