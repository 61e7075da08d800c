"""``manifest.json`` as a cache's readers see it: its schema (`Manifest` and its parts), parsing, loading.

The build assembles and writes it (`fastload.build.assemble`); every reader of a cache — the loaders, verify,
``cache info`` — goes through `load_manifest`, which checks every field before anything uses it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastload.cache.config import DEFAULT_MAX_IMAGE_PIXELS, EXIF_ORIENTATIONS
from fastload.cache.format import LABEL_MAGIC, LABEL_VERSION, MEMBER_KINDS, SCHEMA_VERSION
from fastload.cache.jsonio import JsonNode, Malformed, loads_json, show_value
from fastload.errors import CacheError
from fastload.labels import BACKGROUND_NAME, MAX_CLASSES

MANIFEST_NAME = "manifest.json"
BACKGROUND = BACKGROUND_NAME  # the name of train id 0 in ``classes`` (torchvision's word for it)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the range of image and annotation ids (the reader's int64 tables)
BYTE_KINDS = MEMBER_KINDS
LABEL_FORMAT = f"{LABEL_MAGIC.decode()} v{LABEL_VERSION}"  # the label members' layout (fastload.cache.format)
SOURCE_FORMATS = ("coco", "coco_panoptic", "cityscapes")  # what a cache is built from (fastload.build.inputs)


# ----------------------------------------------------------------------------------------------- file helpers


def read_json(path: Path, *, what: str) -> Any:
    """A JSON file of the cache, parsed within `fastload.cache.jsonio.loads_json`'s depth bound."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CacheError(f"{what} {path} is unreadable ({exc}); rebuild with --resume") from exc
    try:
        return loads_json(data, what=f"{what} {path}")
    except CacheError as exc:
        raise CacheError(f"{exc}; rebuild with --resume") from None


def sha256_file(path: Path, *, chunk: int = 1 << 22) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            sha.update(block)
    return sha.hexdigest()


@dataclass(frozen=True)
class CategoryInfo:
    coco_id: int  # the source's category id (COCO category id, Cityscapes label id)
    train_id: int  # 1..K (0 is background, 255 ignore)
    name: str
    instances: int  # instances of this class stored in the cache (0 for stuff)
    isthing: bool = True  # a thing has instances; stuff is semantic only. A cache from before: every class a thing
    pixels: int | None = None  # pixels of this class in the stored semantic masks; None: a cache from before


@dataclass(frozen=True)
class PixelCounts:
    """The stored semantic masks' pixels: all of them, background (train id 0) and ignore (255).

    A class's share of the labelled pixels is ``CategoryInfo.pixels / labelled`` (`labelled`: all but ignore).
    """

    total: int
    background: int
    ignore: int

    @property
    def labelled(self) -> int:
        return self.total - self.ignore


@dataclass(frozen=True)
class ShardInfo:
    index: int  # shard number k: holds images [k*S, (k+1)*S)
    file: str  # "shard-00000.tar"
    samples: int
    bytes: int
    sha256: str
    index_file: str  # our JSON index, "shard-00000.json"
    index_sha256: str
    dali_index: str  # DALI's index, "shard-00000.idx"
    dali_index_sha256: str


@dataclass(frozen=True)
class SkipInfo:
    image_id: int | None
    annotation_id: int | None
    file_name: str | None
    reason: str


@dataclass(frozen=True)
class NormalisedInfo:
    """A sample whose image bytes the build changed so that every decoder reads the same grid (what: how)."""

    image_id: int
    file_name: str
    what: str


@dataclass(frozen=True)
class MemberBytes:
    image: int
    sem: int
    ins: int
    meta: int


@dataclass(frozen=True)
class SplitInfo:
    """Which split of a ``fastload cache build --split`` this cache is (fastload.build.split).

    name      : "train" (what the other splits leave) or a name given to --split ("val", ...)
    fractions : the fractions as given, e.g. (("val", 0.1),); train takes the rest
    seed      : the seed of the per-image draw
    """

    name: str
    fractions: tuple[tuple[str, float], ...]
    seed: int


@dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.json`` (schema 2; see docs/design.md "The cache")."""

    schema_version: int
    fastload_version: str
    samples_per_shard: int
    label_compression: int
    label_format: str
    categories: tuple[CategoryInfo, ...]
    num_classes: int  # K + 1, the logits a model needs: train ids 0 (background) .. K; 255 = ignore is not a class
    coco_sha256: str  # sha256 of the annotations (the JSON file; Cityscapes: its polygon files, build.inputs)
    images: int  # validated images (sample positions), skipped ones included
    samples: int
    instances: int
    skips: tuple[SkipInfo, ...]
    normalised: tuple[NormalisedInfo, ...]  # samples stored with changed image bytes (fastload.cache.images)
    shards: tuple[ShardInfo, ...]
    total_bytes: int
    member_bytes: MemberBytes
    split: SplitInfo | None = None  # set when the cache is one split of a build with --split
    # the build's image rules; a cache built before they were recorded kept the stored grid, under the default limit
    exif_orientation: str = "ignore"
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    # what the cache was built from: "coco", "coco_panoptic" or "cityscapes" (a cache from before: "coco")
    source_format: str = "coco"
    pixels: PixelCounts | None = None  # the semantic masks' pixel counts; None: a cache from before they were recorded

    @property
    def thing_train_ids(self) -> tuple[int, ...]:
        """Train ids of the thing classes (instances, centres, offsets), ascending; every class in a cache built
        before things and stuff were recorded."""
        return tuple(c.train_id for c in self.categories if c.isthing)

    @property
    def stuff_train_ids(self) -> tuple[int, ...]:
        """Train ids of the stuff classes (semantic mask only, instance 0), ascending."""
        return tuple(c.train_id for c in self.categories if not c.isthing)

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names by train id: ``classes[0]`` is ``"__background__"`` (train id 0, pixels of no object),
        ``classes[k]`` the category of train id k = 1..K. ``len(classes) == num_classes``; the ignore label 255
        (crowd regions, outside the image) is not a class."""
        return (BACKGROUND, *(c.name for c in self.categories))


def parse_manifest(data: Any, *, where: str) -> Manifest:
    """Validate a manifest dict (schema version first) and turn it into a `Manifest`.

    Every key is checked for presence and type (a CacheError names it, e.g. ``shards[2].samples``), counts
    for range, and shard file names must be plain names inside the cache folder.
    """
    if not isinstance(data, dict) or not isinstance(data.get("schema_version"), int):
        raise CacheError(f"{where}: not a fastload cache manifest (no integer schema_version)")
    version = data["schema_version"]
    if version > SCHEMA_VERSION:
        raise CacheError(
            f"{where}: cache schema_version {version} was written by a newer fastload "
            f"({data.get('fastload_version', '?')}); this one reads schema_version <= {SCHEMA_VERSION}: "
            "upgrade fastload"
        )
    if version < 1:
        raise CacheError(f"{where}: invalid schema_version {version}")
    if version < SCHEMA_VERSION:
        raise CacheError(
            f"{where}: this cache has schema_version {version} (written by fastload {data.get('fastload_version', '?')}: "
            f"label PNGs and heat/offset maps made before augmentation); this fastload reads schema_version "
            f"{SCHEMA_VERSION} (LZ4 labels, maps rendered after augmentation): rebuild it with the same command, "
            "`fastload cache build --coco ... --images ... --out <this folder>` (no shard can be kept)"
        )
    try:
        return _parse(JsonNode(data, ""), version)
    except Malformed as exc:
        raise CacheError(f"{where}: malformed manifest ({exc}); rebuild the cache") from None


