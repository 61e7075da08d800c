"""The rules every label reader applies to its records, defined once: ids, image sizes, safe file names, and the
``on_error`` policy that turns a rejected record into an error (``fail``) or a recorded skip (``skip``).

COCO instances (`fastload.build.coco`), COCO panoptic (`fastload.build.coco_panoptic`) and Cityscapes
(`fastload.build.cityscapes`) read through them, so a record is judged the same way whatever file it came from.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from fastload.build.records import ImageRecord
from fastload.cache.manifest import INT64_MAX, INT64_MIN, SkipInfo  # ids: the cache's int64 tables
from fastload.errors import AnnotationError

OnError = Literal["fail", "skip"]
ON_ERROR_CHOICES: tuple[str, ...] = ("fail", "skip")
BACKGROUND_CATEGORY = "_background_"  # a category of this name is background (not the class name, `labels.BACKGROUND_NAME`)
# OpenCV's default decoding limits (CV_IO_MAX_IMAGE_WIDTH/HEIGHT, CV_IO_MAX_IMAGE_PIXELS): the cache builder
# cannot decode a larger image, and its masks alone would take 5 bytes per pixel
MAX_IMAGE_SIDE = 1 << 20
MAX_IMAGE_PIXELS = 1 << 30
FIX_HINT = "fix the annotation or pass --on-error skip"


class RecordProblem(Exception):
    """A record is invalid: carries the reason, which `OnErrorPolicy` turns into an error or a `SkipInfo`."""


def resolve_image_path(image_root: str | Path, record: ImageRecord) -> Path:
    """The path of ``record``'s image under ``image_root``.

    Absolute names (``/x``, ``\\x``, ``C:x``) and names whose ``..`` parts climb above the root are refused
    (lexically, as at load time); ``a/../b.jpg`` is fine. Symlinks are followed, but the file they lead to
    must lie inside the (resolved) root: a link in the image folder cannot feed a file from elsewhere on the
    machine into the cache. The root itself may be a link.

    Raises
    ------
    AnnotationError
        Naming the image id and the file name.
    """
    reason = unsafe_file_name_reason(record.file_name)
    if reason is not None:
        raise AnnotationError(
            f"image {record.image_id} (file_name {record.file_name!r}): {reason}; "
            "file names must be relative to the image root; " + FIX_HINT
        )
    root = Path(image_root)
    path = root / record.file_name
    real_root, real = root.resolve(), path.resolve()  # a missing file resolves as far as it exists
    if not real.is_relative_to(real_root):
        raise AnnotationError(
            f"image {record.image_id} (file_name {record.file_name!r}): a symlink leads outside the image root "
            f"(to {str(real)!r}); copy the file into the root, or pass the folder that holds it as the image "
            "root; " + FIX_HINT
        )
    return path


def unsafe_file_name_reason(name: str) -> str | None:
    """Why ``name`` may not name an image under the image root (absolute, escaping, empty), or None."""
    if not name or "\x00" in name:
        return "empty file_name or NUL character"
    if name[0] in "/\\" or re.match(r"^[A-Za-z]:", name):
        return "absolute file_name is refused"
    depth = 0
    for part in re.split(r"[\\/]", name):
        if part == "..":
            depth -= 1
            if depth < 0:
                return "file_name escapes the image root ('..')"
        elif part not in ("", "."):
            depth += 1
    if depth == 0:
        return "file_name names no file"
    return None


class OnErrorPolicy:
    """Turns rejections into an AnnotationError (``fail``) or a recorded SkipInfo (``skip``)."""

    def __init__(self, on_error: str):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.fail = on_error == "fail"
        self.skips: list[SkipInfo] = []

    def reject(self, where: str, reason: str, *, image_id=None, annotation_id=None, file_name=None) -> None:
        if self.fail:
            raise AnnotationError(f"{where}: {reason}; {FIX_HINT}")
        self.skips.append(SkipInfo(image_id, annotation_id, file_name, reason))

    def record(self, reason: str, *, image_id=None, annotation_id=None, file_name=None) -> None:
        self.skips.append(SkipInfo(image_id, annotation_id, file_name, reason))


def as_int(value: Any, what: str) -> int:
    """An int from JSON: ints and integral floats; bools and everything else are refused."""
    if isinstance(value, bool):
        raise RecordProblem(f"{what} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise RecordProblem(f"{what} must be an integer, got {value!r}")


def as_id(value: Any, what: str, fix: str) -> int:
    """An image or annotation id: an integer (`as_int`) in the 64-bit signed range; ``fix`` says how to renumber."""
    number = as_int(value, what)
    if not INT64_MIN <= number <= INT64_MAX:
        raise RecordProblem(f"{what} {number} is outside the 64-bit signed range -2**63 .. 2**63-1 that the cache stores ids in; {fix}")
    return number


def parse_image(img: Any) -> tuple[int, str, int, int]:
    """A COCO-style image entry's (id, file_name, height, width), each checked; `RecordProblem` otherwise."""
    if not isinstance(img, dict):
        raise RecordProblem(f"must be an object, got {type(img).__name__}")
    image_id = as_id(img.get("id"), "id", "renumber the image (its id and its annotations' image_id)")
    name = img.get("file_name")
    if not isinstance(name, str):
        raise RecordProblem(f"file_name must be a string, got {name!r}")
    height = as_int(img.get("height"), "height")
    width = as_int(img.get("width"), "width")
    if height <= 0 or width <= 0:
        raise RecordProblem(f"height and width must be positive, got {height} x {width}")
    if max(height, width) > MAX_IMAGE_SIDE or height * width > MAX_IMAGE_PIXELS:
        raise RecordProblem(
            f"height x width {height} x {width} is beyond what can be decoded and rasterised (at most "
            f"{MAX_IMAGE_SIDE} per side and {MAX_IMAGE_PIXELS} pixels)"
        )
    reason = unsafe_file_name_reason(name)
    if reason is not None:
        raise RecordProblem(f"{reason} (file_name {name!r}); file names must be relative to the image root")
    return image_id, name, height, width


def read_coco_json(path: Path, *, kind: str) -> tuple[dict, str]:
    """A COCO JSON file (``kind``: "instances" or "panoptic", for the message) with its three top-level lists
    checked: ``images``, ``categories``, ``annotations``; and the sha256 of its bytes (the manifest's source),
    from the one read. AnnotationError naming the file otherwise."""
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: not valid JSON ({exc}); fix the file") from exc
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: the top level must be an object, got {type(data).__name__}")
    for key in ("images", "categories", "annotations"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(
                f"{path}: {key!r} must be a list, got {type(data.get(key)).__name__}; is this a COCO {kind} file?"
            )
    return data, hashlib.sha256(raw).hexdigest()
