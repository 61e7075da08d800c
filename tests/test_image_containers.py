"""The container parsers of `fastload.cache.images`: pure functions on bytes, checked against what Pillow and
OpenCV write and read. What the build does with them is in tests/test_cache_images.py."""

from __future__ import annotations

import io
import re
import struct

import cv2
import numpy as np
import pytest
from imagefactory import MOTION_PHOTO_VIDEO, encode, exif, gray16_big_endian, jpeg, pattern, pil_rgb
from PIL import Image, ImageOps

from fastload.cache import images
from fastload.cache.format import truncation_problem
from fastload.cache.jpeg import jpeg_end
from fastload.errors import ImageError

PIXELS = pattern(40, 56)


def opencv_rgb(data: bytes) -> np.ndarray:
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------------------------- JPEG


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(jpeg(PIXELS), id="baseline"),
        pytest.param(jpeg(PIXELS, progressive=True), id="progressive"),  # several scans, tables between them
        pytest.param(jpeg(PIXELS, exif=exif(6)), id="exif"),
        pytest.param(cv2.imencode(".jpg", PIXELS, [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1].tobytes(), id="restarts"),
        pytest.param(jpeg(np.asarray(Image.fromarray(PIXELS).convert("L"))), id="gray"),
    ],
)
def test_jpeg_end_is_the_end_of_image_marker(data):
    assert data.endswith(b"\xff\xd9")
    assert jpeg_end(data) == (len(data), None)
    for trailer in (b"\0" * 100, MOTION_PHOTO_VIDEO, b"\xff\xd8\xff\xda\x00\x02\xff\xd9"):
        assert jpeg_end(data + trailer) == (len(data), None)


def test_motion_photo_is_not_taken_for_a_truncated_jpeg():
    # the old check took the last FF DA of the whole file for the last scan, and found no FF D9 after it
    data = jpeg(PIXELS) + MOTION_PHOTO_VIDEO
    assert data.rfind(b"\xff\xda") > len(data) - len(MOTION_PHOTO_VIDEO)
    assert truncation_problem(data, "jpg") is None


def test_markers_inside_a_segment_are_skipped_by_its_length():
    # an APP1 segment (EXIF with a thumbnail, say) may hold a whole JPEG, FF D9 included
    data = jpeg(PIXELS)
    payload = b"Exif\0\0" + b"\xff\xd8\xff\xda\x00\x02\x00\xff\xd9"
    app1 = b"\xff\xe1" + (2 + len(payload)).to_bytes(2, "big") + payload
    with_app1 = data[:2] + app1 + data[2:]
    assert jpeg_end(with_app1) == (len(with_app1), None)
    assert np.array_equal(opencv_rgb(with_app1), opencv_rgb(data))


@pytest.mark.parametrize("cut", [0.2, 0.5, 0.99])
def test_a_jpeg_cut_anywhere_is_truncated(cut):
    data = jpeg(PIXELS)
    end, problem = jpeg_end(data[: int(len(data) * cut)])
    assert end is None and problem.startswith("JPEG is truncated")
    assert jpeg_end(data[:-2])[1] == "JPEG is truncated (no end-of-image marker after the last scan)"


def test_a_jpeg_without_a_scan_has_no_image_data():
    assert jpeg_end(b"\xff\xd8\xff\xfe\x00\x04hi\xff\xd9") == (None, "JPEG has no image data (no start-of-scan marker)")


# ----------------------------------------------------------------------------------------------- TIFF


def tiff_structure(order: bytes, *, big: bool, orientation: int) -> bytes:
    """A TIFF header and an IFD0 of two entries (ImageWidth, Orientation), as a file or an EXIF block has it."""
    e = "<" if order == b"II" else ">"
    if big:
        head = order + struct.pack(e + "HHHQ", 43, 8, 0, 16)
        entries = struct.pack(e + "HHQQ", 256, 4, 1, 56) + struct.pack(e + "HHQH6x", 0x0112, 3, 1, orientation)
        return head + struct.pack(e + "Q", 2) + entries + struct.pack(e + "Q", 0)
    head = order + struct.pack(e + "HI", 42, 8)
    entries = struct.pack(e + "HHII", 256, 4, 1, 56) + struct.pack(e + "HHIH2x", 0x0112, 3, 1, orientation)
    return head + struct.pack(e + "H", 2) + entries + struct.pack(e + "I", 0)


