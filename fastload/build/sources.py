"""One per-image label type for every input format: `LabelImage`, its lazily computed `ImageLabels`.

A reader (`fastload.build.coco_panoptic`, `fastload.build.cityscapes`, `fastload.build.coco_instances`) returns a
`LabelDataset`: the images in a fixed order, the categories (train ids 1..K, which of them are *things*) and the
records it skipped. Each `LabelImage` carries what its masks are computed from (its `LabelSource`: a PNG to
decode, polygons to draw) but not the masks: the cache writer calls ``image.labels()`` in a worker, one image at
a time, and gets an `ImageLabels`.

Masks (`ImageLabels`)
    ``semantic`` uint8 (H, W): train ids 1..K, 0 = background (a pixel of no class; COCO panoptic and Cityscapes
    label every pixel or call it void, so there it does not occur), 255 = ignore (void, unlabelled, crowd under
    ``crowd="ignore"``). ``instance`` int32 (H, W): ids 1..N for the visible *thing* instances, 0 elsewhere (stuff,
    void, crowd). ``instances[k]`` (a `Thing`) is instance ``k + 1``. ``table()`` gives the rows the cache stores,
    `fastload.build.tables.instance_table`'s: one per visible thing instance (a crowd is never one).

Crowd policy (``crowd``)

=============  =========================================  ===================================================
``crowd``      semantic of a crowd region                 who does it
=============  =========================================  ===================================================
``"ignore"``   255 (ignore), the default                  fastload's COCO instances path; Panoptic-DeepLab on
                                                          COCO (``ignore_crowd_in_semantic``)
``"class"``    its category's train id                    Cityscapes' ``json2labelImg`` (``cargroup`` = car);
                                                          Panoptic-DeepLab on Cityscapes
=============  =========================================  ===================================================

A crowd region is never an instance under either policy.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from fastload.build.rules import unsafe_file_name_reason  # one rule for every reader's file names
from fastload.build.tables import instance_table
from fastload.cache.config import DEFAULT_MAX_IMAGE_PIXELS
from fastload.cache.manifest import SkipInfo

Crowd = Literal["ignore", "class"]
CROWD_CHOICES: tuple[str, ...] = ("ignore", "class")


def check_crowd(crowd: Any) -> Crowd:
    """``crowd`` if it is one of `CROWD_CHOICES`, else a ValueError listing them."""
    if crowd not in CROWD_CHOICES:
        raise ValueError(f"crowd must be one of {CROWD_CHOICES}, got {crowd!r}")
    return crowd


def stable_image_id(name: str) -> int:
    """A 63-bit image id from a name (a Cityscapes frame ``aachen_000000_000019``, a string COCO image id).

    The first 8 bytes of the name's UTF-8 sha256, shifted right by one: in 0..2^63-1 (the cache stores image ids as
    int64), the same on every machine and run, and independent of which other images a data set holds (an index
    would renumber images when one is added, and move them between ``--split`` parts, which hash the id).
    """
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") >> 1


@dataclass(frozen=True)
class LabelCategory:
    """A class that is trained on: source id (COCO category id, Cityscapes label id), name, train id 1..K."""

    coco_id: int
    name: str
    train_id: int
    isthing: bool


@dataclass(frozen=True)
class Thing:
    """What the instance table records of one instance, besides what its pixels give (bbox, area, centre).

    annotation_id : the source's id of the object (COCO panoptic segment id, Cityscapes object index)
    category_id : the source's category id (`LabelCategory.coco_id`)
    """

    annotation_id: int
    category_id: int
    train_id: int
    iscrowd: bool = False


@dataclass(frozen=True, eq=False)
class ImageLabels:
    """The masks of one image (the field names of `fastload.build.raster.RasterResult`, so the writer's code serves both).

    Attributes
    ----------
    semantic : uint8 (H, W)
        Train ids, 0 background, 255 ignore.
    instance : int32 (H, W)
        Thing instance ids 1..N, 0 elsewhere.
    instances : tuple of Thing
        ``instances[k]`` is instance ``k + 1``; every one has at least one pixel.
    """

    semantic: np.ndarray
    instance: np.ndarray
    instances: tuple[Thing, ...]

    @functools.cached_property
    def boxes(self) -> np.ndarray:
        """int64 (N, 4): ``[x, y, w, h]`` of instance ``k + 1``'s pixels (as `RasterResult.boxes`), computed once.

        From the mask's runs (a row's stretches of one id): two passes over the mask, then work per run.
        """
        height, width = self.instance.shape
        flat = self.instance.ravel()
        change = np.ones(flat.size, dtype=bool)
        np.not_equal(flat[1:], flat[:-1], out=change[1:])
        change[::width] = True  # a run never crosses into the next row
        starts = np.flatnonzero(change)
        ends = np.append(starts[1:], flat.size) - 1  # each run's last pixel
        values = flat[starts]
        inside = values > 0
        starts, ends, ids = starts[inside], ends[inside], values[inside].astype(np.intp) - 1
        n = len(self.instances)
        lo = np.full((2, n), np.iinfo(np.int64).max, np.int64)
        hi = np.full((2, n), -1, np.int64)
        rows = starts // width
        np.minimum.at(lo[0], ids, starts % width)
        np.maximum.at(hi[0], ids, ends % width)
        np.minimum.at(lo[1], ids, rows)
        np.maximum.at(hi[1], ids, rows)
        return np.concatenate([lo.T, (hi - lo + 1).T], axis=1)

    def table(self) -> list[dict]:
        """The instance table the cache stores: `fastload.build.tables.instance_table`'s rows, one per instance.

        Every row is a visible, non-crowd instance of a thing class (that is what an instance is here), so the
        rows carry no ``iscrowd`` or ``isthing`` field: the manifest says which train ids are things.
        """
        return instance_table(self)  # type: ignore[arg-type]


class LabelSource(Protocol):
    """What a `LabelImage`'s masks are computed from (a format's reader makes it; it must pickle)."""

    def render(self, image: LabelImage, *, max_image_pixels: int) -> ImageLabels:
        """The image's masks. Raises ImageError (a label file missing or undecodable) or AnnotationError."""
        ...

    def summary(self) -> dict[str, Any]:
        """JSON-able, cheap: everything the masks depend on (file sizes, not file contents), for fingerprints."""
        ...


