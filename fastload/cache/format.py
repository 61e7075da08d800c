"""The cache's on-disk format: member kinds, their encoders/decoders, deterministic tar writing, DALI's index.

Everything here is a pure function of its inputs (bytes in, arrays out or the reverse) so the writer, the
reader, `verify` and the CPU loader share one definition of every member. A sample's members, in tar order:

==========  =================  ==========================================================================
kind        name               content
==========  =================  ==========================================================================
``image``   ``KEY.<ext>``      the source image bytes, unchanged unless the build normalised them (the
                               manifest lists each: `fastload.cache.images`); ``ext`` names the *content*
                               (jpg, png, bmp, webp; a TIFF is stored as png), sniffed from the magic bytes
``sem``     ``KEY.sem.lz4``    uint8 (H, W) semantic train ids, 0 background, 255 ignore; LZ4 label member
``ins``     ``KEY.ins.lz4``    uint16 (H, W) instance ids 1..N (N <= 32767), 0 background; LZ4 label member
``meta``    ``KEY.json``       JSON ``{image_id, file_name, height, width, instances: [...]}``: the instance
                               table (ids, annotation ids, categories, train ids, bbox, area, centre)
==========  =================  ==========================================================================

Heat and offset maps are not stored: the loaders render them after augmentation from the warped instance
mask (``fastload.targets``), which is Panoptic-DeepLab's definition; ``open_cache(...)[i]`` computes them on
access for the unaugmented sample.
"""

from __future__ import annotations

import hashlib
import struct
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import cv2
import lz4.block
import numpy as np

from fastload.cache.images import webp_chunks
from fastload.cache.jpeg import jpeg_end
from fastload.cache.jsonio import dumps_canonical, loads_json
from fastload.errors import CacheError
from fastload.labels import INSTANCE_FILL, SEMANTIC_FILL

SCHEMA_VERSION = 2  # of manifest.json, the shard indexes and the completion records (1: label PNGs and maps)

# tar order of a sample's members; the image's extension depends on its content (see IMAGE_FORMATS)
MEMBER_KINDS = ("image", "sem", "ins", "meta")
LABEL_EXTENSIONS = {"sem": "sem.lz4", "ins": "ins.lz4", "meta": "json"}
IMAGE_EXTENSIONS = ("jpg", "png", "bmp", "tif", "webp")
# for DALI's fn.readers.webdataset: one output that takes whichever image extension a sample has
DALI_IMAGE_EXT = ";".join(IMAGE_EXTENSIONS)

_TAR_BLOCK = 512
_TAR_RECORD = 20 * _TAR_BLOCK  # what tarfile and GNU tar pad an archive to


# ----------------------------------------------------------------------------------------------- names


def shard_stem(shard: int) -> str:
    """``shard-00012``: the common stem of a shard's ``.tar``, ``.idx``, ``.json`` and ``.done.json``."""
    return f"shard-{shard:05d}"


def sample_key(position: int) -> str:
    """The sample key: the image's position in the validated COCO image list, ``%08d``."""
    return f"{position:08d}"


# ----------------------------------------------------------------------------------------------- images