@pytest.mark.parametrize("order", [b"II", b"MM"])
@pytest.mark.parametrize("big", [False, True], ids=["tiff", "bigtiff"])
def test_tiff_orientation_is_read_and_set_to_1_by_a_two_byte_patch(order, big):
    data = tiff_structure(order, big=big, orientation=6)
    assert images.tiff_orientation(data) == 6
    patched = images.tiff_with_orientation_1(data)
    assert images.tiff_orientation(patched) == 1
    changed = [k for k, (a, b) in enumerate(zip(data, patched, strict=True)) if a != b]
    assert len(changed) == 1  # 6 → 1 in one byte of the SHORT value; nothing else moves
    assert images.tiff_with_orientation_1(patched) == patched


def test_tiff_orientation_of_files_pillow_writes():
    little = encode(PIXELS, "TIFF", exif=exif(3))
    big_endian = encode(gray16_big_endian(PIXELS[..., 0].astype(np.uint16) * 257), "TIFF", exif=exif(8))
    bigtiff = encode(PIXELS, "TIFF", exif=exif(6), big_tiff=True)
    assert (little[:2], big_endian[:2], bigtiff[:4]) == (b"II", b"MM", b"II+\0")
    assert [images.orientation(d, "tif") for d in (little, big_endian, bigtiff)] == [3, 8, 6]
    assert images.orientation(encode(PIXELS, "TIFF"), "tif") is None


def test_opencv_applies_the_tiff_orientation_unless_it_is_1():
    # why the build patches the tag: IMREAD_IGNORE_ORIENTATION does not stop OpenCV's TIFF decoder
    data = encode(PIXELS, "TIFF", exif=exif(6))
    assert opencv_rgb(data).shape == (56, 40, 3)
    assert np.array_equal(opencv_rgb(images.tiff_with_orientation_1(data)), PIXELS)


@pytest.mark.parametrize("garbage", [b"II*\0\xff\xff\xff\xff", b"MM\0*\0\0\0\x08\xff\xff", b"II+\0\x08\0\0\0", b"II*\0"])
def test_tiff_parser_never_raises_on_garbage(garbage):
    assert images.tiff_orientation(garbage) is None
    assert images.tiff_with_orientation_1(garbage) == garbage


# ----------------------------------------------------------------------------------------------- other EXIF


def test_orientation_is_read_from_jpeg_png_and_webp_exif():
    assert images.orientation(jpeg(PIXELS, exif=exif(6)), "jpg") == 6
    assert images.orientation(encode(PIXELS, "PNG", exif=exif(5)), "png") == 5
    assert images.orientation(encode(PIXELS, "WEBP", lossless=True, exif=exif(7)), "webp") == 7
    assert images.orientation(jpeg(PIXELS), "jpg") is None
    assert images.orientation(encode(PIXELS, "BMP"), "bmp") is None
    assert [images.transposes(v) for v in (None, 1, 3, 5, 6, 8)] == [False, False, False, True, True, True]


# ----------------------------------------------------------------------------------------------- WebP


def chunk_names(data: bytes) -> list[bytes]:
    chunks, trailing, problem = images.webp_chunks(data)
    assert problem is None and trailing == 0
    return [fourcc for fourcc, _ in chunks]


