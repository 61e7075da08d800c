"""Strict YAML → frozen dataclass loading, for config files a user (or anyone) may have written.

The loader is PyYAML's safe loader with these changes:

* **YAML 1.2 scalars** (the core schema): ``1e6``, ``1.0e6``, ``.5`` and ``-.5e-3`` are numbers (PyYAML
  follows YAML 1.1, where a float needs a dot and a signed exponent, so ``1.0e6`` was the string "1.0e6"),
  ``true``/``false`` are the only booleans (``yes``, ``no``, ``on``, ``off`` are strings), ``~``/``null`` is
  null, and there are no timestamps, sexagesimal numbers (``1:30`` = 90) or ``<<`` merge keys.
* **No aliases.** ``*name`` is refused, naming the file and line: an alias re-uses a node, so nine levels of
  ten aliases each ("billion laughs") make a 1.5 KB file a billion values, and printing or converting it ran to
  gigabytes. A config file has a few dozen keys; writing a value twice costs less than any rule about how far
  aliases may expand. (Anchors alone are harmless and allowed.)
* **Bounded input**: at most `MAX_CONFIG_BYTES` of file and `MAX_CONFIG_DEPTH` levels of nesting.
* **Keys are names**: a duplicated key, or a key that is not a string (a mapping, a list, a number, null), is
  an error; PyYAML keeps the last duplicate silently and raises TypeError for a list key.

Every refusal is a `ConfigError` naming the file and line; no message prints more than a line of a value.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from yaml.nodes import ScalarNode

from fastload.errors import ConfigError
from fastload.validation import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, short_repr

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

T = TypeVar("T")

# the YAML 1.2 core schema's tag resolution (https://yaml.org/spec/1.2.2/#1032-tag-resolution)
_CORE_SCHEMA = (
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+.0123456789"),
    ),
)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars, no aliases, bounded nesting and string keys only (see the module)."""

    yaml_implicit_resolvers: dict = {}  # replaced by the core schema below (class attribute of the resolver)

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: D401 - PyYAML hook
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            anchor = self.anchors.get(event.anchor)
            where = f" (its anchor &{event.anchor} is at line {anchor.start_mark.line + 1})" if anchor else ""
            raise ConfigError(
                f"line {event.start_mark.line + 1}: the alias *{event.anchor[:40]}{where} is not allowed in "
                "a fastload config: aliases let a small file expand to billions of values; write the value out"
            )
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"line {mark.line + 1}: nested more than {MAX_CONFIG_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # noqa: D401 - PyYAML hook
        seen = set()
        for key_node, _ in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode):
                kind = "mapping" if isinstance(key_node, yaml.MappingNode) else "list"
                raise ConfigError(f"line {line}: a {kind} as a key; config keys are names such as `sigma`")
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                raise ConfigError(f"line {line}: the key {short_repr(key)} is not a name; config keys are names such as `sigma`")
            if key in seen:
                raise ConfigError(f"duplicate key {short_repr(key)} at line {line}; keep one of them")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_MAX_NUMBER_CHARS = 100  # Python refuses to convert integers of more than 4300 digits, and it is slow below


def _number(loader: _StrictLoader, node: ScalarNode) -> int | float:
    """An int or float scalar as YAML 1.2 reads it (``010`` is ten, not PyYAML's YAML 1.1 octal eight)."""
    text, line = node.value, node.start_mark.line + 1
    if len(text) > _MAX_NUMBER_CHARS:
        raise ConfigError(f"line {line}: a number of {len(text)} characters")
    try:
        if node.tag.endswith(":int"):
            sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
            base = {"0o": 8, "0x": 16}.get(digits[:2], 10)
            return sign * int(digits[2:] if base != 10 else digits, base)
        lowered = text.lower()
        if lowered.lstrip("+-") == ".inf":
            return float("-inf") if lowered.startswith("-") else float("inf")
        return float("nan") if lowered == ".nan" else float(text)
    except ValueError:
        raise ConfigError(f"line {line}: {short_repr(text)} is not a number") from None


for _tag, _pattern, _first in _CORE_SCHEMA:
    _StrictLoader.add_implicit_resolver(_tag, re.compile(_pattern), _first)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _number)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _number)


def load_yaml(path: str | Path | Traversable) -> Any:
    """Read a config file (a path, or a shipped config from `shipped_config`) with the strict loader (see the
    module docstring); errors name the file."""
    path = Path(path) if isinstance(path, str) else path
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config file {path}: unreadable ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB: not a fastload config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_cut_lines(str(exc))}") from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:  # an explicit tag PyYAML cannot build
        raise ConfigError(f"{path}: not valid YAML: {_cut_lines(str(exc))}") from None


def _cut_lines(text: str, limit: int = 600) -> str:
    """PyYAML's message (it quotes the offending line, which may be a megabyte long), cut to ``limit``."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    unknown = [key for key in data if not isinstance(key, str) or key not in fields]
    if unknown:
        names = sorted(short_repr(key, 40) for key in unknown[:10])
        raise ConfigError(f"{where}: unknown key(s) [{', '.join(names)}]; allowed keys are {sorted(fields)}")
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
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # X | None given a value: X's own error names what is wrong with it
            return _convert(options[0], value, where=where)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where=where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {short_repr(value)} fits none of {hint}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {short_repr(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where=f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}: {short_repr(value)}")
        return tuple(_convert(a, v, where=f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where}: {short_repr(value)} is not one of {list(allowed)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {short_repr(value)}")
        try:
            return float(value)
        except OverflowError:  # an integer beyond float's range
            raise ConfigError(f"{where}: {short_repr(value)} is too large for a number") from None
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {short_repr(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {short_repr(value)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {short_repr(value)}")
        return value
    return value
