"""Image files during a build: a bad one is an ImageError under on_error="fail", a recorded skip under "skip";
one that decoders would read differently is normalised (and listed in the manifest) or refused with the reason."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from cacheforge import run_bounded
from cocofactory import CocoFactory
from imagefactory import (
    MOTION_PHOTO_VIDEO,
    encode,
    exif,
    gray16_big_endian,
    jpeg,
    jpeg_declaring,
    odd_lossless_webp,
    pattern,
    pil_rgb,
)
from PIL import Image

from fastload.build.build import build_cache
from fastload.build.synth import synth_coco
from fastload.cache import images
from fastload.cache.manifest import NormalisedInfo, load_manifest
from fastload.cache.verify import verify_cache
from fastload.errors import CacheError, ImageError
from fastload.samples import open_cache

BAD_FILE = "000001.jpg"  # image id 2, position 1 of three


def _tiny(root: Path) -> Path:
    synth_coco(out=root, n=3, size=(32, 48), instances=(1, 2), seed=1, workers=1)
    return root


def _missing(path: Path) -> None:
    path.unlink()


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _not_an_image(path: Path) -> None:
    path.write_bytes(b"<html>404 not found</html>")


def _mis_sized(path: Path) -> None:
    path.write_bytes(cv2.imencode(".jpg", np.full((40, 48, 3), 128, np.uint8))[1].tobytes())


BAD_INPUTS = [
    pytest.param(_missing, "file not found", id="missing"),
    pytest.param(_empty, "empty", id="zero-byte"),
    pytest.param(_truncated, "truncated", id="truncated-jpeg"),
    pytest.param(_not_an_image, "not a JPEG, PNG", id="not-an-image"),
    pytest.param(_mis_sized, "its size 40 x 48 .* 32 x 48", id="mis-sized"),
]


def _build(root: Path, out: Path, **kwargs) -> Path:
    return build_cache(coco=root / "annotations.json", images=root / "images", out=out, progress=False, **kwargs)


@pytest.mark.parametrize(("damage", "reason"), BAD_INPUTS)
def test_bad_image_fails_naming_image_file_and_fix(tmp_path, damage, reason):
    root = _tiny(tmp_path / "data")
    damage(root / "images" / BAD_FILE)
    with pytest.raises(ImageError, match=reason) as info:
        _build(root, tmp_path / "cache")
    message = str(info.value)
    assert "image 2 " in message and BAD_FILE in message and "--on-error skip" in message
    assert not (tmp_path / "cache" / "manifest.json").exists()


@pytest.mark.parametrize(("damage", "reason"), BAD_INPUTS)
@pytest.mark.parametrize("samples_per_shard", [2, 1])  # 1: the bad image's shard ends up empty
def test_bad_image_is_skipped_and_recorded(tmp_path, damage, reason, samples_per_shard):
    root = _tiny(tmp_path / "data")
    damage(root / "images" / BAD_FILE)
    _build(root, tmp_path / "cache", on_error="skip", config={"samples_per_shard": samples_per_shard})
    manifest = load_manifest(tmp_path / "cache")
    assert (manifest.images, manifest.samples) == (3, 2)
    [skip] = manifest.skips
    assert (skip.image_id, skip.annotation_id, skip.file_name) == (2, None, BAD_FILE)
    assert re.search(reason, skip.reason)
    cache = open_cache(tmp_path / "cache")
    assert [cache.key(i) for i in range(len(cache))] == ["00000000", "00000002"]
    assert [cache[i]["meta"]["image_id"] for i in range(len(cache))] == [1, 3]


def test_worker_process_errors_reach_the_caller(tmp_path):
    root = _tiny(tmp_path / "data")
    _truncated(root / "images" / BAD_FILE)
    with pytest.raises(ImageError, match="image 2 .*truncated"):
        _build(root, tmp_path / "cache", workers=2, config={"samples_per_shard": 1})
    assert not (tmp_path / "cache" / "shard-00001.done.json").exists()


def test_resume_under_fail_rebuilds_a_shard_that_skipped(tmp_path):
    root = _tiny(tmp_path / "data")
    _empty(root / "images" / BAD_FILE)
    _build(root, tmp_path / "cache", on_error="skip")
    with pytest.raises(ImageError, match="empty"):
        _build(root, tmp_path / "cache", resume=True)


def test_resume_picks_up_a_fixed_image(tmp_path):
    root = _tiny(tmp_path / "data")
    good = (root / "images" / BAD_FILE).read_bytes()
    _empty(root / "images" / BAD_FILE)
    _build(root, tmp_path / "cache", on_error="skip", config={"samples_per_shard": 1})
    assert load_manifest(tmp_path / "cache").samples == 2
    (root / "images" / BAD_FILE).write_bytes(good)
    _build(root, tmp_path / "cache", on_error="skip", config={"samples_per_shard": 1}, resume=True)
    manifest = load_manifest(tmp_path / "cache")
    assert (manifest.samples, manifest.skips) == (3, ())


def test_png_named_jpg_is_kept_byte_for_byte_and_stored_as_png(tmp_path):
    # decoders go by content (DALI too), so the bytes are valid as they are; the member's extension
    # names what they are, so a loader's extension list never hands PNG bytes to a JPEG-only path
    root = _tiny(tmp_path / "data")
    path = root / "images" / BAD_FILE
    pixels = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    path.write_bytes(cv2.imencode(".png", pixels)[1].tobytes())
    _build(root, tmp_path / "cache")
    cache = open_cache(tmp_path / "cache")
    members = cache.read_members(1)
    assert members.image_ext == "png" and members.image == path.read_bytes()
    assert members.meta["file_name"] == BAD_FILE
    assert np.array_equal(cache[1]["image"], cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB))
    assert not load_manifest(tmp_path / "cache").skips


def test_missing_image_folder_is_named(tmp_path):
    root = _tiny(tmp_path / "data")
    with pytest.raises(ImageError, match="image folder .*does not exist"):
        build_cache(coco=root / "annotations.json", images=root / "nope", out=tmp_path / "cache", progress=False)


# ----------------------------------------------------------------------------------------------- normalised
# What decoders would read differently is changed at build time, and the manifest lists each sample changed.

STORED = pattern(40, 56)  # H != W: a quarter turn shows in the shape, a half turn in the pixels


def _single_image(tmp_path: Path, name: str, data: bytes, *, height: int = 40, width: int = 56) -> Path:
    """A COCO data set of one image (id 5) with these file bytes; returns the data folder."""
    coco = CocoFactory(tmp_path / "data")
    coco.category(1)
    coco.image(name, height=height, width=width, image_id=5, write_pixels=False)
    coco.image_root.mkdir(parents=True, exist_ok=True)
    (coco.image_root / name).write_bytes(data)
    coco.polygon(5, 1, [(1, 1), (20, 1), (20, 30)])
    coco.write()
    return coco.root


def _build_one(tmp_path: Path, name: str, data: bytes, config: dict | None = None, **size) -> Path:
    root = _single_image(tmp_path, name, data, **size)
    _build(root, tmp_path / "cache", config=config)
    assert verify_cache(tmp_path / "cache").ok
    return tmp_path / "cache"


@pytest.mark.parametrize("trailer", [MOTION_PHOTO_VIDEO, b"\0" * 64], ids=["motion-photo", "zeros"])
def test_a_jpeg_is_stored_up_to_its_end_of_image_marker(tmp_path, trailer):
    # a motion photo's video holds FF DA: it was refused as a truncated JPEG; now it is dropped, and said so
    image = jpeg(STORED)
    cache = open_cache(_build_one(tmp_path, "IMG_0001.jpg", image + trailer))
    assert cache.read_members(0).image == image
    assert np.array_equal(cache[0]["image"], pil_rgb(image))
    assert cache.manifest.normalised == (
        NormalisedInfo(5, "IMG_0001.jpg", f"dropped {len(trailer)} bytes after the JPEG's end-of-image marker (appended data)"),
    )


@pytest.mark.parametrize(
    ("tag", "rule"), [(None, "apply"), (1, "apply"), (6, "ignore")], ids=["no-tag", "orientation-1", "ignored-6"]
)
def test_a_jpeg_without_trailing_data_is_stored_unchanged_and_not_listed(tmp_path, tag, rule):
    image = jpeg(STORED, **({} if tag is None else {"exif": exif(tag)}))
    cache = open_cache(_build_one(tmp_path, "a.jpg", image, config={"exif_orientation": rule}))
    assert cache.read_members(0).image == image and cache.manifest.normalised == ()
    assert cache.manifest.exif_orientation == rule


# the stored grid of a file whose tag displays it as STORED: apply_orientation undone (6 and 8 undo each other)
UNDO = {6: 8, 8: 6}


def _stored_for(tag: int) -> np.ndarray:
    return np.ascontiguousarray(images.apply_orientation(STORED, UNDO.get(tag, tag)))


@pytest.mark.parametrize(
    ("tag", "options"),
    [
        pytest.param(None, {}, id="no-orientation"),
        pytest.param(3, {}, id="orientation-3"),
        pytest.param(6, {"compression": "tiff_lzw"}, id="orientation-6-lzw"),
        pytest.param(8, {"big_tiff": True}, id="bigtiff-orientation-8"),
    ],
)
def test_a_tiff_is_stored_as_a_png_of_its_displayed_picture(tmp_path, tag, options):
    # OpenCV applied the tag (even told not to), DALI did not: the build applies it once, every reader sees that
    data = encode(_stored_for(tag or 1), "TIFF", **options, **({} if tag is None else {"exif": exif(tag)}))
    cache = open_cache(_build_one(tmp_path, "scan.tif", data))
    members = cache.read_members(0)
    assert members.image_ext == "png" and members.image.startswith(b"\x89PNG")
    assert np.array_equal(cache[0]["image"], STORED)
    [entry] = cache.manifest.normalised
    assert (entry.image_id, entry.file_name) == (5, "scan.tif")
    assert entry.what.startswith("TIFF re-encoded as PNG, losslessly from the pixels OpenCV decodes")
    assert (f"its orientation tag {tag} applied (the stored grid {images.ORIENTATION_NAMES.get(tag)})" in entry.what) == (tag is not None)


@pytest.mark.parametrize("tag", [3, 6, 8])
def test_a_tiff_with_orientation_keeps_its_stored_grid_under_ignore(tmp_path, tag):
    cache = open_cache(_build_one(tmp_path, "scan.tif", encode(STORED, "TIFF", exif=exif(tag)), config={"exif_orientation": "ignore"}))
    assert np.array_equal(cache[0]["image"], STORED)
    [entry] = cache.manifest.normalised
    assert entry.what.endswith(f"; its Orientation tag {tag} is not applied (exif_orientation: ignore)")


def test_a_big_endian_tiff_with_orientation_is_read_on_its_displayed_picture(tmp_path):
    values = _stored_for(6)[..., 1].astype(np.uint16) * 257 + 100
    data = encode(gray16_big_endian(values), "TIFF", exif=exif(6))
    assert data[:2] == b"MM"
    cache = open_cache(_build_one(tmp_path, "scan.tif", data))
    shown = images.apply_orientation((values >> 8).astype(np.uint8), 6)
    assert np.array_equal(cache[0]["image"], np.repeat(shown[..., None], 3, axis=2))


TAGGED = [
    pytest.param("a.jpg", lambda pixels, tag: jpeg(pixels, exif=exif(tag)), id="jpeg-exif"),
    pytest.param("a.tif", lambda pixels, tag: encode(pixels, "TIFF", exif=exif(tag)), id="tiff"),
    pytest.param("a.png", lambda pixels, tag: encode(pixels, "PNG", exif=exif(tag)), id="png-exif"),
    pytest.param("a.webp", lambda pixels, tag: encode(pixels, "WEBP", lossless=True, exif=exif(tag)), id="webp-exif"),
]


@pytest.mark.parametrize(("name", "make"), TAGGED)
@pytest.mark.parametrize("tag", [5, 6, 7, 8])
def test_coco_giving_the_stored_size_is_refused_under_apply_with_both_fixes(tmp_path, name, make, tag):
    # the file is 40 x 56 as stored, its tag displays it 56 x 40, and COCO says 40 x 56: annotated on the stored grid?
    root = _single_image(tmp_path, name, make(STORED, tag), height=40, width=56)
    with pytest.raises(ImageError) as info:
        _build(root, tmp_path / "cache")
    message = str(info.value)
    assert message.startswith(
        f"image 5 (file '{name}'): its orientation tag ({tag}) displays it as 56 x 40 (H x W), the COCO entry says 40 x 56, "
        "the size of its stored pixel grid; fastload applies orientation tags"
    ), message
    assert "build with `--exif-orientation ignore`" in message
    _build(root, tmp_path / "cache", config={"exif_orientation": "ignore"})  # the fix it names works
    assert open_cache(tmp_path / "cache")[0]["image"].shape == (40, 56, 3)


@pytest.mark.parametrize(("name", "make"), TAGGED)
def test_coco_giving_the_displayed_size_is_refused_under_ignore_with_the_fix(tmp_path, name, make):
    root = _single_image(tmp_path, name, make(STORED, 6), height=56, width=40)
    with pytest.raises(ImageError) as info:
        _build(root, tmp_path / "cache", config={"exif_orientation": "ignore"})
    message = str(info.value)
    assert message.startswith(f"image 5 (file '{name}'): its size 40 x 56 (H x W) differs from the COCO entry's 56 x 40")
    assert "the size its orientation tag (6) displays it at" in message and "`--exif-orientation apply`" in message
    _build(root, tmp_path / "cache")  # the default applies the tag
    assert open_cache(tmp_path / "cache")[0]["image"].shape == (56, 40, 3)


def test_the_command_line_chooses_the_rule(tmp_path, capsys):
    from fastload.tools.cli import main

    root = _single_image(tmp_path, "a.jpg", jpeg(STORED, exif=exif(6)), height=40, width=56)  # annotated as stored
    args = ["cache", "build", "--coco", str(root / "annotations.json"), "--images", str(root / "images"), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "c1")]) == 2
    assert "build with `--exif-orientation ignore`" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "c2"), "--exif-orientation", "ignore"]) == 0
    assert main(["cache", "info", str(tmp_path / "c2")]) == 0
    assert "exif_orientation=ignore max_image_pixels=100000000" in capsys.readouterr().out


@pytest.mark.parametrize(("name", "make"), TAGGED)
@pytest.mark.parametrize("tag", range(2, 9))
def test_every_format_is_stored_as_its_displayed_picture(tmp_path, name, make, tag):
    cache = open_cache(_build_one(tmp_path, name, make(_stored_for(tag), tag)))
    [entry] = cache.manifest.normalised
    assert f"orientation tag {tag} applied (the stored grid {images.ORIENTATION_NAMES[tag]})" in entry.what
    members = cache.read_members(0)
    assert images.orientation(members.image, members.image_ext) is None, "the stored picture carries no tag"
    got = cache[0]["image"].astype(np.int16)
    if name.endswith(".jpg"):  # two JPEG generations: the file's and the re-encoding at quality 95
        assert members.image_ext == "jpg" and entry.what.endswith("re-encoded as JPEG (quality 95, 4:4:4)")
        assert np.abs(got - STORED).mean() < 2.0
    else:
        assert members.image_ext == "png" and np.array_equal(got, STORED)


def test_a_webp_loses_its_metadata_chunks(tmp_path):
    # DALI's WebP parser fails ("Unexpected end of stream") on an EXIF chunk after an odd-length VP8L chunk
    pixels, data = odd_lossless_webp(STORED, exif=exif(1))
    assert [(f, len(p) % 2) for f, p in images.webp_chunks(data)[0]] == [(b"VP8X", 0), (b"VP8L", 1), (b"EXIF", 0)]
    cache = open_cache(_build_one(tmp_path, "a.webp", data))
    stored = cache.read_members(0).image
    assert [f for f, _ in images.webp_chunks(stored)[0]] == [b"VP8L"]
    assert np.array_equal(cache[0]["image"], pixels)
    [entry] = cache.manifest.normalised
    assert entry.what == "removed the metadata chunk(s) EXIF from the WebP container (image data unchanged)"


def test_an_animated_webp_is_refused(tmp_path):
    frames = [Image.fromarray(STORED), Image.fromarray(STORED[::-1].copy())]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    root = _single_image(tmp_path, "anim.webp", data)
    with pytest.raises(ImageError, match=r"image 5 \(file 'anim.webp'\): animated WebP: .*save the annotated frame as PNG"):
        _build(root, tmp_path / "cache")


def test_a_completion_record_without_the_normalised_list_is_rebuilt(tmp_path):
    # records written before normalisations were recorded cannot say what they changed: --resume rebuilds them
    root = _single_image(tmp_path, "a.jpg", jpeg(STORED) + b"\0")
    _build(root, tmp_path / "cache")
    done = tmp_path / "cache" / "shard-00000.done.json"
    record = json.loads(done.read_text())
    assert record["normalised"][0]["image_id"] == 5
    del record["normalised"]
    done.write_text(json.dumps(record))
    _build(root, tmp_path / "cache", resume=True)
    assert json.loads(done.read_text())["normalised"][0]["image_id"] == 5
    assert len(load_manifest(tmp_path / "cache").normalised) == 1


# ----------------------------------------------------------------------------------------------- sizes first


def test_an_image_declaring_more_than_max_image_pixels_is_refused_before_it_decodes(tmp_path):
    # a few hundred bytes whose header declares 30000 x 30000 (2.7 GB decoded), and COCO agrees: the build reads
    # the header, refuses it, and never decodes; in a child whose memory may grow by 1.5 GB at most
    root = _single_image(tmp_path, "bomb.jpg", jpeg_declaring(30000, 30000), height=30000, width=30000)
    setup = (
        "from fastload.build.build import build_cache\n"
        f"STEPS = {{'build': lambda: build_cache(coco={str(root / 'annotations.json')!r}, images={str(root / 'images')!r}, "
        f"out={str(tmp_path / 'cache')!r}, progress=False)}}\n"
    )
    result = run_bounded(setup, memory_gb=1.5, cpu_s=5.0)["build"]
    assert result["error"] == "ImageError", result
    assert result["message"].startswith(
        "image 5 (file 'bomb.jpg'): its header declares 30000 x 30000 = 900000000 pixels, more than max_image_pixels "
        "(100000000) in the cache config (raise it there if the image is real)"
    ), result["message"]


def test_max_image_pixels_is_a_build_setting_recorded_for_the_loaders(tmp_path):
    root = _single_image(tmp_path, "a.jpg", jpeg(STORED))  # 40 x 56 = 2240 pixels
    with pytest.raises(ImageError, match=r"declares 40 x 56 = 2240 pixels, more than max_image_pixels \(2239\)"):
        _build(root, tmp_path / "cache", config={"max_image_pixels": 2239})
    _build(root, tmp_path / "cache", config={"max_image_pixels": 2240})
    assert open_cache(tmp_path / "cache").manifest.max_image_pixels == 2240
    manifest = tmp_path / "cache" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["config"]["max_image_pixels"] = 2000  # the loaders hold every sample to the recorded value
    manifest.write_text(json.dumps(data))
    with pytest.raises(CacheError, match=r"index: the sample is 40 x 56 = 2240 pixels, more than the cache's max_image_pixels \(2000\)"):
        open_cache(tmp_path / "cache")[0]
    del data["config"]["max_image_pixels"], data["config"]["exif_orientation"]  # a cache built before they existed
    manifest.write_text(json.dumps(data))
    cache = open_cache(tmp_path / "cache")
    assert (cache.manifest.max_image_pixels, cache.manifest.exif_orientation) == (100_000_000, "ignore")
    assert cache[0]["image"].shape == (40, 56, 3)


def test_a_jpeg_without_a_frame_header_is_refused_before_it_decodes(tmp_path):
    data = jpeg(STORED)
    sof = data.index(b"\xff\xc0")
    data = data[:sof] + data[sof + 2 + int.from_bytes(data[sof + 2 : sof + 4], "big") :]
    root = _single_image(tmp_path, "a.jpg", data)
    with pytest.raises(ImageError, match=r"image 5 \(file 'a.jpg'\): JPEG has no frame header \(SOF\) before its first scan"):
        _build(root, tmp_path / "cache")


@pytest.mark.parametrize(("value", "message"), [(0, "max_image_pixels must be >= 1"), ("both", "exif_orientation must be one of")])
def test_image_settings_are_checked(value, message):
    from fastload.cache.config import CacheConfig
    from fastload.errors import ConfigError

    key = "max_image_pixels" if value == 0 else "exif_orientation"
    with pytest.raises(ConfigError, match=message):
        CacheConfig(**{key: value})
