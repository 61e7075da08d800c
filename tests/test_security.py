"""Security: no code execution from data, image paths contained to the image root, manifests validated.

- The package never deserialises with pickle (nor marshal/shelve/dill), never calls eval/exec, loads YAML only
  with a SafeLoader, ``np.load`` only with ``allow_pickle=False``, ``torch.load`` only with
  ``weights_only=True``, runs no shell. Checked on the syntax tree of every module, so words in docstrings
  ("never pickled") do not count and aliases (``from pickle import loads``) do.
- A COCO ``file_name`` cannot reach outside the image root: not by ``..`` or an absolute path (checked
  lexically, tests/test_coco.py) and not through a symlink inside the root that points outside it (the
  resolved path must stay inside the resolved root). A symlink that stays inside the root is fine.
- ``manifest.json`` is validated on open: a missing key or a value of the wrong type is a CacheError naming
  the key, and shard file names cannot point outside the cache folder.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

import fastload
from fastload.build.build import build_cache
from fastload.build.records import ImageRecord
from fastload.build.rules import resolve_image_path
from fastload.build.synth import synth_coco
from fastload.cache.manifest import load_manifest
from fastload.errors import AnnotationError, CacheError, ImageError
from fastload.samples import open_cache

PACKAGE = Path(fastload.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))

BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "marshal", "shelve", "cloudpickle", "joblib"}
BANNED_CALLS = {"eval", "exec", "compile", "__import__"}
UNSAFE_YAML = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "load_all"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = importlib_name(path)
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in BANNED_CALLS or name.endswith((".system", ".popen")) and name.startswith("os"):
                found.append(f"{where}: {name}()")
            elif name.startswith("yaml.") and name.split(".", 1)[1] in UNSAFE_YAML:
                found.append(f"{where}: {name}() (use yaml.load with a SafeLoader)")
            elif name == "yaml.load":
                loader = _keyword(node, "Loader")
                if loader is None and len(node.args) > 1:
                    loader = node.args[1]
                if loader is None or not _is_safe_loader(module, _dotted(loader)):
                    found.append(f"{where}: yaml.load without a SafeLoader")
            elif name in ("np.load", "numpy.load"):
                flag = _keyword(node, "allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    found.append(f"{where}: np.load without allow_pickle=False")
            elif name == "torch.load":
                flag = _keyword(node, "weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    found.append(f"{where}: torch.load without weights_only=True")
            elif _keyword(node, "shell") is not None:
                flag = _keyword(node, "shell")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    found.append(f"{where}: {name}(shell=...)")
    return found


def importlib_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_safe_loader(module: str, name: str) -> bool:
    """Whether ``name`` (as written in ``module``) is a SafeLoader class, e.g. yaml.SafeLoader or a subclass."""
    import importlib

    if name.startswith("yaml."):
        obj = getattr(yaml, name.split(".", 1)[1], None)
    else:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part, None)
    return isinstance(obj, type) and issubclass(obj, yaml.SafeLoader)


def test_the_scanner_sees_the_patterns_it_looks_for(monkeypatch):
    bad = PACKAGE / "_security_probe_does_not_exist.py"
    source = (
        "import pickle\nfrom marshal import loads\nimport numpy as np, yaml, torch, subprocess, os\n"
        "eval('1')\nexec('x = 1')\nyaml.load(open('f'))\nyaml.load(open('f'), Loader=yaml.Loader)\n"
        "yaml.unsafe_load('a: 1')\nnp.load('x.npy', allow_pickle=True)\nnp.load('x.npy')\n"
        "torch.load('m.pt')\nsubprocess.run('ls', shell=True)\nos.system('ls')\n"
    )
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source)
    problems = _problems(bad)
    for expected in ("import pickle", "from marshal", "eval()", "exec()", "yaml.load without a SafeLoader",
                     "yaml.unsafe_load()", "np.load without allow_pickle=False", "torch.load without",
                     "shell=", "os.system()"):  # fmt: skip
        assert any(expected in p for p in problems), (expected, problems)
    assert sum("yaml.load without" in p for p in problems) == 2  # no Loader, and the full (unsafe) Loader


def test_package_source_has_no_unsafe_deserialisation_or_code_execution():
    assert len(SOURCES) > 20
    problems = [p for path in SOURCES for p in _problems(path)]
    assert not problems, "\n".join(problems)


def test_yaml_configs_refuse_python_tags(tmp_path):
    from fastload.augment.config import load_augment
    from fastload.errors import ConfigError

    path = tmp_path / "evil.yaml"
    path.write_text("geometry: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_augment(path)


# ----------------------------------------------------------------------------------------------- paths


def _record(name: str) -> ImageRecord:
    return ImageRecord(image_id=7, file_name=name, height=32, width=48, instances=())


def test_a_symlink_inside_the_root_pointing_outside_is_refused(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"not yours")
    (root / "escape.jpg").symlink_to(outside)
    (root / "sub" / "up").symlink_to(tmp_path)  # a directory link: sub/up/secret.jpg
    for name in ("escape.jpg", "sub/up/secret.jpg"):
        with pytest.raises(AnnotationError, match=rf"image 7 \(file_name '{name}'\).*outside the image root"):
            resolve_image_path(root, _record(name))


def test_symlinks_that_stay_inside_the_root_are_followed(tmp_path):
    real = tmp_path / "real"
    (real / "a").mkdir(parents=True)
    (real / "a" / "x.jpg").write_bytes(b"x")
    (real / "b").symlink_to(real / "a")  # an alias folder inside the root
    root = tmp_path / "images"
    root.symlink_to(real)  # the root itself may be a link
    assert resolve_image_path(root, _record("b/x.jpg")).read_bytes() == b"x"
    assert resolve_image_path(root, _record("a/../b/x.jpg")).read_bytes() == b"x"


def test_the_builder_refuses_an_escaping_symlink_naming_image_and_file(tmp_path):
    data = tmp_path / "data"
    synth_coco(out=data, n=2, size=(32, 48), instances=(1, 2), seed=1, workers=1)
    victim = tmp_path / "private.jpg"
    (data / "images" / "000001.jpg").rename(victim)  # a valid image, but not under the root
    (data / "images" / "000001.jpg").symlink_to(victim)
    kwargs = dict(coco=data / "annotations.json", images=data / "images", progress=False)
    with pytest.raises(AnnotationError, match=r"image 2 \(file .*000001\.jpg.*outside the image root"):
        build_cache(out=tmp_path / "c1", **kwargs)
    build_cache(out=tmp_path / "c2", on_error="skip", **kwargs)
    [skip] = load_manifest(tmp_path / "c2").skips
    assert skip.image_id == 2 and "outside the image root" in skip.reason
    assert len(open_cache(tmp_path / "c2")) == 1  # the private file's bytes are in no shard


def test_images_errors_are_image_errors_not_path_errors(tmp_path):
    # a missing file under the root stays an ImageError (not mistaken for an escape by the containment check)
    data = tmp_path / "data"
    synth_coco(out=data, n=1, size=(32, 48), instances=(1, 1), seed=1, workers=1)
    (data / "images" / "000000.jpg").unlink()
    with pytest.raises(ImageError, match="file not found"):
        build_cache(coco=data / "annotations.json", images=data / "images", out=tmp_path / "c", progress=False)


# ----------------------------------------------------------------------------------------------- manifest


@pytest.fixture
def cache_copy(synth_cache: Path, tmp_path: Path) -> Path:
    out = tmp_path / "cache"
    shutil.copytree(synth_cache, out)
    return out


def _edit_manifest(cache: Path, edit) -> None:
    path = cache / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _delete(path: str):
    def edit(data):
        *parents, last = path.split(".")
        for key in parents:
            data = data[int(key)] if key.isdigit() else data[key]
        del data[int(last) if last.isdigit() else last]

    return edit


def _set(path: str, value):
    def edit(data):
        *parents, last = path.split(".")
        for key in parents:
            data = data[int(key)] if key.isdigit() else data[key]
        data[int(last) if last.isdigit() else last] = value

    return edit


MISSING = [
    "config",
    "config.label_format",
    "counts.samples",
    "counts.normalised",
    "categories.0.name",
    "shards.1.sha256",
    "bytes.members.ins",
    "source",
    "normalised",
]
WRONG_TYPES = [
    ("config.samples_per_shard", 1.5),  # int("1.5"-ish) used to become 1 silently
    ("config.label_compression", "3"),
    ("config.label_format", "FLZ4 v2"),
    ("counts.samples", "24"),
    ("shards.0.samples", "8"),  # used to escape as a TypeError from open_cache
    ("shards.0.file", 5),
    ("shards.0.bytes", None),
    ("categories.0.train_id", True),
    ("categories", {"a": 1}),
    ("skips", None),
    ("num_classes", [5]),
    ("normalised", {}),
    ("counts.normalised", -1),
]


@pytest.mark.parametrize("key", MISSING)
def test_manifest_missing_key_is_named(cache_copy, key):
    _edit_manifest(cache_copy, _delete(key))
    with pytest.raises(CacheError, match="malformed manifest") as info:
        open_cache(cache_copy)
    assert _shown(key) in str(info.value)


@pytest.mark.parametrize(("key", "value"), WRONG_TYPES)
def test_manifest_wrong_type_is_named(cache_copy, key, value):
    _edit_manifest(cache_copy, _set(key, value))
    with pytest.raises(CacheError, match="malformed manifest") as info:
        open_cache(cache_copy)
    assert _shown(key) in str(info.value)


def _shown(key: str) -> str:
    """How the error spells a key path: shards.0.file → shards[0].file."""
    out = []
    for part in key.split("."):
        out.append(f"[{part}]" if part.isdigit() else (f".{part}" if out else part))
    return "".join(out)


NORMALISED = {"image_id": 3, "file_name": "a.jpg", "what": "dropped 5 bytes after the JPEG's end-of-image marker"}


@pytest.mark.parametrize(
    ("key", "value"),
    [("image_id", "3"), ("image_id", 2**63), ("file_name", None), ("what", 7)],
)
def test_manifest_normalised_entries_are_checked(cache_copy, key, value):
    def edit(data):
        data["normalised"] = [{**NORMALISED, key: value}]
        data["counts"]["normalised"] = 1

    _edit_manifest(cache_copy, edit)
    with pytest.raises(CacheError, match=rf"malformed manifest \(normalised\[0\]\.{key} must be"):
        open_cache(cache_copy)


def test_manifest_normalised_count_must_match_the_list(cache_copy):
    _edit_manifest(cache_copy, _set("normalised", [NORMALISED]))
    with pytest.raises(CacheError, match=r"counts.normalised is 0, normalised lists 1 samples"):
        open_cache(cache_copy)
    _edit_manifest(cache_copy, _set("counts.normalised", 1))
    assert open_cache(cache_copy).manifest.normalised[0].what == NORMALISED["what"]


@pytest.mark.parametrize("field", ["file", "index_file", "dali_index"])
@pytest.mark.parametrize("name", ["../outside.tar", "/etc/passwd", "sub/shard-00000.tar", ".."])
def test_manifest_shard_files_cannot_point_outside_the_cache(cache_copy, field, name):
    _edit_manifest(cache_copy, _set(f"shards.0.{field}", name))
    with pytest.raises(CacheError, match=rf"shards\[0\]\.{field}.*plain file name"):
        open_cache(cache_copy)


def test_valid_manifest_still_opens(synth_cache):
    assert len(open_cache(synth_cache)) == 24
    assert os.path.basename(load_manifest(synth_cache).shards[0].file) == "shard-00000.tar"
