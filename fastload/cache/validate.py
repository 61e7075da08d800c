"""One validation of every stored sample, before any decoder or GPU sees it; every path that reads a cache calls it.

The CRC-32s and sha256s catch damage. They cannot catch content that lies: a member edited and re-hashed (by
a person or a buggy tool) passes them. So each sample's members are checked against each other and against the
index from their headers alone, without decoding anything, and every size a decoder will allocate from is
bounded first. `checked_sample` runs every check below; `CacheDataset.read_members` calls it on each read, so
`open_cache`, both loaders and their read-aheads get it, and `verify_cache` calls it on what it reads itself.

==============  ============================================================================================
what            checked
==============  ============================================================================================
sample size     the index's height and width are positive and height · width <= the cache's
                ``max_image_pixels`` (the build's limit, recorded in the manifest)
image member    the size its header declares (`fastload.cache.images.image_header_size`: JPEG SOF, PNG IHDR,
                WebP VP8/VP8L/VP8X, BMP, TIFF) is the sample's: a decoder allocates what the index says
label members   each header is self-consistent (`fastload.cache.format.parse_label`: bands of the writer's
                rows, as many as cover the height, each 1..LZ4-bound bytes, filling the member exactly) and,
                for BOTH members, holds its kind's dtype and the sample's height and width (so both members'
                bands have the same shape)
meta member     JSON within a size and a depth bound (`fastload.cache.format.decode_meta`), an object whose
                height, width and image_id are the index's, whose ``instances`` is a list of at most
                ``MAX_INSTANCES`` objects: the instance count a renderer sizes its tables by (``max_id``)
==============  ============================================================================================

After decoding, `check_instance_ids` holds the instance mask's ids to the meta's count (the CPU paths call it
in `fastload.cache.reader.decode_labels`). `check_label_bands` decompresses a label's bands to check that each
comes out exactly its raw size: the CPU decoder does that anyway; DALI's GPU inflate zero-fills a band that
comes out short, so a GPU feed that wants this guarantee too must pay for a CPU decompression.

Every failure is a `CacheError` naming the member and field; the caller prefixes the shard and the sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lz4.block
import numpy as np

from fastload.cache.config import DEFAULT_MAX_IMAGE_PIXELS
from fastload.cache.format import LABEL_DTYPES, LabelLayout, decode_meta, parse_label
from fastload.cache.images import image_header_size
from fastload.errors import CacheError, ImageError
from fastload.labels import MAX_INSTANCES

LABEL_NAMES = {"sem": "semantic", "ins": "instance"}


@dataclass(frozen=True)
class CheckedSample:
    """What `checked_sample` found valid: the parsed meta and both label members' layouts (band tables)."""

    meta: dict[str, Any]
    semantic: LabelLayout
    instance: LabelLayout


