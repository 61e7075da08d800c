"""Bad inputs through the command line: exit codes, the named error, the printed summary of skips.

tests/test_cache_images.py covers each bad image through `build_cache`; here they come all at once through
`python -m fastload cache build`, as a user meets them: ``--on-error fail`` exits 2 naming image id and file,
``--on-error skip`` exits 0, prints how many were skipped and why, and leaves a cache that verifies.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from imagefactory import MOTION_PHOTO_VIDEO

from fastload.build.synth import synth_coco
from fastload.cache.manifest import load_manifest
from fastload.samples import open_cache

CLI = [sys.executable, "-m", "fastload"]


def _damage(images: Path) -> dict[int, tuple[str, str]]:
    """Spoil five of eight images; return image id → (file, reason) for the four that must be skipped."""
    jpg = {k: images / f"{k:06d}.jpg" for k in range(8)}
    data = jpg[1].read_bytes()
    jpg[1].write_bytes(data[: len(data) // 2])  # truncated JPEG
    jpg[2].write_bytes(b"")  # zero bytes
    pixels = cv2.imdecode(np.frombuffer(jpg[3].read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    jpg[3].write_bytes(cv2.imencode(".png", pixels)[1].tobytes())  # a PNG named .jpg: fine, stored as .png
    jpg[4].unlink()  # missing
    jpg[6].write_bytes(cv2.imencode(".jpg", np.zeros((40, 48, 3), np.uint8))[1].tobytes())  # 40 x 48, JSON says 32 x 48
    return {
        2: ("000001.jpg", "JPEG is truncated"),
        3: ("000002.jpg", "file is empty"),
        5: ("000004.jpg", "file not found"),
        7: ("000006.jpg", "its size 40 x 48 (H x W) differs from the COCO entry's 32 x 48"),
    }


@pytest.fixture
def bad_data(tmp_path) -> tuple[Path, dict]:
    synth_coco(out=tmp_path / "data", n=8, size=(32, 48), instances=(1, 2), seed=4, workers=1)
    return tmp_path / "data", _damage(tmp_path / "data" / "images")


def _build(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [*CLI, "cache", "build", "--coco", str(data / "annotations.json"), "--images", str(data / "images")]
    cmd += ["--out", str(out), "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_fail_exits_2_naming_the_first_bad_image_and_the_fix(bad_data, tmp_path):
    data, _ = bad_data
    result = _build(data, tmp_path / "cache")
    assert result.returncode == 2
    assert result.stderr.startswith("fastload cache: error: image 2 (file '000001.jpg'): JPEG is truncated")
    assert "pass --on-error skip" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "cache" / "manifest.json").exists()
    # with worker processes the first bad image found may be another one, but it is named the same way
    result = _build(data, tmp_path / "cache2", "--workers", "2", "--config", str(_spp(tmp_path, 2)))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert any(f"image {i} (file '{name}'): {reason}" in result.stderr for i, (name, reason) in bad_data[1].items())


def _spp(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"spp{n}.yaml"
    path.write_text(f"samples_per_shard: {n}\n")
    return path


def test_skip_exits_0_prints_every_skip_and_the_cache_verifies(bad_data, tmp_path):
    data, skipped = bad_data
    out = tmp_path / "cache"
    result = _build(data, out, "--on-error", "skip", "--workers", "2", "--config", str(_spp(tmp_path, 3)))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out / 'manifest.json'}: 4 samples of 8 images in 3 shard(s), 4 skipped" in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(lines) == 4
    for (image_id, (name, reason)), line in zip(sorted(skipped.items()), lines, strict=True):
        assert line.startswith(f"skipped: image {image_id} annotation None ({name}): {reason}"), line

    manifest = load_manifest(out)
    assert [(s.image_id, s.file_name) for s in manifest.skips] == [(i, n) for i, (n, _) in sorted(skipped.items())]
    cache = open_cache(out)
    assert [cache.image_id(i) for i in range(len(cache))] == [1, 4, 6, 8]
    assert cache.read_members(1).image_ext == "png"  # the PNG named .jpg, kept and named for its content
    verify = subprocess.run([*CLI, "cache", "verify", str(out), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and "OK (3 shards, 4 samples)" in verify.stdout
    info = subprocess.run([*CLI, "cache", "info", str(out)], capture_output=True, text=True, timeout=120).stdout
    assert "skipped 4" in info and "skip: image 5 annotation None (000004.jpg): file not found" in info


def test_a_clean_build_prints_no_skip(tmp_path):
    synth_coco(out=tmp_path / "data", n=3, size=(32, 48), instances=(1, 2), seed=4, workers=1)
    result = _build(tmp_path / "data", tmp_path / "cache")
    assert result.returncode == 0 and "3 samples of 3 images in 1 shard(s), 0 skipped" in result.stdout
    assert "skipped:" not in result.stderr


def test_normalised_images_are_printed_and_listed_by_info(tmp_path):
    # a motion photo (JPEG + video): stored up to the JPEG's end marker, and the build and `info` say so
    synth_coco(out=tmp_path / "data", n=3, size=(32, 48), instances=(1, 2), seed=4, workers=1)
    photo = tmp_path / "data" / "images" / "000001.jpg"
    photo.write_bytes(photo.read_bytes() + MOTION_PHOTO_VIDEO)
    out = tmp_path / "cache"
    result = _build(tmp_path / "data", out)
    assert result.returncode == 0, result.stderr
    assert "3 samples of 3 images in 1 shard(s), 0 skipped, 1 normalised" in result.stdout
    note = f"normalised: image 2 (000001.jpg): dropped {len(MOTION_PHOTO_VIDEO)} bytes after the JPEG's end-of-image marker"
    assert note in result.stdout
    info = subprocess.run([*CLI, "cache", "info", str(out)], capture_output=True, text=True, timeout=120).stdout
    assert "normalised 1" in info and note in info
    verify = subprocess.run([*CLI, "cache", "verify", str(out), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and "OK (1 shards, 3 samples)" in verify.stdout
