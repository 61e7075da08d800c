"""Config files and values from a hostile-but-realistic user (issue 19): each is a ConfigError naming the key (or
file and line) and the allowed range, before anything is allocated from it; never a MemoryError, a TypeError or a
message that prints a gigabyte."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fastload.augment.config import AugmentConfig
from fastload.build.build import build_cache
from fastload.cache.config import load_cache_config
from fastload.errors import ConfigError


def _load(tmp_path, text: str) -> AugmentConfig:
    path = tmp_path / "augment.yaml"
    path.write_text(text)
    return AugmentConfig.from_yaml(path)


# ----------------------------------------------------------------------------------------------- bounds


@pytest.mark.parametrize(
    "text, match",
    [
        # sigma 1e6 asked the targets renderer for 262 TiB
        ("targets: {sigma: 1.0e6}", r"targets.sigma = 1000000.0 is outside the allowed range \(0, 64\]: each instance's"),
        ("targets: {sigma: 1e6}", r"targets.sigma = 1000000.0 is outside the allowed range \(0, 64\]"),
        ("targets: {sigma: .inf}", r"targets.sigma = inf is outside the allowed range \(0, 64\]"),
        ("targets: {stride: 100}", r"targets.stride must be a positive integer \(1, 2, ... up to 64\), got 100"),
        ("targets: {stride: 4.0}", r"targets.stride: expected an integer, got 4.0"),
        ("targets: {small_instance_area: 100000000000}", r"targets.small_instance_area must be a non-negative integer"),
        ("targets: {small_instance_weight: 1e9}", r"targets.small_instance_weight = 1000000000.0 .* \[0, 1000\]"),
        ("normalize: {std: [1.0e-9, 0.2, 0.2]}", r"normalize.std\[0\] = 1e-09 is outside the allowed range \[0.001, 10\]"),
        ("geometry: {scale: {p: 1, range: [1.0e-300, 1]}}", r"geometry.scale.range\[0\] = 1e-300 .* \[0.015625, 8\]"),
        ("photometric: {hue: {p: 0.5, range: [-1e400, 0]}}", r"photometric.hue.range\[0\] = -inf .* \[-180, 180\]"),
        ("photometric: {noise: {p: .nan, range: [1, 2]}}", r"photometric.noise.p = nan is outside the allowed range \[0, 1\]"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_range(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        _load(tmp_path, text)


def test_yaml_1_2_numbers_are_numbers(tmp_path):
    # PyYAML reads YAML 1.1, where 1.0e6 and 1e6 are strings: "expected a number, got '1.0e6'"
    cfg = _load(
        tmp_path,
        "geometry: {flip_x: .5, rotation: {p: 5e-1, range: [-.5e-3, 1.5E+1]}}\n"
        "targets: {sigma: 1.2e1, stride: 04, small_instance_area: 0x400, small_instance_weight: +2.}\n",
    )
    assert cfg.geometry.flip_x == 0.5 and cfg.geometry.rotation.p == 0.5
    assert cfg.geometry.rotation.range == (-0.0005, 15.0)
    assert (cfg.targets.sigma, cfg.targets.stride, cfg.targets.small_instance_area) == (12.0, 4, 1024)
    assert cfg.targets.small_instance_weight == 2.0


def test_yaml_1_1_words_are_not_booleans_or_numbers(tmp_path):
    with pytest.raises(ConfigError, match=r"geometry.flip_x: expected a number, got 'yes'"):
        _load(tmp_path, "geometry: {flip_x: yes}")
    with pytest.raises(ConfigError, match=r"targets.stride: expected an integer, got '1:30'"):
        _load(tmp_path, "targets: {stride: 1:30}")  # YAML 1.1: sexagesimal 90


def test_cache_config_bounds(tmp_path):
    path = tmp_path / "cache.yaml"
    path.write_text("samples_per_shard: 10000000\n")
    with pytest.raises(ConfigError, match=r"samples_per_shard must be a positive integer \(1, 2, ... up to 1048576\)"):
        load_cache_config(path)
    path.write_text("samples_per_shard: 5e2\n")
    with pytest.raises(ConfigError, match="samples_per_shard: expected an integer, got 500.0"):
        load_cache_config(path)
    path.write_text("label_compression: 1e1\n")
    with pytest.raises(ConfigError, match="label_compression"):
        load_cache_config(path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"workers": 10**6}, r"workers must be a positive integer \(1, 2, ... up to 1024\)"),
        ({"workers": True}, "workers must be a positive integer"),
        ({"node_rank": 0, "num_nodes": 10**6}, r"num_nodes .* up to 99999\), got 1000000; partial manifests"),
        ({"node_rank": "0", "num_nodes": 2}, "need 0 <= node_rank < num_nodes, got node_rank='0'"),
    ],
)
def test_build_arguments_are_bounded(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_cache(coco=tmp_path / "a.json", images=tmp_path, out=tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- hostile YAML


def _bomb(levels: int = 9) -> str:
    """A "billion laughs" list: level k holds ten aliases of level k - 1 (10^levels ones in ~1.5 KB)."""
    rows = ["&l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    rows += [f"&l{k} [{', '.join([f'*l{k - 1}'] * 10)}]" for k in range(1, levels)]
    return "[" + ", ".join(rows) + "]"


BOMB_SCRIPT = """
import resource, sys
from fastload.augment.config import AugmentConfig
from fastload.errors import ConfigError

