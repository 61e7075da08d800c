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
