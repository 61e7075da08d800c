"""`fastload demo` end to end with tiny sizes: every file it promises, and what each holds."""

from __future__ import annotations

import json

import pytest

from fastload.errors import ConfigError
from fastload.tools.bench.report import validate_report


def test_demo_end_to_end_tiny(tmp_path, capsys):
    """What the demo promises (its module docstring): a dataset, a cache that opens and verifies, a benchmark of
    both loaders under SegNet, a chart, and a picture of show_n samples in cpu and dali rows; all named on stdout."""
    import cv2

    from fastload.cache.verify import verify_cache
    from fastload.samples import open_cache
    from fastload.tools.cli import main
    from fastload.tools.picture import grid_size

    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--n", "6", "--image-size", "64", "80", "--size", "32", "32"]
    argv += ["--batch-size", "2", "--steps", "2", "--warmup", "1", "--width", "4", "--show-n", "2"]
    argv += ["--show-size", "32", "48", "--workers", "1", "--device", "cpu"]
    assert main(argv) == 0
    coco = json.loads((out / "data" / "annotations.json").read_text())
    assert len(coco["images"]) == 6
    assert all((out / "data" / "images" / image["file_name"]).is_file() for image in coco["images"])
    with open_cache(out / "cache") as cache:
        assert len(cache) == 6 and cache.manifest.images == 6
    assert verify_cache(out / "cache", progress=False).ok
    report = json.loads((out / "bench.json").read_text())
    validate_report(report)
    assert [r["loader"] for r in report["results"]] == ["cpu", "dali"]
    for row in report["results"]:
        assert row["device"] == "cpu" and row["model"] == "segnet" and row["batch_size"] == 2
        assert row["samples"] == 2 * 2  # --steps 2 of --batch-size 2
        assert 0.0 <= row["stall_pct"] <= 100.0 and row["samples_per_s"] > 0
    assert report["config"]["cache"] == str(out / "cache") and report["config"]["size"] == [32, 32]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    picture = cv2.imread(str(out / "show.png"))
    assert picture.shape == (*grid_size(2 * 2, (32, 48), 256), 3)  # --show-n 2 samples, a cpu and a dali row each
    printed = capsys.readouterr().out
    assert "DALI ran on the CPU: no CUDA GPU visible" in printed
    for path in (out / "cache", out / "bench.json", out / "bench.png", out / "show.png"):
        assert str(path) in printed
    assert f"same benchmark again:  {report['command']}" in printed
    # a second run into the same folder replaces the cache instead of failing on it
    assert main(argv) == 0
    with open_cache(out / "cache") as cache:
        assert len(cache) == 6


def test_demo_on_the_bundled_real_photos(tmp_path, capsys):
    from fastload.tools.cli import main

    out = tmp_path / "demo"
    argv = ["demo", "--data", "sample", "--out", str(out), "--size", "32", "32", "--batch-size", "2"]
    argv += ["--steps", "1", "--warmup", "1", "--width", "4", "--show-n", "2", "--show-size", "32", "48"]
    argv += ["--workers", "1", "--device", "cpu"]
    assert main(argv) == 0
    assert not (out / "data").exists(), "the sample data is read where fastload ships it, not copied"
    report = json.loads((out / "bench.json").read_text())
    assert report["config"]["cache"] == str(out / "cache")
    from fastload.samples import open_cache

    assert len(open_cache(out / "cache")) == 18  # the 18 real photos
    assert "fruits_nuts_coco" in capsys.readouterr().out


def test_demo_wants_both_coco_and_images(tmp_path):
    from fastload.tools.demo import run_demo

    with pytest.raises(ConfigError, match="both --coco and --images"):
        run_demo(tmp_path, coco=tmp_path / "a.json")


def test_demo_refuses_to_delete_a_folder_that_is_not_a_cache(tmp_path):
    from fastload.tools.demo import run_demo

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a fastload cache"):
        run_demo(tmp_path, coco=tmp_path / "a.json", images=tmp_path)
    assert (tmp_path / "cache" / "precious.txt").exists()
