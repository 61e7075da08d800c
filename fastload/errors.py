"""Errors fastload raises. Each names what it is about (image id, annotation id, shard, sample) and the fix."""

from __future__ import annotations


class FastloadError(Exception):
    """Base class of every error fastload raises on purpose."""


class ConfigError(FastloadError, ValueError):
    """A configuration value or YAML file is invalid (unknown key, wrong type, out of range)."""


class AnnotationError(FastloadError, ValueError):
    """A COCO record is invalid: bad geometry, unknown category, unsafe file name, duplicate id."""


class ImageError(FastloadError):
    """An image file is missing, unreadable, or its size disagrees with the COCO JSON."""


class CacheError(FastloadError):
    """A cache is missing, corrupt, or written by a newer fastload. The message names the shard and sample."""


class StorageError(FastloadError, OSError):
    """Writing (or locking) a cache folder failed: disk full, quota, permissions, an I/O error, or another build
    holds it. The message names the folder, the cause and the fix; ``errno`` is the operating system's."""


def add_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` to ``exc`` (PEP 678 notes on Python >= 3.11; appended to the message on 3.10)."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    elif exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]}\n{note}", *exc.args[1:])
    else:
        exc.args = (*exc.args, note)
