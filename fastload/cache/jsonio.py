"""JSON as a cache holds it: written canonically, read within bounds, and walked with typed, named reads.

Every JSON text fastload writes into a cache (meta members, shard indexes, completion records, the manifest) is
canonical (`dumps_canonical`: sorted keys, no NaN), so equal content is equal bytes. Every one it reads is parsed
within a size and depth bound (`loads_json`), so an edited or hostile file gives a named error instead of a
RecursionError or a runaway allocation, and is walked with `JsonNode`, whose reads name the key path that is
missing or wrong.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from fastload.errors import CacheError


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def dumps_canonical(value: Any) -> bytes:
    """Deterministic compact JSON (sorted keys, no NaN) as UTF-8 bytes; NumPy scalars become numbers."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default)
    return text.encode("utf-8")


# JSON read from a cache (meta members, shard indexes, manifests, records) is parsed only within these bounds, so
# that an edited file gives a named error instead of a RecursionError or a runaway allocation
MAX_JSON_DEPTH = 32  # what fastload writes nests 4 deep at most
# a JSON string (closing quote optional: an unterminated one runs to the end, so no byte is scanned twice)
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"\\[]{}')


def _brackets(data: bytes) -> bytes:
    """The brackets and braces of a JSON text that lie outside its strings, in order."""
    marks = data.translate(None, _NOT_STRUCTURE)  # quotes, backslashes, brackets: a few % of the text
    if b"\\" in marks:  # an escape may hide a quote: strip the strings from the text itself (slower)
        return _JSON_STRING.sub(b"", data).translate(None, _NOT_STRUCTURE)
    return b"".join(marks.split(b'"')[::2])  # no escapes: strings lie between consecutive quotes


def _depth(brackets: bytes) -> int:
    codes = np.frombuffer(brackets, np.uint8)
    step = ((codes == ord("[")) | (codes == ord("{"))).astype(np.int64) * 2 - 1
    return int(np.cumsum(step).max(initial=0))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_json(data: bytes, *, what: str, max_bytes: int | None = None, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON bytes read from a cache within bounds: at most ``max_bytes`` bytes (None: any) nested at most
    ``max_depth`` deep, UTF-8, no NaN/Infinity.

    Raises
    ------
    CacheError
        Naming ``what`` and the bound or the parse error.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise CacheError(f"{what} is {len(data)} bytes, more than the {max_bytes} a valid one takes")
    data = bytes(data)
    brackets = _brackets(data)
    # the number of openings bounds the depth: only a text with more of them than the bound is followed through
    if brackets.count(b"[") + brackets.count(b"{") > max_depth and (depth := _depth(brackets)) > max_depth:
        raise CacheError(f"{what} nests {depth} levels deep, more than the {max_depth} a valid one does")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError; so is a 5000-digit number
        raise CacheError(f"{what} is not JSON ({exc})") from None


class Malformed(Exception):
    """A key is missing or has the wrong type; the message names the key path (the caller adds the file)."""


class JsonNode:
    """A JSON object read from a cache file and its key path, with typed reads that name the key on failure."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise Malformed(f"{path or 'the top level'} must be an object, got {show_value(value)}")
        self.value, self.path = value, path

    def _get(self, key: str) -> tuple[Any, str]:
        path = f"{self.path}.{key}" if self.path else key
        if key not in self.value:
            raise Malformed(f"missing key {path}")
        return self.value[key], path

    def integer(self, key: str, *, minimum: int = 0, maximum: int | None = None, optional: bool = False) -> Any:
        value, path = self._get(key)
        if optional and value is None:
            return None
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        if not ok or (maximum is not None and value > maximum):
            bound = f"in {minimum}..{maximum}" if maximum is not None else f">= {minimum}"
            raise Malformed(f"{path} must be an integer {bound}{' or null' if optional else ''}, got {show_value(value)}")
        return value

    def text(self, key: str, *, optional: bool = False) -> Any:
        value, path = self._get(key)
        if not (isinstance(value, str) or (optional and value is None)):
            raise Malformed(f"{path} must be a string{' or null' if optional else ''}, got {show_value(value)}")
        return value

    def boolean(self, key: str) -> bool:
        value, path = self._get(key)
        if not isinstance(value, bool):
            raise Malformed(f"{path} must be true or false, got {show_value(value)}")
        return value

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value, path = self._get(key)
        if value not in allowed:
            raise Malformed(f"{path} must be one of {list(allowed)}, got {show_value(value)}")
        return value

    def file_name(self, key: str) -> str:
        name = self.text(key)
        if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise Malformed(f"{self.path}.{key} must be a plain file name inside the cache folder, got {name!r}")
        return name

    def node(self, key: str) -> JsonNode:
        value, path = self._get(key)
        return JsonNode(value, path)

    def nodes(self, key: str) -> list[JsonNode]:
        value, path = self._get(key)
        if not isinstance(value, list):
            raise Malformed(f"{path} must be a list, got {show_value(value)}")
        return [JsonNode(item, f"{path}[{k}]") for k, item in enumerate(value)]


def show_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
