"""The cache's member formats, tar writing, DALI index text and config: pure functions, no cache needed."""

from __future__ import annotations

import io
import tarfile

import cv2
import numpy as np
import pytest

from fastload.cache import format as fmt
from fastload.cache.config import CacheConfig, load_cache_config
from fastload.errors import CacheError, ConfigError


def test_semantic_and_instance_round_trip_exactly():
    rng = np.random.default_rng(0)
    semantic = rng.integers(0, 256, size=(7, 9), dtype=np.uint8)
    instance = rng.integers(0, 65536, size=(7, 9)).astype(np.int32)
    assert np.array_equal(fmt.decode_semantic(fmt.encode_semantic(semantic)), semantic)
    decoded = fmt.decode_instance(fmt.encode_instance(instance))
    assert decoded.dtype == np.int32 and np.array_equal(decoded, instance)


def test_instance_ids_beyond_uint16_are_refused():
    with pytest.raises(CacheError, match="0..65535"):
        fmt.encode_instance(np.array([[70000]], np.int32))


@pytest.mark.parametrize("scale", [1, 8, 64])
def test_offsets_round_trip_within_half_a_step_and_clip_counted(scale):
    rng = np.random.default_rng(1)
    offset = rng.uniform(-300, 300, size=(2, 5, 6)).astype(np.float32)
    offset[0, 0, 0] = 1e6  # beyond the range: clipped, counted once per pixel
    offset[:, 1, 1] = -1e6  # both components of one pixel: still one pixel
    data, clipped = fmt.encode_offset(offset, offset_scale=scale)
    assert clipped == 2
    back = fmt.decode_offset(data, offset_scale=scale)
    assert back.dtype == np.float32 and back.shape == offset.shape
    assert np.array_equal(back, fmt.dequantize_offset(fmt.quantize_offset(offset, scale)[0], scale))
    keep = np.ones(offset.shape[1:], bool)
    keep[0, 0] = keep[1, 1] = False
    assert np.abs(back - offset)[:, keep].max() <= 0.5 / scale + 1e-6
    assert back[0, 0, 0] == pytest.approx(32767 / scale)


def test_offset_png_is_rgb16_with_dy_in_red():
    offset = np.zeros((2, 2, 3), np.float32)
    offset[0] = 1.0  # dy
    offset[1] = -2.0  # dx
    data, _ = fmt.encode_offset(offset, offset_scale=8)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert bgr.dtype == np.uint16 and bgr.shape == (2, 3, 3)
    assert (bgr[..., 2] == 32768 + 8).all()  # red = dy
    assert (bgr[..., 1] == 32768 - 16).all()  # green = dx
    assert (bgr[..., 0] == 0).all()  # blue = 0


def test_heatmap_round_trip_within_half_a_step():
    heat = np.random.default_rng(2).uniform(0, 1, size=(11, 13)).astype(np.float32)
    back = fmt.decode_heatmap(fmt.encode_heatmap(heat))
    assert back.dtype == np.float32 and np.abs(back - heat).max() <= 1 / 510 + 1e-6


def test_decoders_name_the_wrong_kind_of_png():
    with pytest.raises(CacheError, match="expected uint16"):
        fmt.decode_instance(fmt.encode_semantic(np.zeros((2, 2), np.uint8)))
    with pytest.raises(CacheError, match="not a decodable PNG"):
        fmt.decode_semantic(b"not a png")


def test_meta_json_is_canonical_and_accepts_numpy_scalars():
    a = fmt.encode_meta({"b": np.int64(2), "a": [np.float32(0.5)]})
    assert a == b'{"a":[0.5],"b":2}'
    assert fmt.decode_meta(a) == {"a": [0.5], "b": 2}


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0", "jpg"),
        (b"\x89PNG\r\n\x1a\n", "png"),
        (b"BM\x00\x00", "bmp"),
        (b"II*\x00", "tif"),
        (b"RIFF\x00\x00\x00\x00WEBP", "webp"),
        (b"GIF89a", None),
        (b"", None),
    ],
)
def test_sniff_image_format_goes_by_content(head, expected):
    assert fmt.sniff_image_format(head) == expected


def test_truncated_jpeg_is_detected_without_decoding():
    # OpenCV 4.x decodes a cut JPEG with grey rows and only a warning, so the end marker is checked too
    image = np.random.default_rng(3).integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    assert fmt.truncation_problem(data, "jpg") is None
    assert fmt.truncation_problem(data + b"trailing bytes some cameras add", "jpg") is None
    assert "truncated" in fmt.truncation_problem(data[: len(data) * 2 // 3], "jpg")
    png = cv2.imencode(".png", image)[1].tobytes()
    assert fmt.truncation_problem(png, "png") is None
    assert "truncated" in fmt.truncation_problem(png[:-20], "png")


def test_tar_writer_is_deterministic_and_standard():
    def write() -> tuple[bytes, list[int]]:
        buf = io.BytesIO()
        writer = fmt.TarWriter(buf)
        offsets = [writer.add("00000000.jpg", b"x" * 700), writer.add("00000000.json", b"{}")]
        size, sha = writer.finish()
        assert size == len(buf.getvalue())
        return buf.getvalue(), offsets

    data, offsets = write()
    assert write()[0] == data
    assert len(data) % 10240 == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["00000000.jpg", "00000000.json"]
        for m, off in zip(members, offsets, strict=True):
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
            assert m.offset_data == off
        assert not members[0].pax_headers


def test_dali_index_text_format():
    text = fmt.dali_index_text([[("jpg", 512, 10, "00000000.jpg"), ("sem.png", 1536, 4, "00000000.sem.png")]])
    assert text == "v1.2 1\njpg 512 10 00000000.jpg sem.png 1536 4 00000000.sem.png\n"
    with pytest.raises(CacheError):
        fmt.dali_index_text([])


def test_map_shape_rounds_up():
    assert fmt.map_shape(600, 800, 1) == (600, 800)
    assert fmt.map_shape(97, 130, 4) == (25, 33)


def test_shipped_cache_yaml_is_the_defaults(tmp_path):
    from tests.conftest import REPO

    assert load_cache_config(REPO / "configs" / "cache.yaml") == CacheConfig()


def test_cache_config_yaml_is_strict(tmp_path):
    path = tmp_path / "cache.yaml"
    path.write_text("sigma: 4\nstride: 2\n")
    assert load_cache_config(path) == CacheConfig(sigma=4.0, stride=2)
    path.write_text("sigma: 4\nsigmaa: 5\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_cache_config(path)
    path.write_text("stride: 0\n")
    with pytest.raises(ConfigError, match="stride"):
        load_cache_config(path)
    path.write_text("png_compression: 12\n")
    with pytest.raises(ConfigError, match="png_compression"):
        load_cache_config(path)