@dataclass(frozen=True, eq=False)
class LabelImage:
    """One image of a data set: where its picture is (``file_name`` under the image root) and its labels' source.

    ``file_name`` is relative (checked at load time as `fastload.build.rules.resolve_image_path` checks it; the writer
    resolves it with that function). ``height`` x ``width`` is the picture's size, which the masks have.
    """

    image_id: int
    file_name: str
    height: int
    width: int
    source: LabelSource

    def labels(self, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImageLabels:
        """Compute the masks (reads and decodes label files: call it in a worker).

        Parameters
        ----------
        max_image_pixels : int
            A label image whose header declares more pixels is refused before it is decoded (the cache
            config's ``max_image_pixels``).

        Raises
        ------
        ImageError
            A label file (panoptic PNG) is missing, unreadable, not a 3-channel 8-bit PNG, of another size.
        AnnotationError
            The labels disagree with the JSON (an id in the PNG that ``segments_info`` does not list), an unsafe
            label file name.
        """
        return self.source.render(self, max_image_pixels=max_image_pixels)

    def summary(self) -> dict[str, Any]:
        """What this image's cache sample depends on, JSON-able (for the writer's shard fingerprints)."""
        return {
            "image_id": self.image_id,
            "file_name": self.file_name,
            "height": self.height,
            "width": self.width,
            "labels": self.source.summary(),
        }


@dataclass(frozen=True)
class LabelDataset:
    """A data set as a reader returns it: images in a fixed order, categories by train id, what was skipped."""

    images: tuple[LabelImage, ...]
    categories: tuple[LabelCategory, ...]
    skips: tuple[SkipInfo, ...]
    # sha256 of the annotations as the reader read them (the JSON file; Cityscapes: its polygon files, each by
    # its path and sha256 in file order): the manifest's source, from the same bytes as the records
    source_sha256: str

    @property
    def thing_train_ids(self) -> tuple[int, ...]:
        """The train ids of the thing classes, ascending (the manifest records them)."""
        return tuple(c.train_id for c in self.categories if c.isthing)


def labels_from_regions(regions: np.ndarray, semantic: np.ndarray, things: Sequence[Thing | None]) -> ImageLabels:
    """Masks from a region map: every pixel holds the index of the region on top there.

    Parameters
    ----------
    regions : integer (H, W)
        Region indices 0..R-1 (0: no region, e.g. void).
    semantic : uint8 (R,)
        The train id (or 255) each region paints.
    things : sequence of R entries
        ``Thing`` for a region that is a thing instance, None for the others (void, stuff, crowd).

    Returns
    -------
    ImageLabels
        Instance ids 1..N go to the thing regions with at least one pixel, in region order.
    """
    regions = np.asarray(regions)
    lut_semantic = np.asarray(semantic, dtype=np.uint8)
    if len(things) != lut_semantic.shape[0]:
        raise ValueError(f"{len(things)} thing entries for {lut_semantic.shape[0]} regions")
    counts = np.bincount(regions.ravel(), minlength=len(things))
    if counts.shape[0] > len(things):
        raise ValueError(f"region map holds index {counts.shape[0] - 1}, only {len(things)} regions are described")
    lut_instance = np.zeros(len(things), dtype=np.int32)
    kept: list[Thing] = []
    for region, thing in enumerate(things):
        if thing is not None and counts[region] > 0:
            kept.append(thing)
            lut_instance[region] = len(kept)
    return ImageLabels(lut_semantic[regions], lut_instance[regions], tuple(kept))


def relative_file_name_problem(name: Any) -> str | None:
    """Why ``name`` is not a safe relative file name (`fastload.build.coco`'s rule), or None."""
    if not isinstance(name, str):
        return f"must be a string, got {name!r}"
    return unsafe_file_name_reason(name)


def file_size(path: Path) -> int | None:
    """A file's size in bytes, or None if it cannot be read (fingerprints notice a fixed or replaced file)."""
    try:
        return path.stat().st_size
    except OSError:
        return None
