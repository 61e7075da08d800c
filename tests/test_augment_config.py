"""AugmentConfig: the shipped YAML files equal the Python defaults; loading is strict; values are checked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fastload.augment.config import (
    AugmentConfig,
    GeometryConfig,
    NormalizeConfig,
    PhotometricConfig,
    RandomRange,
    Shadow,
    Translation,
    load_augment,
)
from fastload.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_default_yaml_equals_default():
    assert AugmentConfig.from_yaml(CONFIGS / "default.yaml") == AugmentConfig.default()


def test_none_yaml_equals_none():
    assert AugmentConfig.from_yaml(CONFIGS / "none.yaml") == AugmentConfig.none()


def test_none_is_the_dataclass_default():
    assert AugmentConfig() == AugmentConfig.none()


def test_load_augment_accepts_names_paths_and_configs(tmp_path):
    cfg = AugmentConfig.default()
    assert load_augment(None) == AugmentConfig.none()
    assert load_augment("none") == AugmentConfig.none()
    assert load_augment("default") == cfg
    assert load_augment(cfg) is cfg
    assert load_augment(CONFIGS / "default.yaml") == cfg
    assert load_augment(str(CONFIGS / "none.yaml")) == AugmentConfig.none()
    with pytest.raises(ConfigError, match="does not exist"):
        load_augment(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected None"):
        load_augment(3)


def test_partial_yaml_keeps_identity_defaults(tmp_path):
    path = tmp_path / "flip.yaml"
    path.write_text("geometry:\n  flip_x: 0.5\n")
    cfg = AugmentConfig.from_yaml(path)
    assert cfg.geometry.flip_x == 0.5
    assert cfg.photometric == PhotometricConfig()


@pytest.mark.parametrize(
    "text, match",
    [
        ("geometry:\n  flipx: 0.5\n", r"unknown key\(s\) \['flipx'\]"),
        ("geometry:\n  flip_x: 0.5\n  flip_x: 0.2\n", "duplicate key 'flip_x'"),
        ("colour: {}\n", "unknown key"),
        ("geometry:\n  flip_x: 1.5\n", r"geometry.flip_x = 1.5 is outside the allowed range \[0, 1\]"),
        ("geometry:\n  fit: stretch\n", "not one of"),
        ("geometry:\n  rotation: {p: 0.5, range: [10, -10]}\n", "geometry.rotation.range.*min > max"),
        (
            "geometry:\n  rotation: {p: 0.5, range: [-200, 10]}\n",
            r"geometry.rotation.range\[0\].*\[-180, 180\]",
        ),
        ("geometry:\n  scale: {p: 0.5, range: [0, 2]}\n", r"geometry.scale.range\[0\] = 0.0 .*\[0.015625, 8\]"),
        ("geometry:\n  translation: {p: -0.1, max_fraction: 0.1}\n", "geometry.translation.p"),
        ("photometric:\n  noise: {p: 0.5, range: [0, 300]}\n", r"photometric.noise.range\[1\].*\[0, 255\]"),
        (
            "photometric:\n  shadow: {p: 0.5, strength: [0.2, 1.5], half_width: [0.1, 0.2]}\n",
            "shadow.strength",
        ),
        ("photometric:\n  hue: {p: 0.5, range: [1, 2, 3]}\n", "expected 2 values"),
        ("normalize:\n  std: [0.2, 0.0, 0.2]\n", r"normalize.std\[1\] = 0.0 is outside the allowed range \[0.001, 10\]"),
        ("geometry:\n  flip_x: yes please\n", "expected a number"),
    ],
)
def test_bad_yaml_is_a_config_error_naming_the_key(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        AugmentConfig.from_yaml(path)


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="photometric.saturation.p"):
        PhotometricConfig(saturation=RandomRange(2.0, (0.5, 1.5)))
    with pytest.raises(ConfigError, match="geometry.translation.max_fraction"):
        GeometryConfig(translation=Translation(0.5, 2.0))
    with pytest.raises(ConfigError, match="half_width"):
        PhotometricConfig(shadow=Shadow(0.5, (0.1, 0.2), (0.3, 0.1)))
    with pytest.raises(ConfigError, match="normalize.mean"):
        NormalizeConfig(mean=(0.5, 0.5))
    with pytest.raises(ConfigError, match="nan"):
        GeometryConfig(flip_x=float("nan"))


def test_configs_are_frozen_and_hashable():
    cfg = AugmentConfig.default()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.geometry = GeometryConfig()  # type: ignore[misc]
    assert hash(cfg) == hash(AugmentConfig.default())
