"""Strict YAML → frozen dataclass loading: safe loader, duplicate keys and unknown keys are errors."""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from fastload.errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

T = TypeVar("T")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (plain PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):  # noqa: D401 - PyYAML hook
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}; keep one of them")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path | Traversable) -> Any:
    """Read a YAML file (a path, or a shipped config from `shipped_config`) with the safe, duplicate-refusing loader."""
    path = Path(path) if isinstance(path, str) else path
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


# --- the configs fastload ships: configs/*.yaml, installed with the package as ``fastload.configs`` --------------

_NAME = re.compile(r"[A-Za-z0-9_-]+")


def shipped_configs() -> Traversable:
    """The folder of the configs fastload ships (``default``, ``none``, ``cache``, ...).

    pyproject.toml maps the package ``fastload.configs`` onto the repository's top-level ``configs/`` folder, so
    an install (a wheel, or editable) carries those very files, found from any working directory. Running from a
    source tree put on PYTHONPATH, with no install or one made before that mapping, the package is not there;
    the checkout's ``configs/`` beside ``fastload/`` is then the same folder.
    """
    try:
        return importlib.resources.files("fastload.configs")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


def shipped_config_names() -> list[str]:
    """The names of the shipped configs: their file names without ``.yaml``."""
    return sorted(p.name[: -len(".yaml")] for p in shipped_configs().iterdir() if p.name.endswith(".yaml"))


def is_config_name(value: str) -> bool:
    """Whether ``value`` names a shipped config rather than a file: letters, digits, ``_`` and ``-`` only.

    ``"default"`` is a name; ``"default.yaml"``, ``"configs/default.yaml"`` and ``"./default"`` are paths.
    """
    return bool(_NAME.fullmatch(value))


def shipped_config(name: str) -> Traversable | None:
    """The shipped config file called ``name`` (``"default"`` → ``configs/default.yaml``), or None."""
    path = shipped_configs() / f"{name}.yaml"
    return path if is_config_name(name) and path.is_file() else None


def from_mapping(cls: type[T], data: Any, *, where: str) -> T:
    """Build the frozen dataclass ``cls`` from a mapping, recursively; unknown keys are errors.

    ``where`` names the source (file and key path) in error messages.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, where=f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: {exc}") from exc


def _convert(hint: Any, value: Any, *, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where=where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where=where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} fits none of {hint}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where=f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_convert(a, v, where=f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value
