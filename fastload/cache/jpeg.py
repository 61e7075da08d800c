"""A JPEG's marker structure, walked without decoding: where the image ends, its EXIF, its frame size.

Pure functions of the bytes (`fastload.cache.images` builds the container rules of every format on them).
"""

from __future__ import annotations

import re
import struct

from fastload.errors import ImageError

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


_JPEG_SOF = frozenset([*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)])


def jpeg_size(data: bytes) -> tuple[int, int]:
    """``(height, width)`` from a JPEG's frame header (SOF): the first one, before the first scan, reached by
    walking the segments by their lengths (a thumbnail inside EXIF is not taken for it). Raises ImageError."""
    pos, n = 2, len(data)
    while True:
        while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        if pos + 4 > n or data[pos] != 0xFF:
            raise ImageError("JPEG ends, or its marker structure breaks, before its frame header (SOF)")
        marker = data[pos + 1]
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xDA, 0xD9):
            raise ImageError("JPEG has no frame header (SOF) before its first scan")
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _JPEG_SOF:
            if length < 8 or pos + 9 > n:
                raise ImageError("JPEG frame header (SOF) is cut short")
            height, width = struct.unpack_from(">HH", data, pos + 5)
            if height == 0:
                raise ImageError("JPEG frame header declares height 0 (a DNL marker height, which decoders refuse)")
            return int(height), int(width)
        if length < 2:
            raise ImageError(f"JPEG segment FF{marker:02X} has an invalid length {length}")
        pos += 2 + length