def sniff_image_format(data: bytes) -> str | None:
    """The canonical extension of an encoded image from its magic bytes, or ``None`` if unknown."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF, BigTIFF
        return "tif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def truncation_problem(data: bytes, fmt: str) -> str | None:
    """Why an encoded image looks cut short, or ``None``.

    OpenCV decodes a truncated JPEG "successfully" (the missing rows come out grey, with a warning on
    stderr), so a full decode is not enough: a JPEG's marker structure must reach its end-of-image marker
    (`fastload.cache.jpeg.jpeg_end`; data appended after it is not a truncation), a PNG must have its IEND
    chunk, a WebP's chunks must fit in its RIFF container.
    """
    if fmt == "jpg":
        return jpeg_end(data)[1]
    if fmt == "png" and data.rfind(b"IEND") < 0:
        return "PNG is truncated (no IEND chunk)"
    if fmt == "webp":
        return webp_chunks(data)[2]
    return None


def decode_image(data: bytes) -> np.ndarray:
    """Decode an image member to uint8 (H, W, 3) RGB.

    Orientation tags are ignored: the stored pixels are the ones the annotations address (the build applied
    the tag already, or was told to keep the stored grid: `fastload.cache.images`), so a DALI decoder must be
    run with ``adjust_orientation=False`` to agree. Call it on members checked by
    `fastload.cache.validate.checked_sample` (the header's size is bounded before this allocates it).
    """
    try:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:  # some codecs raise instead of returning None
        raise CacheError(f"image member does not decode ({str(exc).strip().splitlines()[-1]})") from None
    if array is None:
        raise CacheError("image member does not decode")
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------------------------- labels

# A label member is a raw array compressed with LZ4 (block format), the one format DALI decodes on the GPU
# (fn.decoders.inflate, nvCOMP). The array is cut into bands of whole rows, each its own LZ4 block, so that
# nvCOMP decodes a sample's bands in parallel and no block exceeds its chunk limit whatever the image size; the
# last band is padded with the member's fill (255 = ignore for the semantic mask, 0 = background for instances),
# which is exactly what a warp reads outside the image, so a decoder may hand the padded array to the warp.
# Layout (little endian), described once here and in docs/design.md:
#
#   magic "FLZ4" | u16 version (1) | u16 dtype code | u32 height | u32 width | u32 rows per band | u32 bands
#   | u32 compressed size of each band | the bands, each starting at a multiple of 4 bytes (zero padding)
LABEL_MAGIC = b"FLZ4"
LABEL_VERSION = 1
LABEL_BAND_BYTES = 1 << 16  # raw bytes of a uint16 band at most (LZ4's window; nvCOMP's preferred chunk)
LABEL_DTYPES = {"sem": np.dtype(np.uint8), "ins": np.dtype(np.uint16)}
LABEL_FILL = {"sem": SEMANTIC_FILL, "ins": INSTANCE_FILL}  # what a warp reads outside the image
_DTYPE_CODES = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16)}
_HEADER = struct.Struct("<4sHHIIII")


def rows_per_band(width: int) -> int:
    """Rows of a label band for an image ``width`` wide: a uint16 band holds at most ``LABEL_BAND_BYTES``."""
    return max(1, LABEL_BAND_BYTES // (2 * int(width)))


@dataclass(frozen=True)
class LabelLayout:
    """The header of a label member: what the array is and where its LZ4 bands lie in the member.

    band_offsets / band_sizes : int64 (bands,) byte offset within the member and compressed size of each band
    """

    dtype: np.dtype
    height: int
    width: int
    rows_per_band: int
    band_offsets: np.ndarray
    band_sizes: np.ndarray

    @property
    def padded_height(self) -> int:
        """Rows of the decoded array before the padding is cut off: ``bands · rows_per_band``."""
        return len(self.band_sizes) * self.rows_per_band

    @property
    def band_shape(self) -> tuple[int, int]:
        """(rows, width) of one decoded band (what ``fn.decoders.inflate`` calls a chunk's shape)."""
        return self.rows_per_band, self.width


def encode_label(array: np.ndarray, *, kind: str, level: int) -> bytes:
    """A label map → its LZ4 member (layout above).

    array : (H, W) integers in the range of ``LABEL_DTYPES[kind]`` ("sem": uint8 train ids, 255 ignore; "ins":
        uint16 instance ids, 0 background); level : 0 = LZ4 (fast), 1..12 = LZ4-HC at that level.
    """
    dtype = LABEL_DTYPES[kind]
    array = np.asarray(array)
    if array.ndim != 2 or array.size == 0:
        raise CacheError(f"{kind} label must be a non-empty (H, W) array, got shape {array.shape}")
    height, width = array.shape
    rows = rows_per_band(width)
    bands = -(-height // rows)
    padded = np.full((bands * rows, width), LABEL_FILL[kind], dtype=dtype)
    padded[:height] = array  # the caller checked the range (an out-of-range id would wrap here)
    raw = padded.tobytes()
    step = rows * width * dtype.itemsize
    blocks = [_compress(raw[k * step : (k + 1) * step], level) for k in range(bands)]
    code = next(c for c, d in _DTYPE_CODES.items() if d == dtype)
    parts = [_HEADER.pack(LABEL_MAGIC, LABEL_VERSION, code, height, width, rows, bands)]
    parts.append(np.array([len(b) for b in blocks], dtype="<u4").tobytes())
    for block in blocks:
        parts.append(block + b"\0" * (-len(block) % 4))
    return b"".join(parts)


def _compress(data: bytes, level: int) -> bytes:
    if level == 0:
        return lz4.block.compress(data, mode="default", store_size=False)
    return lz4.block.compress(data, mode="high_compression", compression=level, store_size=False)


def lz4_bound(size: int) -> int:
    """The most bytes LZ4 compresses ``size`` bytes into (``LZ4_COMPRESSBOUND``): a larger band is not LZ4."""
    return size + size // 255 + 16


def parse_label(data: bytes | memoryview, *, what: str = "label") -> LabelLayout:
    """Read and check a label member's header (no decompression).

    Checks what the header alone can say: fastload's magic, version and a known dtype code; a non-empty size;
    bands of exactly `rows_per_band` (width) rows, as many as cover the height; each band's compressed size
    between 1 byte and `lz4_bound` of its raw size; the bands filling the member exactly. A decoder that
    trusts the result allocates at most ``bands · rows_per_band · width`` elements. The header's size is
    compared with the sample's by `fastload.cache.validate.checked_label_layouts`.

    Raises
    ------
    CacheError
        Naming the field, when the header is not fastload's or disagrees with itself or the member's length.
    """
    if len(data) < _HEADER.size:
        raise CacheError(f"{what} member is too short for a label header ({len(data)} bytes)")
    magic, version, code, height, width, rows, bands = _HEADER.unpack_from(data, 0)
    if magic != LABEL_MAGIC or version != LABEL_VERSION or code not in _DTYPE_CODES:
        raise CacheError(f"{what} member is not a fastload LZ4 label (magic {magic!r}, version {version}, dtype code {code})")
    if height < 1 or width < 1:
        raise CacheError(f"{what} member header declares an empty {height} x {width} label")
    if rows != rows_per_band(width):
        raise CacheError(f"{what} member header: {rows} rows per band, a label {width} wide has {rows_per_band(width)}")
    if bands != -(-height // rows):
        raise CacheError(f"{what} member header is inconsistent: {height} x {width} in {bands} bands of {rows} rows")
    table_end = _HEADER.size + 4 * bands
    if len(data) < table_end:
        raise CacheError(f"{what} member is cut short inside its band table")
    # plain ints: a member has a few bands, where NumPy's per-call cost would be most of a feed's header check
    sizes = struct.unpack_from(f"<{bands}I", data, _HEADER.size)
    limit = lz4_bound(rows * width * _DTYPE_CODES[code].itemsize)
    offsets, end = [], table_end
    for k, size in enumerate(sizes):
        if not 1 <= size <= limit:
            raise CacheError(f"{what} member: band {k} is {size} bytes compressed; a band holds 1..{limit}")
        offsets.append(end)
        end += size + (-size % 4)
    if end != len(data):
        raise CacheError(f"{what} member holds {len(data)} bytes, its band table says {end}")
    return LabelLayout(
        _DTYPE_CODES[code], height, width, rows, np.array(offsets, np.int64), np.array(sizes, np.int64)
    )


def decode_label(data: bytes, *, kind: str, padded: bool = False, layout: LabelLayout | None = None) -> np.ndarray:
    """A label member → its array: ``LABEL_DTYPES[kind]`` (H, W), or (padded_height, W) with ``padded=True``.

    ``layout``: the member's header when the caller parsed it already (`parse_label`). The lz4 package releases
    the GIL while it decompresses, so reader threads decode labels in parallel.
    """
    what = {"sem": "semantic", "ins": "instance"}[kind]
    layout = parse_label(data, what=what) if layout is None else layout
    if layout.dtype != LABEL_DTYPES[kind]:
        raise CacheError(f"{what} member holds {layout.dtype.name}, expected {LABEL_DTYPES[kind].name}")
    band_bytes = layout.rows_per_band * layout.width * layout.dtype.itemsize
    view = memoryview(data)
    try:
        raw = b"".join(
            lz4.block.decompress(view[o : o + s], uncompressed_size=band_bytes)
            for o, s in zip(layout.band_offsets.tolist(), layout.band_sizes.tolist(), strict=True)
        )
    except lz4.block.LZ4BlockError as exc:
        raise CacheError(f"{what} member does not decompress ({exc})") from None
    if len(raw) != band_bytes * len(layout.band_sizes):
        raise CacheError(f"{what} member decompresses to {len(raw)} bytes, expected {band_bytes * len(layout.band_sizes)}")
    array = np.frombuffer(raw, dtype=layout.dtype).reshape(layout.padded_height, layout.width)
    return array if padded else array[: layout.height]


def encode_meta(meta: dict[str, Any]) -> bytes:
    """The meta member: ``{image_id, file_name, height, width, instances}`` as canonical JSON."""
    return dumps_canonical(meta)


MAX_META_BYTES = 1 << 24  # 16 MiB; a meta of MAX_INSTANCES instances takes ~8 MB


def decode_meta(data: bytes) -> dict[str, Any]:
    """The meta member as a dict (bounded: `MAX_META_BYTES`, `MAX_JSON_DEPTH`); its content is checked by
    `fastload.cache.validate.checked_meta`."""
    meta = loads_json(data, what="meta member", max_bytes=MAX_META_BYTES)
    if not isinstance(meta, dict):
        raise CacheError("meta member is not a JSON object")
    return meta


@dataclass(frozen=True)
class SampleMembers:
    """The raw (still encoded) members of one cache sample, CRC-checked. Decode with this module's helpers."""

    shard: str  # shard tar file name, e.g. "shard-00003.tar"
    key: str  # sample key, e.g. "00001536"
    image: bytes
    image_ext: str  # extension of the image member: one of IMAGE_EXTENSIONS
    semantic: bytes  # LZ4 label member (encode_label / decode_label)
    instance: bytes  # LZ4 label member
    meta: dict[str, Any]
    # the label members' headers (semantic, instance), as the reader's validation parsed and checked them
    layouts: tuple[LabelLayout, LabelLayout]

    @property
    def instance_count(self) -> int:
        """The instances the meta lists (checked by the reader: a list of at most `MAX_INSTANCES`): what the
        instance ids may reach, and a renderer's ``max_id``."""
        return len(self.meta["instances"])


# ----------------------------------------------------------------------------------------------- tar


def _tar_header(name: str, size: int) -> bytes:
    # fixed fields so that the same members give byte-identical archives on any machine, at any time
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


class TarWriter:
    """Writes a deterministic USTAR archive to a binary file and hashes it on the way.

    ``add`` returns the offset of the member's *data* (after its 512-byte header), which is what both
    DALI's index and our shard index record.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._pos = 0
        self._sha = hashlib.sha256()

    def _write(self, data: bytes) -> None:
        self._fh.write(data)
        self._sha.update(data)
        self._pos += len(data)

    def add(self, name: str, data: bytes) -> int:
        self._write(_tar_header(name, len(data)))
        offset = self._pos
        self._write(data)
        self._write(b"\0" * (-len(data) % _TAR_BLOCK))
        return offset

    def finish(self) -> tuple[int, str]:
        """Write the end-of-archive blocks; return (archive size, sha256 hex)."""
        self._write(b"\0" * (2 * _TAR_BLOCK))
        self._write(b"\0" * (-self._pos % _TAR_RECORD))
        return self._pos, self._sha.hexdigest()


def dali_index_text(samples: Iterable[Sequence[tuple[str, int, int, str]]]) -> str:
    """DALI's webdataset index (format "v1.2", as DALI's ``wds2idx`` writes it).

    Line 1: ``v1.2 <number of samples>``; then one line per sample with, for each member, the four fields
    ``extension data_offset size file_name`` separated by spaces. ``extension`` is everything after the
    first dot of the file name (``sem.png``), ``data_offset`` the position of the member's data in the tar.
    """
    lines = [" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in sample) for sample in samples]
    if not lines:
        raise CacheError("a shard must hold at least one sample to be indexed for DALI")
    return f"v1.2 {len(lines)}\n" + "".join(line + "\n" for line in lines)
