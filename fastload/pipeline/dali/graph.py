"""The DALI graph, one definition for both devices, and the pipeline built around it.

The graph is the same on both devices but for where the labels are decoded:

- ``"gpu"``: the image goes through nvJPEG (``"mixed"`` decoding); the LZ4 label members are inflated on the
  GPU (``fn.decoders.inflate``, nvCOMP). No label touches a host decoder.
- ``"cpu"`` (CI, machines without a GPU): everything on the CPU; the feed workers decoded the labels.

From there on, per sample, in the canonical order of docs/design.md ("Augmentation"):

============  ===========================================================================================
output        ops
============  ===========================================================================================
``image``     slice the padded bytes → decode RGB → warp_affine (linear, fill 0, uint8) → hsv →
              brightness_contrast → shadow band and texture noise (float32) → uint8 → crop_mirror_normalize →
              CHW float32. Photometric ops the config never enables are left out: ``none`` is warp + normalise.
              At native size (``out_size`` None): decode → normalise → pad (fill 0) to the batch's largest.
``semantic``  uint8 → warp_affine (nearest, fill 255) → uint8 (H, W, 1)
``instance``  the uint16 member read as int16 (ids <= 32767) → warp_affine (nearest, fill 0) → int16 (H, W, 1)
              At native size the masks are cut to the sample's (H, W) and padded (255 / 0) instead of warped.
============  ===========================================================================================

Widening the masks to the contract's int64 / int32 and the targets happen after the graph, on whole batches
(`fastload.pipeline.batch`): one torch op per batch costs less than a DALI op per sample. Each op mirrors a kernel
of `fastload.augment.reference`; ``tests/test_fidelity.py`` replays the same parameters through both. DALI is
imported lazily, here only: ``import fastload`` never loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from fastload.augment.noise import noise_texture
from fastload.labels import INSTANCE_FILL, SEMANTIC_FILL
from fastload.pipeline.dali.spec import OUTPUTS, SCALARS, GraphSpec

_MISSING_DALI = (
    "fastload.Loader needs NVIDIA DALI: pip install nvidia-dali-cuda120 (CUDA 12; nvidia-dali-cuda110 for "
    "CUDA 11). Without DALI, use fastload.CpuLoader: the same batches from OpenCV kernels."
)


def dali_modules() -> tuple[Any, Any, Any, Any]:
    """``(fn, types, math, Pipeline)`` of nvidia.dali, imported on first use (no other module imports DALI)."""
    try:
        from nvidia.dali import fn, types
        from nvidia.dali import math as dmath
        from nvidia.dali.pipeline import Pipeline
    except ImportError as exc:
        raise ImportError(_MISSING_DALI) from exc
    return fn, types, dmath, Pipeline


class _Ops:
    """DALI's fn / types / math and the graph's device, so the graph's helpers read like the design."""

    def __init__(self, device: Literal["cpu", "gpu"]) -> None:
        self.fn, self.types, self.math, _ = dali_modules()
        self.device = device

    def unpad(self, data, length):
        """The first ``length`` elements of each padded sample (one copy per sample, in DALI)."""
        return self.fn.slice(data, start=[0], shape=length, axes=[0])

    def decode_image(self, data):
        # "mixed": nvJPEG (or nvImageCodec's CPU codecs for other formats) with the result on the GPU.
        # EXIF orientation is ignored: annotations address the stored pixel grid (fastload.cache.format).
        return self.fn.decoders.image(
            data,
            device="mixed" if self.device == "gpu" else "cpu",
            output_type=self.types.RGB,
            adjust_orientation=False,
        )

    def label(self, inputs: Mapping[str, Any], kind: str, dtype):
        """The (padded height, W, 1) label array: inflated on the GPU, or as the feed decoded it."""
        if self.device == "cpu":
            return inputs[kind]
        dims = inputs[f"{kind}_dims"]  # bands, rows, width, padded height, width, 1
        chunks = self.fn.slice(inputs[f"{kind}_chunks"], start=[0], shape=dims[0:1], axes=[1])
        bands = self.fn.decoders.inflate(
            inputs["labels"].gpu(),
            shape=dims[1:3],
            chunk_offsets=chunks[0],
            chunk_sizes=chunks[1],
            dtype=dtype,
            algorithm="LZ4",
            # nvCOMP checks each band's output size before decompressing (a synchronisation of DALI's stream):
            # a band that claims more than its rows is an error, never a silent overflow
            check_output_size=True,
        )  # (bands, rows, W)
        return self.fn.reshape(bands, shape=dims[3:6], layout="HWC")

    def warp(self, data, matrix, size: tuple[int, int], *, nearest: bool, fill: float):
        return self.fn.warp_affine(
            data,
            matrix=matrix,
            size=list(size),
            inverse_map=False,  # forward matrices, docs/design.md "Coordinates"
            fill_value=float(fill),
            interp_type=self.types.INTERP_NN if nearest else self.types.INTERP_LINEAR,
        )

    def normalize(self, image, spec: GraphSpec):
        """uint8 HWC → (image / 255 - mean) / std, CHW float32."""
        return self.fn.crop_mirror_normalize(
            image,
            dtype=self.types.FLOAT,
            output_layout="CHW",
            mean=[255.0 * m for m in spec.mean],
            std=[255.0 * s for s in spec.std],
        )

    def cast(self, data, dtype):
        return self.fn.cast(data, dtype=dtype)

    def constant(self, array: np.ndarray):
        return self.types.Constant(np.ascontiguousarray(array, dtype=np.float32), device=self.device)


