"""The shipped configs (configs/*.yaml) are installed with fastload and found by name from any folder.

pyproject.toml maps the package ``fastload.configs`` onto the top-level configs/ folder, so every install carries
those very files: checked in a wheel built and installed here, in the editable install CI makes, and from a
source tree on PYTHONPATH. Every check runs in a fresh interpreter whose working directory is an empty folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastload.augment.config import AugmentConfig, augment_config_names, load_augment
from fastload.cache.config import CacheConfig, load_cache_config
from fastload.errors import ConfigError
from fastload.yamlio import shipped_config_names

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# run in a fresh interpreter: which file each shipped name resolves to, and that each loads
_PROBE = """
import fastload, fastload.yamlio as y
from fastload.augment.config import augment_config_names, load_augment
from fastload.cache.config import load_cache_config
assert load_augment("default") == load_augment(y.shipped_config("default"))
for name in augment_config_names():
    load_augment(name)
load_cache_config("cache")
print(fastload.__file__)
for name in y.shipped_config_names():
    print(name, y.shipped_config(name))
"""


def _probe(cwd: Path, pythonpath: str | None) -> dict[str, Path]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first, *rest = result.stdout.strip().splitlines()
    found = {"fastload": Path(first)}
    found.update((line.split(" ", 1)[0], Path(line.split(" ", 1)[1])) for line in rest)
    return found


def test_the_shipped_names_are_the_files_in_configs():
    assert shipped_config_names() == sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert augment_config_names() == [n for n in shipped_config_names() if n != "cache"]
    assert {"default", "none", "cache"} <= set(shipped_config_names())


def test_names_resolve_from_a_folder_outside_the_checkout(tmp_path):
    found = _probe(tmp_path, pythonpath=str(REPO))
    for name in shipped_config_names():
        assert found[name].read_bytes() == (CONFIGS / f"{name}.yaml").read_bytes()


def test_names_load_the_shipped_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert load_augment("default") == AugmentConfig.default()
    assert load_augment("none") == AugmentConfig.none()
    assert load_cache_config("cache") == load_cache_config(CONFIGS / "cache.yaml") == CacheConfig()
    with pytest.raises(ConfigError, match=r"augment: 'sideways' is not a shipped augmentation config \(default, none"):
        load_augment("sideways")
    with pytest.raises(ConfigError, match="'cache' is not a shipped augmentation config"):
        load_augment("cache")  # the cache builder's, not an augmentation
    with pytest.raises(ConfigError, match="augment='default' works from any directory"):
        load_augment("configs/default.yaml")  # the README's old spelling, outside the checkout
    with pytest.raises(ConfigError, match="'default' is not a shipped cache config"):
        load_cache_config("default")


def test_the_loader_takes_a_shipped_name_outside_the_checkout(tmp_path, monkeypatch, synth_cache):
    from fastload import CpuLoader

    monkeypatch.chdir(tmp_path)
    with CpuLoader(synth_cache, batch_size=2, size=(32, 32), device="cpu", num_threads=0, augment="default") as loader:
        assert loader.augment == AugmentConfig.default()


def test_pyproject_installs_every_package_and_maps_configs():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    on_disk = sorted(
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "fastload").rglob("__init__.py")
    )
    listed, wanted = set(setuptools["packages"]), {*on_disk, "fastload.configs"}
    assert listed == wanted, (
        f"pyproject.toml [tool.setuptools] packages: add {sorted(wanted - listed)}, remove {sorted(listed - wanted)} "
        "(a wheel installs only the packages listed there)"
    )
    assert setuptools["package-dir"] == {"fastload.configs": "configs"}
    assert setuptools["package-data"]["fastload.configs"] == ["*.yaml"]
    assert (CONFIGS / "__init__.py").is_file()


def test_an_editable_install_of_this_checkout_maps_the_configs(tmp_path):
    """CI installs this checkout editable (`pip install -e .`): there, fastload.configs is the configs/ folder."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [sys.executable, "-c", "import fastload; print(fastload.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if where.returncode != 0 or not Path(where.stdout.strip()).is_relative_to(REPO):
        pytest.skip("fastload is not installed from this checkout here (CI's editable install is)")
    check = "import importlib.resources as r; print(r.files('fastload.configs'))"
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert Path(result.stdout.strip()) == CONFIGS


def _can_build_wheels() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("pip", "setuptools", "wheel"))


@pytest.mark.skipif(not _can_build_wheels(), reason="needs pip, setuptools and wheel to build a wheel offline")
def test_a_wheel_carries_the_configs_and_finds_them_by_name(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for folder in ("fastload", "configs"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("fastload-*.whl")
    site = tmp_path / "site"
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = _probe(elsewhere, pythonpath=str(site))
    assert found["fastload"].is_relative_to(site)
    for name in shipped_config_names():
        assert found[name].is_relative_to(site / "fastload" / "configs")
        assert found[name].read_bytes() == (CONFIGS / f"{name}.yaml").read_bytes()
