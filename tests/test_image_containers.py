"""The container parsers of `fastload.cache.images`: pure functions on bytes, checked against what Pillow and
OpenCV write and read. What the build does with them is in tests/test_cache_images.py."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from imagefactory import MOTION_PHOTO_VIDEO, exif, jpeg, pattern
from PIL import Image

from fastload.cache import images
from fastload.cache.format import truncation_problem

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
    assert images.jpeg_end(data) == (len(data), None)
    for trailer in (b"\0" * 100, MOTION_PHOTO_VIDEO, b"\xff\xd8\xff\xda\x00\x02\xff\xd9"):
        assert images.jpeg_end(data + trailer) == (len(data), None)


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
    assert images.jpeg_end(with_app1) == (len(with_app1), None)
    assert np.array_equal(opencv_rgb(with_app1), opencv_rgb(data))


@pytest.mark.parametrize("cut", [0.2, 0.5, 0.99])
def test_a_jpeg_cut_anywhere_is_truncated(cut):
    data = jpeg(PIXELS)
    end, problem = images.jpeg_end(data[: int(len(data) * cut)])
    assert end is None and problem.startswith("JPEG is truncated")
    assert images.jpeg_end(data[:-2])[1] == "JPEG is truncated (no end-of-image marker after the last scan)"


def test_a_jpeg_without_a_scan_has_no_image_data():
    assert images.jpeg_end(b"\xff\xd8\xff\xfe\x00\x04hi\xff\xd9") == (None, "JPEG has no image data (no start-of-scan marker)")