def define_graph(inputs: Mapping[str, Any], spec: GraphSpec) -> dict[str, Any]:
    """The DALI graph, ``spec.inputs`` data nodes in, `OUTPUTS` data nodes out (call in a pipeline scope).

    The per-sample parameters stay CPU nodes: DALI takes them as argument inputs, on either device.
    """
    ops = _Ops(spec.device)
    types = ops.types
    image = ops.decode_image(ops.unpad(inputs["image"], inputs["image_len"]))
    if spec.out_size is None:
        return _native_graph(ops, image, inputs, spec)
    affine = inputs["image_affine"]
    image = ops.warp(image, affine, spec.out_size, nearest=False, fill=0)
    if spec.photometric.any:
        image = _photometric(ops, image, inputs, spec)
    image = ops.normalize(image, spec)
    semantic = ops.warp(ops.label(inputs, "sem", types.UINT8), affine, spec.out_size, nearest=True, fill=SEMANTIC_FILL)
    instance = ops.warp(ops.label(inputs, "ins", types.INT16), affine, spec.out_size, nearest=True, fill=INSTANCE_FILL)
    return {"image": image, "semantic": semantic, "instance": instance}


def _native_graph(ops: _Ops, image, inputs: Mapping[str, Any], spec: GraphSpec) -> dict[str, Any]:
    """Each sample at its own size (`fastload.pipeline.native`): normalised, and with its masks (cut to its
    ``image_hw``: the labels arrive padded) padded to the batch's largest, each side a multiple of ``spec.align``,
    with 0 / 255 / 0."""
    image = ops.normalize(image, spec)
    hw, align = inputs["image_hw"], [spec.align, spec.align]

    def padded(mask, fill: int):
        mask = ops.fn.slice(mask, start=[0, 0], shape=hw, axes=[0, 1])
        return ops.fn.pad(mask, axes=(0, 1), fill_value=fill, align=align)

    return {
        "image": ops.fn.pad(image, axes=(1, 2), fill_value=0.0, align=align),
        "semantic": padded(ops.label(inputs, "sem", ops.types.UINT8), SEMANTIC_FILL),
        "instance": padded(ops.label(inputs, "ins", ops.types.INT16), INSTANCE_FILL),
    }


def _photometric(ops: _Ops, image, inputs: Mapping[str, Any], spec: GraphSpec):
    """hsv → brightness/contrast (uint8, as DALI's ops round) → shadow → noise, clamp, round to uint8."""
    scalars = inputs["scalars"]
    s = {name: scalars[k] for k, name in enumerate(SCALARS)}
    todo = spec.photometric
    if todo.hsv:
        image = ops.fn.hsv(image, hue=s["hue"], saturation=s["saturation"])
    if todo.brightness_contrast:
        # contrast_center 128 for uint8 (the reference's CONTRAST_CENTER_UINT8), stated, not left to a default
        image = ops.fn.brightness_contrast(
            image, brightness=s["brightness"], contrast=s["contrast"], contrast_center=128.0
        )
    if not (todo.shadow or todo.noise):
        return image
    image = ops.cast(image, ops.types.FLOAT)
    h, w = spec.out_size
    if todo.shadow:
        # output pixel centres as broadcastable (1, W, 1) and (H, 1, 1) grids; float32 in the reference's order
        x = ops.constant((np.arange(w, dtype=np.float32) + np.float32(0.5))[None, :, None])
        y = ops.constant((np.arange(h, dtype=np.float32) + np.float32(0.5))[:, None, None])
        inside = ops.math.abs(s["shadow_nx"] * x + s["shadow_ny"] * y - s["shadow_c"]) < s["shadow_half_width"]
        image = image * (1.0 - s["shadow_strength"] * inside)  # (H, W, 3) · (H, W, 1)
    if todo.noise:
        window = ops.fn.slice(
            ops.constant(noise_texture((h, w))),
            inputs["noise_anchor"],
            np.array([h, w], dtype=np.int32),
            axes=[0, 1],
            normalized_anchor=False,
            normalized_shape=False,
        )
        image = ops.math.clamp(image + s["noise_sigma"] * window, 0.0, 255.0)
    return ops.cast(image, ops.types.UINT8)


def build_pipeline(
    spec: GraphSpec,
    source: Any,
    *,
    device_id: int | None,
    batch_size: int,
    num_threads: int,
    prefetch: int,
):
    """A built DALI pipeline of `define_graph`, fed by ``source``: a batch callback returning ``spec.inputs``
    columns (one dense array each, N first) and raising StopIteration at the end of the plan."""
    fn, _, _, Pipeline = dali_modules()
    pipe = Pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if spec.device == "gpu" else None,
        prefetch_queue_depth=prefetch,
    )
    layouts = ["HWC" if name in ("sem", "ins") else "" for name in spec.inputs]
    with pipe:
        nodes = fn.external_source(source=source, num_outputs=len(spec.inputs), batch=True, layout=layouts)
        outputs = define_graph(dict(zip(spec.inputs, nodes, strict=True)), spec)
        pipe.set_outputs(*(outputs[key] for key in OUTPUTS))
    pipe.build()
    return pipe


def shutdown_pipeline(pipe) -> None:
    """Stop a pipeline's threads and free its buffers now, not whenever the garbage collector gets to it.

    DALI's ``Pipeline`` only has the private ``_shutdown`` (what its ``__del__`` calls); a pipeline left to the
    collector keeps its worker threads alive, and a process forked meanwhile inherits them half-copied.
    (tests/test_fork_safety.py fails if it disappears: no thread may outlive close().)
    """
    shutdown = getattr(pipe, "_shutdown", None)
    if shutdown is not None:
        shutdown()