@pytest.mark.parametrize(("height", "width"), [(40, 56), (41, 57), (33, 47)])  # image chunks of odd and even length
@pytest.mark.parametrize(
    ("options", "kept"),
    [
        pytest.param({"lossless": True}, [b"VP8L"], id="lossless"),
        pytest.param({"quality": 90}, [b"VP8 "], id="lossy"),
        pytest.param({"quality": 90, "alpha": True}, [b"VP8X", b"ALPH", b"VP8 "], id="lossy-alpha"),
    ],
)
def test_webp_metadata_chunks_are_removed_and_the_image_chunks_copied(height, width, options, kept):
    pixels, options = pattern(height, width), dict(options)
    if options.pop("alpha", False):
        pixels = np.dstack([pixels, np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)])
    data = encode(pixels, "WEBP", exif=exif(6), xmp=b"<x:xmpmeta/>", **options)
    assert {b"EXIF", b"XMP "} <= set(chunk_names(data))
    stripped, what = images.webp_without_metadata(data)
    assert chunk_names(stripped) == kept
    assert what == "removed the metadata chunk(s) EXIF, XMP from the WebP container (image data unchanged)"
    before = dict(images.webp_chunks(data)[0])
    assert all(payload == before[fourcc] for fourcc, payload in images.webp_chunks(stripped)[0] if fourcc != b"VP8X")
    flags = dict(images.webp_chunks(stripped)[0]).get(b"VP8X", b"\x10")[0]
    assert flags == 0x10  # only "has alpha": no ICC/EXIF/XMP flag announces a chunk that is gone
    assert np.array_equal(opencv_rgb(stripped), opencv_rgb(data))


def test_a_webp_without_metadata_is_left_as_it_is():
    data = encode(PIXELS, "WEBP", lossless=True)
    assert images.webp_without_metadata(data) == (data, None)


def test_a_cut_webp_is_truncated():
    data = encode(PIXELS, "WEBP", lossless=True)
    assert truncation_problem(data[:-10], "webp").startswith("WebP is truncated")
    assert truncation_problem(data, "webp") is None


def test_an_animated_webp_is_recognised():
    frames = [Image.fromarray(PIXELS), Image.fromarray(PIXELS[::-1].copy())]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert images.webp_animated(data) and not images.webp_animated(encode(PIXELS, "WEBP"))


def test_bytes_after_the_webp_container_are_dropped():
    data = encode(PIXELS, "WEBP", lossless=True)
    assert images.webp_without_metadata(data + b"\0" * 7) == (data, "dropped 7 bytes after the WebP container (image data unchanged)")


# ----------------------------------------------------------------------------------------------- sizes


def _with_thumbnail(data: bytes) -> bytes:
    """The JPEG with an APP1 segment holding a whole 8 x 8 JPEG (a camera's EXIF thumbnail) before its frame."""
    payload = b"Exif\0\0" + jpeg(np.zeros((8, 8, 3), np.uint8))
    return data[:2] + b"\xff\xe1" + (2 + len(payload)).to_bytes(2, "big") + payload + data[2:]


def _top_down_bmp(pixels: np.ndarray) -> bytes:
    """A BMP whose rows are stored top-down (negative height), which Pillow and OpenCV never write."""
    data = bytearray(encode(pixels, "BMP"))
    height = struct.unpack_from("<i", data, 22)[0]
    stride = (len(data) - struct.unpack_from("<I", data, 10)[0]) // height
    start = struct.unpack_from("<I", data, 10)[0]
    rows = [bytes(data[start + k * stride : start + (k + 1) * stride]) for k in range(height)]
    struct.pack_into("<i", data, 22, -height)
    data[start:] = b"".join(reversed(rows))
    return bytes(data)