def _parse(m: JsonNode, version: int) -> Manifest:
    cfg, counts, members = m.node("config"), m.node("counts"), m.node("bytes").node("members")
    label_format = cfg.text("label_format")
    if label_format != LABEL_FORMAT:
        raise Malformed(f"config.label_format is {label_format!r}; this fastload reads {LABEL_FORMAT!r}")
    categories = tuple(
        CategoryInfo(
            coco_id=c.integer("coco_id", maximum=INT64_MAX), train_id=c.integer("train_id", minimum=1), name=c.text("name"),
            instances=c.integer("instances"), isthing=c.boolean("isthing") if "isthing" in c.value else True,
            pixels=c.integer("pixels") if "pixels" in c.value else None,
        )
        for c in m.nodes("categories")
    )  # fmt: skip
    if len(categories) > MAX_CLASSES:
        raise Malformed(f"{len(categories)} categories; a cache holds at most {MAX_CLASSES} (train ids 1..{MAX_CLASSES})")
    train_ids = [c.train_id for c in categories]
    if train_ids != list(range(1, len(categories) + 1)):
        raise Malformed(f"categories must hold train ids 1..{len(categories)} in order, got {train_ids[:10]}")
    num_classes = m.integer("num_classes", minimum=1)
    if num_classes != len(categories) + 1:
        raise Malformed(f"num_classes is {num_classes}, categories hold {len(categories)} classes + background")
    return Manifest(
        schema_version=version,
        fastload_version=m.text("fastload_version"),
        samples_per_shard=cfg.integer("samples_per_shard", minimum=1),
        label_compression=cfg.integer("label_compression", maximum=12),
        label_format=label_format,
        categories=categories,
        num_classes=num_classes,
        coco_sha256=m.node("source").text("coco_sha256"),
        images=counts.integer("images"),
        samples=counts.integer("samples"),
        instances=counts.integer("instances"),
        skips=tuple(
            SkipInfo(
                image_id=s.integer("image_id", minimum=INT64_MIN, maximum=INT64_MAX, optional=True),
                annotation_id=s.integer("annotation_id", minimum=INT64_MIN, maximum=INT64_MAX, optional=True),
                file_name=s.text("file_name", optional=True),
                reason=s.text("reason"),
            )
            for s in m.nodes("skips")
        ),
        normalised=_normalised(m, counts),
        shards=tuple(
            ShardInfo(
                index=s.integer("index"),
                file=s.file_name("file"),
                samples=s.integer("samples", minimum=1),
                bytes=s.integer("bytes"),
                sha256=s.text("sha256"),
                index_file=s.file_name("index_file"),
                index_sha256=s.text("index_sha256"),
                dali_index=s.file_name("dali_index"),
                dali_index_sha256=s.text("dali_index_sha256"),
            )
            for s in m.nodes("shards")
        ),
        total_bytes=m.node("bytes").integer("total"),
        member_bytes=MemberBytes(**{kind: members.integer(kind) for kind in BYTE_KINDS}),
        split=_split(m),
        exif_orientation=cfg.choice("exif_orientation", EXIF_ORIENTATIONS) if "exif_orientation" in cfg.value else "ignore",
        max_image_pixels=cfg.integer("max_image_pixels", minimum=1) if "max_image_pixels" in cfg.value else DEFAULT_MAX_IMAGE_PIXELS,
        source_format=m.node("source").choice("format", SOURCE_FORMATS) if "format" in m.node("source").value else "coco",
        pixels=_pixels(m, categories),
    )


def _pixels(m: JsonNode, categories: tuple[CategoryInfo, ...]) -> PixelCounts | None:
    """The optional ``pixels`` entry, checked against the categories' ``pixels``: both there or neither, and
    the classes' pixels, background and ignore add up to the total."""
    have = [c.pixels is not None for c in categories]
    if "pixels" not in m.value:
        if any(have):
            raise Malformed("categories hold pixels, but the manifest has no pixels entry")
        return None
    node = m.node("pixels")
    counts = PixelCounts(total=node.integer("total"), background=node.integer("background"), ignore=node.integer("ignore"))
    if not all(have):
        missing = next(c.train_id for c in categories if c.pixels is None)
        raise Malformed(f"pixels is given, but the category of train id {missing} has no pixels")
    summed = counts.background + counts.ignore + sum(c.pixels for c in categories)
    if summed != counts.total:
        raise Malformed(f"pixels.total is {counts.total}, the classes, background and ignore hold {summed}")
    return counts


def _split(m: JsonNode) -> SplitInfo | None:
    """The optional ``split`` entry (caches built with --split; older caches and plain builds have none)."""
    if m.value.get("split") is None:
        return None
    split = m.node("split")
    fractions = split.node("fractions")
    pairs = []
    for name, value in fractions.value.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise Malformed(f"split.fractions.{name} must be a number in (0, 1), got {show_value(value)}")
        pairs.append((name, float(value)))
    return SplitInfo(name=split.text("name"), fractions=tuple(pairs), seed=split.integer("seed"))


def _normalised(m: JsonNode, counts: JsonNode) -> tuple[NormalisedInfo, ...]:
    entries = tuple(
        NormalisedInfo(image_id=n.integer("image_id", minimum=INT64_MIN, maximum=INT64_MAX), file_name=n.text("file_name"), what=n.text("what"))
        for n in m.nodes("normalised")
    )
    if counts.integer("normalised") != len(entries):
        raise Malformed(f"counts.normalised is {counts.value['normalised']}, normalised lists {len(entries)} samples")
    return entries


def load_manifest(cache_dir: str | Path) -> Manifest:
    """Read and validate ``CACHE/manifest.json``; a missing one means the build did not finish."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise CacheError(f"cache directory {str(cache_dir)!r} does not exist; build it with `fastload cache build`")
    path = cache_dir / MANIFEST_NAME
    try:
        data = read_json(path, what="manifest")
    except FileNotFoundError:
        parts = sorted(p.name for p in cache_dir.glob("manifest.part-*.json"))
        hint = (
            f"found partial manifests {parts[:4]}: run `fastload cache merge {cache_dir}` once every node is done"
            if parts
            else f"the build did not finish: run `fastload cache build ... --out {cache_dir} --resume`"
        )
        raise CacheError(f"{path} is missing; {hint}") from None
    return parse_manifest(data, where=str(path))
