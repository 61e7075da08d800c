"""The cache's on-disk format: member kinds, their encoders/decoders, deterministic tar writing, DALI's index.

Everything here is a pure function of its inputs (bytes in, arrays out or the reverse) so the writer, the
reader, `verify` and the CPU loader share one definition of every member. A sample's members, in tar order:

==========  =================  ==========================================================================
kind        name               content
==========  =================  ==========================================================================
``image``   ``KEY.<ext>``      the source image bytes unchanged; ``ext`` names the *content* (jpg, png, bmp,
                               tif, webp), sniffed from the magic bytes, not the source file's suffix
``sem``     ``KEY.sem.png``    uint8 gray PNG: semantic train ids, 0 background, 255 ignore
``ins``     ``KEY.ins.png``    uint16 gray PNG: instance ids 1..N, 0 background
``off``     ``KEY.off.png``    uint16 RGB PNG: R = dy, G = dx, B = 0; code = round(v * offset_scale) + 32768
``heat``    ``KEY.heat.png``   uint8 gray PNG: round(heat * 255)
``meta``    ``KEY.json``       JSON ``{image_id, file_name, height, width, instances: [...]}``
==========  =================  ==========================================================================
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import cv2
import numpy as np

from fastload.errors import CacheError

SCHEMA_VERSION = 1  # of manifest.json, the shard indexes and the completion records
HEAT_SCALE = 255  # heatmap code = round(heat * HEAT_SCALE)
OFFSET_ZERO = 32768  # offset code of a zero vector

# tar order of a sample's members; the image's extension depends on its content (see IMAGE_FORMATS)
MEMBER_KINDS = ("image", "sem", "ins", "off", "heat", "meta")
LABEL_EXTENSIONS = {"sem": "sem.png", "ins": "ins.png", "off": "off.png", "heat": "heat.png", "meta": "json"}
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
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def truncation_problem(data: bytes, fmt: str) -> str | None:
    """Why an encoded image looks cut short, or ``None``.

    OpenCV decodes a truncated JPEG "successfully" (the missing rows come out grey, with a warning on
    stderr), so a full decode is not enough: a JPEG must have an end-of-image marker after its last
    start-of-scan marker (markers cannot occur inside entropy-coded data), a PNG must have its IEND chunk.
    """
    if fmt == "jpg":
        last_scan = data.rfind(b"\xff\xda")
        if last_scan < 0:
            return "JPEG has no image data (no start-of-scan marker)"
        if data.find(b"\xff\xd9", last_scan) < 0:
            return "JPEG is truncated (no end-of-image marker after the last scan)"
    elif fmt == "png" and data.rfind(b"IEND") < 0:
        return "PNG is truncated (no IEND chunk)"
    return None


def decode_image(data: bytes) -> np.ndarray:
    """Decode an image member to uint8 (H, W, 3) RGB.

    EXIF orientation is ignored: COCO annotations address the stored pixel grid (as pycocotools and PIL
    do), so a DALI decoder must be run with ``adjust_orientation=False`` to agree.
    """
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if array is None:
        raise CacheError("image member does not decode")
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------------------------- labels


# A fixed PNG row filter per member instead of libpng's per-row heuristic (which mostly picks Paeth, the
# slowest to undo). Measured on the 18 sample photos at level 6: flat label maps compress best unfiltered,
# the smooth offset ramps with "up"; both smaller *and* faster than the heuristic (offsets: encode 34 → 19 ms,
# decode 12 → 9 ms per 800x600 sample). Any PNG decoder reads them; only the encoder's choice differs.
# OpenCV < 4.12 has no IMWRITE_PNG_FILTER: it then keeps libpng's heuristic (valid PNGs, somewhat larger).
# Shards are byte-identical for one environment; another OpenCV/zlib build may compress differently.
_PNG_FILTER = getattr(cv2, "IMWRITE_PNG_FILTER", None)
_FILTER_NONE = getattr(cv2, "IMWRITE_PNG_FILTER_NONE", 8)
_FILTER_UP = getattr(cv2, "IMWRITE_PNG_FILTER_UP", 32)


def _encode_png(array: np.ndarray, level: int, row_filter: int = _FILTER_NONE) -> bytes:
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(level)]
    if _PNG_FILTER is not None:
        params += [_PNG_FILTER, row_filter]
    ok, buf = cv2.imencode(".png", array, params)
    if not ok:
        raise CacheError(f"PNG encoding failed for an array of shape {array.shape} dtype {array.dtype}")
    return buf.tobytes()


def _decode_png(data: bytes, *, what: str, dtype: type, channels: int) -> np.ndarray:
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise CacheError(f"{what} member is not a decodable PNG")
    got_channels = 1 if array.ndim == 2 else array.shape[2]
    if array.dtype != dtype or got_channels != channels:
        raise CacheError(
            f"{what} member is a {array.dtype} PNG with {got_channels} channel(s); "
            f"expected {np.dtype(dtype).name} with {channels}"
        )
    return array


def encode_semantic(semantic: np.ndarray, *, level: int = 6) -> bytes:
    """uint8 (H, W) train ids → 8-bit gray PNG."""
    return _encode_png(np.ascontiguousarray(semantic, dtype=np.uint8), level)


def decode_semantic(data: bytes) -> np.ndarray:
    """8-bit gray PNG → uint8 (H, W) train ids (0 background, 255 ignore)."""
    return _decode_png(data, what="semantic", dtype=np.uint8, channels=1)


def encode_instance(instance: np.ndarray, *, level: int = 6) -> bytes:
    """int (H, W) instance ids 0..65535 → 16-bit gray PNG."""
    if instance.size and (instance.min() < 0 or instance.max() > 65535):
        raise CacheError(f"instance ids must be in 0..65535, got {instance.min()}..{instance.max()}")
    return _encode_png(np.ascontiguousarray(instance, dtype=np.uint16), level)


def decode_instance(data: bytes) -> np.ndarray:
    """16-bit gray PNG → int32 (H, W) instance ids (0 background)."""
    return _decode_png(data, what="instance", dtype=np.uint16, channels=1).astype(np.int32)


def quantize_offset(offset: np.ndarray, offset_scale: int) -> tuple[np.ndarray, int]:
    """float (2, H, W) (dy, dx) → uint16 codes (2, H, W) and the number of pixels where a code was clipped."""
    code = np.rint(np.asarray(offset, dtype=np.float64) * offset_scale) + OFFSET_ZERO
    outside = (code < 0) | (code > 65535)
    clipped = int(np.count_nonzero(outside.any(axis=0)))
    return np.clip(code, 0, 65535).astype(np.uint16), clipped


def dequantize_offset(code: np.ndarray, offset_scale: int) -> np.ndarray:
    """uint16 codes (2, H, W) → float32 (2, H, W) offsets in map pixels."""
    return ((code.astype(np.float32) - OFFSET_ZERO) / np.float32(offset_scale)).astype(np.float32)


def encode_offset(offset: np.ndarray, *, offset_scale: int, level: int = 6) -> tuple[bytes, int]:
    """float (2, H', W') (dy, dx) → 16-bit RGB PNG (R = dy, G = dx, B = 0) and the clipped-pixel count."""
    if offset.ndim != 3 or offset.shape[0] != 2:
        raise CacheError(f"offset must have shape (2, H, W), got {offset.shape}")
    code, clipped = quantize_offset(offset, offset_scale)
    bgr = np.zeros((*code.shape[1:], 3), np.uint16)  # OpenCV writes BGR arrays as RGB pixels
    bgr[..., 2] = code[0]
    bgr[..., 1] = code[1]
    return _encode_png(bgr, level, _FILTER_UP), clipped


def decode_offset(data: bytes, *, offset_scale: int) -> np.ndarray:
    """16-bit RGB PNG → float32 (2, H', W') offsets (dy, dx) in map pixels (= `dequantize_offset`, in place)."""
    bgr = _decode_png(data, what="offset", dtype=np.uint16, channels=3)
    out = np.empty((2, *bgr.shape[:2]), np.float32)
    out[0] = bgr[..., 2]
    out[1] = bgr[..., 1]
    out -= np.float32(OFFSET_ZERO)
    out /= np.float32(offset_scale)
    return out


def quantize_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """float heat in [0, 1] → uint8 codes round(heat * 255) (values outside [0, 1] are clipped)."""
    return np.rint(np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, 1.0) * HEAT_SCALE).astype(np.uint8)


def encode_heatmap(heatmap: np.ndarray, *, level: int = 6) -> bytes:
    """float (H', W') heat in [0, 1] → 8-bit gray PNG."""
    return _encode_png(quantize_heatmap(heatmap), level)


def decode_heatmap(data: bytes) -> np.ndarray:
    """8-bit gray PNG → float32 (H', W') heat in [0, 1]."""
    code = _decode_png(data, what="heatmap", dtype=np.uint8, channels=1)
    return (code.astype(np.float32) / np.float32(HEAT_SCALE)).astype(np.float32)


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


def encode_meta(meta: dict[str, Any]) -> bytes:
    """The meta member: ``{image_id, file_name, height, width, instances}`` as canonical JSON."""
    return dumps_canonical(meta)


def decode_meta(data: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"meta member is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CacheError("meta member is not a JSON object")
    return meta


def map_shape(height: int, width: int, stride: int) -> tuple[int, int]:
    """Shape of the target maps of an ``height`` x ``width`` image: ``(ceil(H/s), ceil(W/s))``."""
    return -(-height // stride), -(-width // stride)


@dataclass(frozen=True)
class SampleMembers:
    """The raw (still encoded) members of one cache sample, CRC-checked. Decode with this module's helpers."""

    shard: str  # shard tar file name, e.g. "shard-00003.tar"
    key: str  # sample key, e.g. "00001536"
    image: bytes
    image_ext: str  # extension of the image member: one of IMAGE_EXTENSIONS
    semantic: bytes
    instance: bytes
    offset: bytes
    heatmap: bytes
    meta: dict[str, Any]


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
