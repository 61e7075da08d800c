"""`fastload show`: the picture grid, its exact size, the colour codings it relies on, and the CPU-vs-DALI agreement it
shows beside each dali row."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fastload.augment.config import AugmentConfig
from fastload.samples import open_cache
from fastload.tools.picture import COLUMNS, denormalize, grid_size, offset_wheel, semantic_overlay
from fastload.tools.show import agreement, grid_rows, show


def _read(path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} is not a readable image"
    return img


def test_show_both_loaders_writes_a_png_of_the_expected_size(synth_cache, tmp_path):
    path = show(synth_cache, tmp_path / "grid.png", n=2, loader="both", size=(64, 96), tile=48, device="cpu")
    assert _read(path).shape == (*grid_size(4, (64, 96), 48), 3)
    h, w = grid_size(4, (64, 96), 48)
    assert w == 112 + len(COLUMNS) * 48


def test_both_rows_pair_each_sample_and_the_cpu_and_dali_loaders_agree_on_it(synth_cache):
    """The rows `show --loader both` draws: per sample a cpu row, then the dali row of the same sample with the same
    augmentation parameters, labelled with their agreement; the two engines agree (tests/test_fidelity.py holds
    the tolerances on the real photos: IoU >= 0.99, PSNR >= 40 dB; on these samples they agree almost exactly)."""
    cfg = AugmentConfig.default()
    with open_cache(synth_cache) as cache:
        rows = grid_rows(cache, n=3, loader="both", augment=cfg, size=(64, 96), seed=1, epoch=0, device="cpu")
    assert [r["label"][1] for r in rows] == ["cpu", "dali"] * 3
    for cpu, dali in zip(rows[::2], rows[1::2], strict=True):
        assert int(cpu["sample"]["index"]) == int(dali["sample"]["index"])
        assert cpu["agreement"] is None
        sem, img = dali["agreement"]
        assert sem >= 99.0, f"sample {dali['label'][0]}: only {sem:.2f} % of the semantic pixels agree"
        assert img <= 1.0, f"sample {dali['label'][0]}: the images differ by {img:.2f} grey levels on average"
        assert dali["label"][2:] == ["vs cpu:", f"sem {sem:.1f}% same", f"img |d| {img:.2f}"]
        # the label shows these two samples' agreement, not any other pair's
        assert (sem, img) == agreement(cpu["sample"], dali["sample"], cfg.normalize.mean, cfg.normalize.std)


def test_agreement_counts_equal_semantic_pixels_and_the_mean_image_difference():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    a = {"semantic": np.array([[1, 2], [255, 0]]), "image": np.full((3, 2, 2), 0.0, np.float32)}
    b = {"semantic": np.array([[1, 3], [255, 0]]), "image": np.full((3, 2, 2), 0.0, np.float32)}
    b["image"][:, 0, 0] = 4 / 255 / 0.25  # one pixel 4 grey levels lighter in every channel
    assert tuple(denormalize(b["image"], mean, std)[0, 0]) == (132, 132, 132)
    sem, img = agreement(a, b, mean, std)
    assert sem == 75.0  # 3 of 4 semantic pixels equal
    assert img == 1.0  # 4 levels on 1 of 4 pixels
    assert agreement(a, a, mean, std) == (100.0, 0.0)


def test_show_cli_on_the_real_sample_photos(sample_cache, tmp_path, capsys):
    from fastload.tools.cli import main

    out = tmp_path / "g.png"
    argv = ["show", "--cache", str(sample_cache), "--n", "2", "--out", str(out), "--loader", "cpu"]
    argv += ["--size", "96", "128", "--tile", "64", "--device", "cpu", "--seed", "3"]
    assert main(argv) == 0
    assert _read(out).shape == (*grid_size(2, (96, 128), 64), 3)
    assert str(out) in capsys.readouterr().out


def test_show_refuses_an_unknown_loader(synth_cache, tmp_path):
    with pytest.raises(ValueError, match="cpu, dali, both"):
        show(synth_cache, tmp_path / "g.png", loader="gpu")


def test_show_refuses_a_picture_too_large_before_loading_anything(synth_cache, tmp_path, monkeypatch):
    import fastload.tools.show as show_module

    monkeypatch.setattr(show_module, "grid_rows", lambda *a, **k: pytest.fail("loaded samples for a refused picture"))
    with pytest.raises(ValueError, match=r"show: 100000 samples in tiles 256 wide make a \d+ x \d+ picture, above the 67108864"):
        show(synth_cache, tmp_path / "g.png", n=100_000)
    with pytest.raises(ValueError, match=r"show: tile must be an integer in \[16, 16384\], got 100000"):
        show(synth_cache, tmp_path / "g.png", tile=100_000)


def test_offset_wheel_codes_direction_as_hue_and_length_as_brightness():
    off = np.zeros((2, 1, 4), np.float32)
    off[:, 0, 0] = (0.0, 4.0)  # pointing right (+x)
    off[:, 0, 1] = (4.0, 0.0)  # pointing down (+y, rows grow downwards)
    off[:, 0, 2] = (0.0, -2.0)  # pointing left, half as long
    rgb = offset_wheel(off, max_magnitude=4.0)[0].astype(int)
    assert tuple(rgb[3]) == (0, 0, 0)  # no offset: black
    assert rgb[0, 0] == 255 and rgb[0, 1] < 10 and rgb[0, 2] < 10  # right: red
    hsv = cv2.cvtColor(offset_wheel(off, max_magnitude=4.0), cv2.COLOR_RGB2HSV)[0].astype(int)
    assert abs(hsv[1, 0] - 45) <= 1  # down: 90 degrees (OpenCV hue is degrees / 2)
    assert abs(hsv[2, 0] - 90) <= 1  # left: 180 degrees
    assert hsv[2, 2] < hsv[0, 2]  # shorter: darker


def test_semantic_overlay_shows_ignore_distinctly_from_background_and_classes():
    rgb = np.full((16, 16, 3), 100, np.uint8)
    sem = np.zeros((16, 16), np.uint8)
    sem[:, 8:12] = 1
    sem[:, 12:] = 255
    inst = np.zeros((16, 16), np.int32)
    inst[:, 8:12] = 1
    out = semantic_overlay(rgb, sem, inst).astype(int)
    background, cls, ignore = out[:, :6], out[:, 9:11], out[:, 13:]  # 7, 12: outline
    assert len({tuple(p) for p in ignore.reshape(-1, 3)}) == 2  # two-tone stripes
    assert not np.array_equal(cls[0, 0], background[0, 0])
    assert (out[:, 8] == 255).all()  # the instance's outline is white


def test_semantic_overlay_draws_stuff_as_a_tint_and_each_thing_instance_in_its_own_shade():
    from fastload.tools.picture import class_colours, key_entries, stuff_colours

    rgb = np.full((8, 16, 3), 128, np.uint8)
    sem = np.full((8, 16), 2, np.uint8)  # class 2 everywhere ...
    sem[:, 8:] = 1  # ... and class 1 on the right
    inst = np.zeros((8, 16), np.int32)
    inst[1:7, 9:12], inst[1:7, 12:15] = 1, 2  # two instances of class 1
    as_things = semantic_overlay(rgb, sem).astype(int)
    out = semantic_overlay(rgb, sem, inst, stuff=[2]).astype(int)

    def saturation(pixel):
        return int(cv2.cvtColor(np.uint8([[pixel]]), cv2.COLOR_RGB2HSV)[0, 0, 1])

    assert saturation(out[4, 2]) < saturation(as_things[4, 2]) // 2  # stuff: a desaturated tint of its colour
    expected = np.round(0.45 * 128 + 0.55 * stuff_colours(class_colours()[2]).astype(float) - 0.5)
    assert np.abs(out[4, 2] - expected).max() <= 1
    first, second = out[4, 10], out[4, 13]
    assert not np.array_equal(first, second)  # two instances of one class: two shades
    assert (out[0, 8:] == as_things[0, 8:]).all()  # a thing pixel of no instance: the class colour
    assert (out[1:7, 11:13] == 255).all()  # the outline between the two instances, white
    names = ["car", "road"]
    assert [text for _, text in key_entries(names, stuff=[2])] == ["car", "road (stuff)", "ignore (255)"]
    assert [text for _, text in key_entries(names, stuff=[2], present=[0, 2])] == ["road (stuff)", "ignore (255)"]


def test_show_on_a_panoptic_cache_keys_things_and_stuff(tmp_path):
    from fastload.build.build import build_cache
    from fastload.build.synth_formats import write_panoptic

    files = write_panoptic(out=tmp_path / "p", n=2, size=(48, 64), seed=1)
    cache = tmp_path / "cache"
    build_cache(panoptic=files.annotations, panoptic_masks=files.png_dir, images=files.image_root, out=cache, progress=False)
    path = show(cache, tmp_path / "g.png", n=2, loader="cpu", size=(48, 64), tile=48, device="cpu", augment="none")
    assert _read(path).shape == (*grid_size(2, (48, 64), 48), 3)
