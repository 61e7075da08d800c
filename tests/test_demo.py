"""`fastload demo` end to end with tiny sizes (the real defaults are timed by hand: see the README)."""

from __future__ import annotations

import json

import pytest

from fastload.errors import ConfigError
from fastload.tools.bench.report import validate_report


def test_demo_end_to_end_tiny(tmp_path, capsys):
    from fastload.tools.cli import main

    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--n", "6", "--image-size", "64", "80", "--size", "32", "32"]
    argv += ["--batch-size", "2", "--steps", "2", "--warmup", "1", "--width", "4", "--show-n", "2"]
    argv += ["--show-size", "32", "48", "--workers", "1", "--device", "cpu"]
    assert main(argv) == 0
    for name in ("data/annotations.json", "cache/manifest.json", "bench.json", "bench.png", "show.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "bench.json").read_text())
    validate_report(report)
    assert {r["loader"] for r in report["results"]} == {"cpu", "dali"}
    printed = capsys.readouterr().out
    assert "DALI ran on the CPU: no CUDA GPU visible" in printed
    assert str(out / "show.png") in printed
    # a second run into the same folder replaces the cache instead of failing on it
    assert main(argv) == 0


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
    from fastload.cache.reader import open_cache

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