SIZED = [
    pytest.param(jpeg(PIXELS), id="jpeg"),
    pytest.param(jpeg(PIXELS, progressive=True), id="jpeg-progressive"),
    pytest.param(_with_thumbnail(jpeg(PIXELS)), id="jpeg-exif-thumbnail"),
    pytest.param(jpeg(np.asarray(Image.fromarray(PIXELS).convert("L"))), id="jpeg-gray"),
    pytest.param(encode(Image.fromarray(PIXELS).convert("CMYK"), "JPEG"), id="jpeg-cmyk"),
    pytest.param(encode(PIXELS, "PNG"), id="png"),
    pytest.param(encode(Image.fromarray(PIXELS).quantize(16), "PNG"), id="png-palette"),
    pytest.param(encode(PIXELS, "BMP"), id="bmp"),
    pytest.param(_top_down_bmp(PIXELS), id="bmp-top-down"),
    pytest.param(encode(PIXELS, "WEBP", quality=80), id="webp-lossy"),
    pytest.param(encode(PIXELS, "WEBP", lossless=True), id="webp-lossless"),
    pytest.param(encode(np.dstack([PIXELS, PIXELS[..., 0]]), "WEBP", quality=80), id="webp-vp8x-alpha"),
    pytest.param(encode(PIXELS, "WEBP", lossless=True, exif=exif(6)), id="webp-vp8x-exif"),
    pytest.param(encode(PIXELS, "TIFF"), id="tiff"),
    pytest.param(encode(gray16_big_endian(PIXELS[..., 0].astype(np.uint16)), "TIFF"), id="tiff-big-endian"),
    pytest.param(encode(PIXELS, "TIFF", big_tiff=True), id="bigtiff"),
]


@pytest.mark.parametrize("data", SIZED)
def test_image_header_size_is_the_size_decoders_allocate(data):
    assert images.image_header_size(data) == (40, 56)
    decoded = cv2.imdecode(np.frombuffer(images.tiff_with_orientation_1(data), np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert decoded.shape[:2] == (40, 56)


def test_image_header_size_reads_what_a_bomb_declares():
    data = bytearray(jpeg(PIXELS))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 30000, 30000)
    assert images.image_header_size(bytes(data)) == (30000, 30000)  # a few KB that decode to 2.7 GB


def _without_sof(data: bytes) -> bytes:
    sof = data.index(b"\xff\xc0")
    return data[:sof] + data[sof + 2 + int.from_bytes(data[sof + 2 : sof + 4], "big") :]


def _canvas(data: bytes, width: int) -> bytes:
    patched = bytearray(data)
    vp8x = patched.index(b"VP8X") + 8
    patched[vp8x + 4 : vp8x + 7] = (width - 1).to_bytes(3, "little")
    return bytes(patched)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param(_without_sof(jpeg(PIXELS)), "JPEG has no frame header (SOF) before its first scan", id="jpeg-no-sof"),
        pytest.param(jpeg(PIXELS)[:10], "JPEG ends, or its marker structure breaks", id="jpeg-cut"),
        pytest.param(b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x00\x10", "declares height 0", id="jpeg-dnl-height"),
        pytest.param(encode(PIXELS, "PNG")[:20], "PNG has no IHDR chunk first", id="png-cut"),
        pytest.param(encode(PIXELS, "BMP")[:20], "BMP info header of 40 bytes is unknown or cut short", id="bmp-cut"),
        pytest.param(_canvas(encode(PIXELS, "WEBP", lossless=True, exif=exif(6)), 99), "WebP canvas is 40 x 99, its frame 40 x 56", id="webp-canvas"),
        pytest.param(b"RIFF\x04\x00\x00\x00WEBP", "WebP has no VP8 or VP8L frame header", id="webp-empty"),
        pytest.param(tiff_structure(b"II", big=False, orientation=1), "TIFF has no single ImageWidth and ImageLength", id="tiff-no-length"),
        pytest.param(b"GIF89a\x01\x00\x01\x00", "not a JPEG, PNG, BMP, TIFF or WebP image", id="gif"),
    ],
)
def test_image_header_size_names_a_header_it_cannot_read(data, problem):
    with pytest.raises(ImageError, match=re.escape(problem)):
        images.image_header_size(data)


# ----------------------------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("tag", range(1, 9))
def test_apply_orientation_is_what_opencv_and_pillow_display(tag):
    data = jpeg(PIXELS, exif=exif(tag))
    stored = opencv_rgb(data)
    shown = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(images.apply_orientation(stored, tag), shown)
    pillow = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(images.apply_orientation(pil_rgb(data), tag), pillow)
    assert images.displayed_size((40, 56), tag) == shown.shape[:2]