vm = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))  # a runaway: MemoryError
for path in sys.argv[1:]:
    try:
        AugmentConfig.from_yaml(path)
    except ConfigError as exc:
        print(str(exc).replace("\\n", " "))
    else:
        print("accepted")
"""


def test_an_alias_bomb_is_refused_naming_file_and_line_within_bounded_memory(tmp_path):
    # it ran 80 s to 6 GB and a MemoryError (the error message repr()ed the expanded value); as a mapping key it
    # was a TypeError. Run in a process whose address space is capped, so a runaway fails the test, not the machine.
    value = tmp_path / "value.yaml"
    value.write_text(f"photometric:\n  hue:\n    p: 0.5\n    range: {_bomb()}\n")
    key = tmp_path / "key.yaml"
    key.write_text(f"photometric:\n  ? {_bomb()}\n  : 1\n")
    assert len(value.read_bytes()) < 1600
    done = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(value), str(key)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    for path, line in zip((value, key), done.stdout.splitlines(), strict=True):
        assert line.startswith(f"{path}: line 4: the alias *l0 (its anchor &l0 is at line 4) is not allowed") or line.startswith(
            f"{path}: line 2: the alias *l0 (its anchor &l0 is at line 2) is not allowed"
        ), line
        assert len(line) < 300


@pytest.mark.parametrize(
    "text, match",
    [
        ("photometric:\n  ? [1, 2]\n  : 3\n", r"line 2: a list as a key; config keys are names"),
        ("photometric:\n  ? {a: 1}\n  : 3\n", r"line 2: a mapping as a key"),
        ("geometry:\n  1: 0.5\n", r"line 2: the key 1 is not a name"),
        ("geometry:\n  null: 0.5\n", r"line 2: the key None is not a name"),
        ("targets: " + "[" * 40 + "]" * 40 + "\n", r"line 1: nested more than 32 levels deep"),
        ("geometry:\n  flip_x: 0.5\n  flip_x: 0.2\n", r"duplicate key 'flip_x' at line 3"),
        ("targets: {sigma: !!float abc}\n", r"line 1: 'abc' is not a number"),
        ("targets: {stride: " + "9" * 5000 + "}\n", r"line 1: a number of 5000 characters"),
    ],
)
def test_hostile_yaml_is_a_config_error_naming_file_and_line(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as info:
        _load(tmp_path, text)
    assert str(info.value).startswith(str(tmp_path / "augment.yaml"))


@pytest.mark.parametrize(
    "text",
    [
        "photometric: {hue: {p: 0.5, range: [" + ", ".join(["0"] * 5_000) + "]}}\n",  # "expected 2 values"
        "geometry: {fit: " + "x" * 10_000 + "}\n",  # "is not one of"
        "normalize: {mean: [" + ", ".join(["0.5"] * 5_000) + "]}\n",
        "geometry: {rotation: {p: 0.5, range: [[" + ", ".join(["1"] * 5_000) + "], 1]}}\n",
    ],
    ids=["long-list", "long-string", "long-mean", "nested-list"],
)
def test_error_messages_never_print_an_unbounded_value(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert len(str(info.value)) < 400, str(info.value)[:1000]


def test_a_config_file_beyond_one_mib_is_refused_before_parsing(tmp_path):
    with pytest.raises(ConfigError, match="larger than 1 MiB: not a fastload config"):
        _load(tmp_path, "# " + "x" * (1 << 20) + "\n")

