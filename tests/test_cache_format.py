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
from fastload.labels import MAX_INSTANCES


@pytest.mark.parametrize("shape", [(7, 9), (600, 800), (1, 1), (3000, 5)])
def test_labels_round_trip_exactly(shape):
    rng = np.random.default_rng(0)
    semantic = rng.integers(0, 256, size=shape, dtype=np.uint8)
    instance = rng.integers(0, MAX_INSTANCES + 1, size=shape).astype(np.uint16)
    for kind, array in (("sem", semantic), ("ins", instance)):
        for level in (0, 3):
            back = fmt.decode_label(fmt.encode_label(array, kind=kind, level=level), kind=kind)
            assert back.dtype == fmt.LABEL_DTYPES[kind] and np.array_equal(back, array)


def test_a_label_member_is_bands_of_rows_padded_with_the_fill():
    semantic = np.full((100, 800), 2, np.uint8)  # 800 wide: 40 rows a band (64 KiB of uint16)
    data = fmt.encode_label(semantic, kind="sem", level=3)
    layout = fmt.parse_label(data)
    assert (layout.height, layout.width, layout.rows_per_band) == (100, 800, 40)
    assert layout.band_shape == (40, 800) and layout.padded_height == 120  # 3 bands
    assert (layout.band_offsets % 4 == 0).all(), "bands start 4-byte aligned"
    padded = fmt.decode_label(data, kind="sem", padded=True)
    assert padded.shape == (120, 800)
    assert (padded[100:] == 255).all(), "the padding is what a warp reads outside the image: ignore"
    instance = fmt.decode_label(fmt.encode_label(np.ones((100, 800), np.uint16), kind="ins", level=0), kind="ins", padded=True)
    assert (instance[100:] == 0).all(), "instance padding is background"


def test_each_band_is_a_plain_lz4_block():
    # what fn.decoders.inflate does on the GPU: decompress every band at its offset, stack, reshape
    import lz4.block

    instance = np.arange(90 * 500, dtype=np.uint16).reshape(90, 500) % 1000
    data = fmt.encode_label(instance, kind="ins", level=3)
    layout = fmt.parse_label(data)
    bands = [
        np.frombuffer(lz4.block.decompress(data[o : o + s], uncompressed_size=2 * 500 * layout.rows_per_band), np.uint16)
        for o, s in zip(layout.band_offsets, layout.band_sizes, strict=True)
    ]
    stacked = np.stack(bands).reshape(layout.padded_height, 500)
    assert np.array_equal(stacked[:90], instance)


def test_damaged_label_members_are_named_errors():
    data = fmt.encode_label(np.ones((50, 60), np.uint8), kind="sem", level=3)
    with pytest.raises(CacheError, match="not a fastload LZ4 label"):
        fmt.decode_label(b"XXXX" + data[4:], kind="sem")
    with pytest.raises(CacheError, match="holds uint8, expected uint16"):
        fmt.decode_label(data, kind="ins")
    with pytest.raises(CacheError, match="band table says"):
        fmt.decode_label(data[:-4], kind="sem")
    broken = bytearray(data)
    broken[-8:] = b"\xff" * 8  # inside the last band's LZ4 stream
    with pytest.raises(CacheError, match="semantic member"):
        fmt.decode_label(bytes(broken), kind="sem")
    with pytest.raises(CacheError, match="too short"):
        fmt.parse_label(b"FLZ4")


def test_labels_take_little_room_on_the_real_photos(sample_coco):
    # the sample photos' masks: the budget the README states (labels <= 10 % of the JPEG bytes)
    from fastload.build.coco import load_coco
    from fastload.build.raster import rasterize_image

    dataset = load_coco(sample_coco)
    image_bytes = sum((sample_coco.parent / "images" / r.file_name).stat().st_size for r in dataset.images)
    label_bytes = 0
    for record in dataset.images:
        raster = rasterize_image(record)
        label_bytes += len(fmt.encode_label(raster.semantic, kind="sem", level=3))
        label_bytes += len(fmt.encode_label(raster.instance, kind="ins", level=3))
    assert label_bytes / image_bytes < 0.10


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
    text = fmt.dali_index_text([[("jpg", 512, 10, "00000000.jpg"), ("sem.lz4", 1536, 4, "00000000.sem.lz4")]])
    assert text == "v1.2 1\njpg 512 10 00000000.jpg sem.lz4 1536 4 00000000.sem.lz4\n"
    with pytest.raises(CacheError):
        fmt.dali_index_text([])


def test_shipped_cache_yaml_is_the_defaults(tmp_path):
    from tests.conftest import REPO

    assert load_cache_config(REPO / "configs" / "cache.yaml") == CacheConfig()


def test_cache_config_yaml_is_strict(tmp_path):
    path = tmp_path / "cache.yaml"
    path.write_text("samples_per_shard: 4\nlabel_compression: 9\n")
    assert load_cache_config(path) == CacheConfig(samples_per_shard=4, label_compression=9)
    path.write_text("samples_per_shard: 4\nsamples_per_shards: 5\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_cache_config(path)
    path.write_text("label_compression: 13\n")
    with pytest.raises(ConfigError, match="label_compression"):
        load_cache_config(path)


@pytest.mark.parametrize(("key", "hint"), [("sigma", "targets"), ("stride", "targets"), ("png_compression", "label_compression"), ("offset_scale", "no longer stored")])
def test_schema_1_cache_config_keys_say_where_they_went(tmp_path, key, hint):
    path = tmp_path / "cache.yaml"
    path.write_text(f"{key}: 2\n")
    with pytest.raises(ConfigError, match=hint):
        load_cache_config(path)