def checked_sample(
    *,
    image: bytes,
    semantic: bytes,
    instance: bytes,
    meta: bytes,
    hw: tuple[int, int],
    image_id: int | None = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> CheckedSample:
    """Check a sample's encoded members against each other and against its index entry (size ``hw``, ``image_id``).

    Raises
    ------
    CacheError
        Naming the member and field of the first check that fails (see the module's table).
    """
    hw = checked_sample_size(hw, max_pixels=max_pixels)
    checked_image_size(image, hw, max_pixels=max_pixels)
    sem, ins = checked_label_layouts(semantic, instance, hw)
    return CheckedSample(checked_meta(meta, hw, image_id=image_id), sem, ins)


def checked_sample_size(hw: Any, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(H, W)`` of an index entry, checked: positive integers, at most ``max_pixels`` pixels."""
    try:
        height, width = hw
    except (TypeError, ValueError):
        raise CacheError(f"index: size {hw!r} is not a (height, width) pair") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in (height, width)):
        raise CacheError(f"index: size {height!r} x {width!r} is not a positive height and width")
    height, width = int(height), int(width)
    if height * width > max_pixels:
        raise CacheError(
            f"index: the sample is {height} x {width} = {height * width} pixels, more than the cache's "
            f"max_image_pixels ({max_pixels})"
        )
    return height, width


def checked_image_size(data: bytes, hw: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """The image member's size from its header (no decoding), checked: at most ``max_pixels``, equal to ``hw``."""
    try:
        height, width = image_header_size(data)
    except ImageError as exc:
        raise CacheError(f"image member: {exc}") from None
    if height * width > max_pixels:
        raise CacheError(
            f"image member: its header declares {height} x {width} = {height * width} pixels, more than "
            f"max_image_pixels ({max_pixels})"
        )
    if (height, width) != tuple(hw):
        raise CacheError(f"image member: its header declares {height} x {width} (H x W), the sample is {hw[0]} x {hw[1]}")
    return height, width


def checked_label_layouts(semantic: bytes, instance: bytes, hw: tuple[int, int]) -> tuple[LabelLayout, LabelLayout]:
    """Both label members' headers, checked against each other and the sample's size ``hw``: (semantic, instance).

    Each layout passed `parse_label` (bands of ``rows_per_band(W)`` rows covering the height, sizes within
    LZ4's bound, offsets inside the member), holds its kind's dtype (uint8 semantic, uint16 instance) and is
    ``hw`` in size; so both have the same ``band_shape`` and ``padded_height``, and a GPU feed may take its
    band tables (``band_offsets``, ``band_sizes``) from them as they are.

    Raises
    ------
    CacheError
        Naming the member ("semantic" / "instance") and the field.
    """
    layouts = []
    for kind, data in (("sem", semantic), ("ins", instance)):
        what = LABEL_NAMES[kind]
        layout = parse_label(data, what=what)
        if layout.dtype != LABEL_DTYPES[kind]:
            raise CacheError(f"{what} member holds {layout.dtype.name}, expected {LABEL_DTYPES[kind].name} (dtype code)")
        if (layout.height, layout.width) != tuple(hw):
            raise CacheError(f"{what} member is {layout.height} x {layout.width}, the sample {hw[0]} x {hw[1]}")
        layouts.append(layout)
    return layouts[0], layouts[1]


def checked_meta(data: bytes, hw: tuple[int, int], *, image_id: int | None = None) -> dict[str, Any]:
    """The meta member parsed within bounds and checked: its size (and image id) the index's, its instance
    table a list of at most ``MAX_INSTANCES`` objects."""
    meta = decode_meta(data)
    if (meta.get("height"), meta.get("width")) != tuple(hw):
        raise CacheError(f"meta member says {meta.get('height')!r} x {meta.get('width')!r}, the index {hw[0]} x {hw[1]}")
    if image_id is not None and meta.get("image_id") != image_id:
        raise CacheError(f"meta member's image_id {meta.get('image_id')!r} differs from the index's {image_id}")
    instances = meta.get("instances")
    if not isinstance(instances, list):
        raise CacheError(f"meta member's instances is {type(instances).__name__}, not a list")
    if len(instances) > MAX_INSTANCES:
        raise CacheError(f"meta member lists {len(instances)} instances; a sample holds at most {MAX_INSTANCES}")
    if not all(isinstance(row, dict) for row in instances):
        raise CacheError("meta member's instances are not all objects")
    return meta


def check_instance_ids(instance: np.ndarray, count: int) -> None:
    """A decoded instance mask's ids lie in ``0..count`` (the meta's instance count, <= ``MAX_INSTANCES``)."""
    high = int(instance.max(initial=0))
    if high > count:
        beyond = f"; ids above {MAX_INSTANCES} do not fit the int16 the loaders read them as" if high > MAX_INSTANCES else ""
        raise CacheError(f"instance member holds id {high}, above the {count} instance(s) its meta lists{beyond}")


def check_label_bands(data: bytes, layout: LabelLayout, *, what: str) -> None:
    """Each LZ4 band of a label member decompresses to exactly its raw size (rows_per_band · W · itemsize).

    A CPU decompression of the whole member (the result is dropped): what a GPU feed pays for knowing that no
    band is short before DALI's inflate zero-fills it.
    """
    raw = layout.rows_per_band * layout.width * layout.dtype.itemsize
    view = memoryview(data)
    for k, (offset, size) in enumerate(zip(layout.band_offsets.tolist(), layout.band_sizes.tolist(), strict=True)):
        try:
            got = len(lz4.block.decompress(view[offset : offset + size], uncompressed_size=raw))
        except lz4.block.LZ4BlockError as exc:
            raise CacheError(f"{what} member: band {k} does not decompress ({exc})") from None
        if got != raw:
            raise CacheError(f"{what} member: band {k} decompresses to {got} bytes, its {layout.rows_per_band} rows are {raw}")


def shard_path(root: Path, name: str) -> Path:
    """The real path of the cache file ``name`` (a shard's tar or index), which must lie inside the cache folder.

    Symlinks are followed first: a link inside the folder to a file outside it is refused, one to a file
    inside it is fine, and the folder itself may be a link.
    """
    base = Path(root).resolve()
    real = (base / name).resolve()
    if real == base or not real.is_relative_to(base):
        raise CacheError(
            f"{name} resolves to {real}, outside the cache folder {base} (a symbolic link out of it?); the files "
            "of a cache must lie inside its folder: copy the file in instead of linking it"
        )
    return real
