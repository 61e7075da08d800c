"""A batch's graph inputs as dense arrays (the table in `fastload.pipeline.dali.spec`): pure NumPy, run by the feed
workers. Nothing here touches DALI; everything is checked before DALI sees it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastload.augment.params import ParamsBatch, affine_matrices, shadow_bands
from fastload.cache.format import LABEL_FILL, LabelLayout, decode_label
from fastload.cache.validate import check_instance_ids
from fastload.errors import CacheError, ConfigError
from fastload.pipeline.dali.spec import SCALARS, SHADOW_SCALARS, GraphSpec
from fastload.validation import MAX_BATCH_PIXELS

KINDS = ("sem", "ins")  # the order of a sample's (semantic, instance) layouts


def param_columns(params: ParamsBatch, src_hw: np.ndarray, spec: GraphSpec) -> dict[str, np.ndarray]:
    """``image_affine`` float32 (N, 2, 3), ``scalars`` float32 (N, len(SCALARS)), ``noise_anchor`` int32 (N, 2).

    src_hw : int (N, 2) each sample's stored (H, W). A few array operations per batch, whatever N.
    """
    spec.photometric.check(params)
    values = {
        "hue": params.hue,
        "saturation": params.saturation,
        "brightness": params.brightness,
        "contrast": params.contrast,
        **dict(zip(SHADOW_SCALARS, shadow_bands(params, spec.out_size).T, strict=True)),
        "noise_sigma": params.noise_sigma,
    }
    return {
        "image_affine": affine_matrices(params, src_hw, spec.out_size, fit=spec.fit).astype(np.float32),
        "scalars": np.stack([values[name] for name in SCALARS], axis=1).astype(np.float32).reshape(len(params), -1),
        "noise_anchor": params.noise_offset.astype(np.int32),
    }


MAX_PADDED_BYTES = 1 << 32
"""The most bytes one column of padded members (images, labels) of a batch may take: 4 GiB."""


def check_padding(n: int, each: int, *, limit: int, what: str) -> None:
    """A column of ``n`` samples padded to its largest (``each`` elements) holds at most ``limit`` elements: samples
    of very different sizes (a portrait beside a landscape, one huge PNG) pad each other up, and the column is
    allocated whole."""
    if n * each > limit:
        raise ConfigError(
            f"a batch of {n} samples padded to its largest {what} ({each} each) takes {n * each}, above the {limit} "
            "a batch column may hold; lower batch_size (samples of very different sizes pad each other up)"
        )


def padded_bytes(members: Sequence[bytes], *, limit: int = MAX_PADDED_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, longest) with each member zero-padded, and int32 (N, 1) lengths (the graph slices them back);
    a ConfigError, before anything is allocated, when that takes more than ``limit`` bytes."""
    lengths = np.array([[len(m)] for m in members], np.int32).reshape(len(members), 1)
    longest = int(lengths.max(initial=0))
    check_padding(len(members), longest, limit=limit, what="member (bytes)")
    out = np.zeros((len(members), longest), np.uint8)
    for k, member in enumerate(members):
        out[k, : len(member)] = np.frombuffer(member, np.uint8)
    return out, lengths


def gpu_label_columns(
    semantic: Sequence[bytes], instance: Sequence[bytes], layouts: Sequence[tuple[LabelLayout, LabelLayout]]
) -> dict[str, np.ndarray]:
    """``labels`` (both members, padded), and per kind ``*_chunks`` (offsets and sizes of the LZ4 bands in ``labels``)
    and ``*_dims`` (bands, rows, width, padded height, width, 1): what ``fn.decoders.inflate`` needs. ``layouts``:
    each sample's (semantic, instance) headers as `fastload.cache.validate.checked_label_layouts` checked them."""
    rows = [s + i for s, i in zip(semantic, instance, strict=True)]
    labels, _ = padded_bytes(rows)
    out = {"labels": labels}
    for kind in KINDS:
        bands = max((len(lay[KINDS.index(kind)].band_sizes) for lay in layouts), default=0)
        chunks = np.zeros((len(layouts), 2, bands), np.int32)
        dims = np.zeros((len(layouts), 6), np.int32)
        for k, lay in enumerate(layouts):
            layout, start = lay[KINDS.index(kind)], 0 if kind == "sem" else len(semantic[k])
            b = len(layout.band_sizes)
            chunks[k, 0, :b] = layout.band_offsets + start
            chunks[k, 1, :b] = layout.band_sizes
            dims[k] = (b, layout.rows_per_band, layout.width, layout.padded_height, layout.width, 1)
        out[f"{kind}_chunks"], out[f"{kind}_dims"] = chunks, dims
    return out


def cpu_label_columns(
    semantic: Sequence[bytes],
    instance: Sequence[bytes],
    layouts: Sequence[tuple[LabelLayout, LabelLayout]],
    counts: Sequence[int],
    *,
    limit: int = MAX_BATCH_PIXELS,
) -> dict[str, np.ndarray]:
    """``sem`` uint8 and ``ins`` int16 (N, H, W, 1): the decoded masks, padded to the batch's largest (H, W) with
    each mask's fill, which a nearest warp reads exactly as it reads outside the image. ``layouts``: each sample's
    checked headers; ``counts``: each sample's instance count (its meta's), which its ids may not exceed.

    Raises CacheError for a member that does not decode to its header's size, or holds ids above its count;
    `SampleError` says which sample of the batch it was. ConfigError, before anything is allocated, when the
    padded masks take more than ``limit`` pixels (`check_padding`).
    """
    hws = np.array([(sem.height, sem.width) for sem, _ in layouts], np.int64).reshape(len(layouts), 2)
    n = len(semantic)
    h, w = (int(v) for v in hws.max(axis=0)) if n else (0, 0)
    check_padding(n, h * w, limit=limit, what=f"mask size {h} x {w} (pixels)")
    out = {
        "sem": np.full((n, h, w, 1), LABEL_FILL["sem"], np.uint8),
        "ins": np.full((n, h, w, 1), LABEL_FILL["ins"], np.int16),
    }
    for k in range(n):
        sh, sw = int(hws[k, 0]), int(hws[k, 1])
        try:
            out["sem"][k, :sh, :sw, 0] = decode_label(semantic[k], kind="sem", layout=layouts[k][0])
            ins = decode_label(instance[k], kind="ins", layout=layouts[k][1])
            check_instance_ids(ins, counts[k])
        except CacheError as exc:
            raise SampleError(k, exc) from None
        # uint16 ids <= 32767 (checked just above) are the same numbers as int16
        out["ins"][k, :sh, :sw, 0] = ins.view(np.int16)
    return out


class SampleError(CacheError):
    """A CacheError about sample ``position`` of a batch (the caller names it)."""

    def __init__(self, position: int, error: CacheError) -> None:
        super().__init__(str(error))
        self.position = position
