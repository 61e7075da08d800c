"""What the build does to an image file's bytes so that every decoder sees the same pixel grid.

The cache stores an image's encoded bytes, and three decoders read them: OpenCV (``open_cache``, verify,
CpuLoader), DALI's CPU codecs and DALI's GPU codecs (Loader). They agree on plain files, but not on everything
a data set holds, so the build normalises a few containers before it stores them (each normalisation is
recorded in the manifest) and refuses what it cannot make agree:

================  ==================================================================================
input             what the build stores
================  ==================================================================================
JPEG + trailing   the JPEG up to its end-of-image marker (found by walking the marker structure, so a
data              "motion photo"'s appended video, which may hold FF DA, is not taken for a scan); a
                  JPEG without that marker is refused as truncated
================  ==================================================================================

All functions are pure (bytes in, bytes or numbers out) and never raise on malformed input: a parser that
cannot make sense of a structure says so (``None`` or a problem string), and the decoder has the last word.
"""

from __future__ import annotations

import re

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
