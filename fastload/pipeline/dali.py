"""The DALI backend: one graph, parametrised by device, that turns batch plans into training tensors.

The loader shell (`fastload.loader`) decides the order, the sharding and every sample's `SampleParams`; this
module only executes plans. Per sample, `fn.external_source` hands the graph the raw cache members and a few
small parameter tensors computed here from `SampleParams` (:func:`sample_inputs`). The graph
(:func:`define_graph`) is the same on both devices: with ``"gpu"`` the decoders run ``"mixed"`` (nvJPEG for
JPEG) and every op after them on the GPU; with ``"cpu"`` everything runs on the CPU (CI, machines without a
GPU). Per sample, in the canonical order of docs/design.md ("Augmentation"):

============  ===========================================================================================
output        ops
============  ===========================================================================================
``image``     decode RGB → warp_affine (linear, fill 0, uint8) → hsv → brightness_contrast → shadow band
              (pixel-centre grids, per-sample band) → hash noise + clamp → crop_mirror_normalize → CHW
              float32. Photometric ops the config never enables are left out: ``none`` is warp + normalise.
``semantic``  decode uint8 → warp_affine (nearest, fill 255) → int64 (H, W)
``instance``  decode uint16 → float32 → warp_affine (nearest, fill 0) → int32 (H, W)
``heatmap``   decode uint8 → code / heat_scale → warp_affine (linear, fill 0; map affine) → (1, H', W')
``offset``    decode uint16 RGB → (code − 32768) / offset_scale → warp_affine (nearest, fill 0; map affine)
              → coord_transform (the forward linear part acting on (dy, dx)) → (2, H', W')
============  ===========================================================================================

Each op mirrors a kernel of `fastload.augment.reference`; ``tests/test_fidelity.py`` replays the same
parameters through both. DALI is imported lazily, here only: ``import fastload`` never loads it.
"""

from __future__ import annotations

import math
import queue
import re
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from fastload.augment.config import AugmentConfig, PhotometricConfig, RandomRange
from fastload.augment.params import (
    SampleParams,
    affine_matrix,
    map_affine,
    map_hw,
    offset_linear,
    shadow_band,
)
from fastload.errors import CacheError, add_note
from fastload.pipeline.nvtx import nvtx_range
from fastload.pipeline.plan import BATCH_KEYS, BatchPlan

__all__ = ["DaliBackend", "GraphSpec", "PhotometricOps", "build_pipeline", "define_graph", "sample_inputs"]

DEVICES = ("cpu", "cuda")
OFFSET_ZERO = 32768  # offset PNG code of a zero vector (docs/design.md, "The cache")

# the noise hash of docs/design.md ("Augmentation"), the same constants as the reference's noise_field
_HASH_A = (12.9898, 78.233, 37.719)
_HASH_B = (39.3467, 11.135, 83.155)
_HASH_SEED_B = 1.618
_HASH_MUL_A = 43758.5453
_HASH_MUL_B = 24634.6345
_HASH_U1_MIN = 1e-7

MEMBERS = ("image", "sem", "ins", "off", "heat")
"""Encoded cache members, in the order the external source hands them to the graph."""
PARAMS = ("image_affine", "map_affine", "offset_matrix", "scalars")
"""Per-sample parameter tensors (see `sample_inputs`), after the members."""
SCALARS = (
    "hue",
    "saturation",
    "brightness",
    "contrast",
    "shadow_nx",
    "shadow_ny",
    "shadow_c",
    "shadow_half_width",
    "shadow_strength",
    "noise_sigma",
    "noise_seed_a",
    "noise_seed_b",
)
"""The per-sample scalars, packed in this order into one float32 vector (the ``scalars`` input)."""

OUTPUTS = {
    "image": torch.float32,  # (N, 3, H, W)
    "semantic": torch.int64,  # (N, H, W)
    "instance": torch.int32,  # (N, H, W)
    "heatmap": torch.float32,  # (N, 1, H', W')
    "offset": torch.float32,  # (N, 2, H', W')
}
"""The graph's outputs, in order, and their torch dtypes (with ``index`` they make `BATCH_KEYS`)."""

_MISSING_DALI = (
    "fastload.Loader needs NVIDIA DALI: pip install nvidia-dali-cuda120 (CUDA 12; nvidia-dali-cuda110 for "
    "CUDA 11). Without DALI, use fastload.CpuLoader: the same batches from OpenCV kernels."
)


def _dali() -> tuple[Any, Any, Any, Any]:
    """``(fn, types, math, Pipeline)`` of nvidia.dali, imported on first use (no other module imports DALI)."""
    try:
        from nvidia.dali import fn, types
        from nvidia.dali import math as dmath
        from nvidia.dali.pipeline import Pipeline
    except ImportError as exc:
        raise ImportError(_MISSING_DALI) from exc
    return fn, types, dmath, Pipeline


# ----------------------------------------------------------------------------------------- the graph spec


@dataclass(frozen=True)
class PhotometricOps:
    """Which photometric ops the graph holds: those the config can turn on with a non-identity value."""

    hsv: bool = False
    brightness_contrast: bool = False
    shadow: bool = False
    noise: bool = False

    @classmethod
    def from_config(cls, cfg: PhotometricConfig) -> PhotometricOps:
        def active(rr: RandomRange, identity: float) -> bool:
            return rr.p > 0 and tuple(rr.range) != (identity, identity)

        return cls(
            hsv=active(cfg.hue, 0.0) or active(cfg.saturation, 1.0),
            brightness_contrast=active(cfg.brightness, 1.0) or active(cfg.contrast, 1.0),
            shadow=cfg.shadow.p > 0 and tuple(cfg.shadow.strength) != (0.0, 0.0),
            noise=active(cfg.noise, 0.0),
        )

    @property
    def any(self) -> bool:
        return self.hsv or self.brightness_contrast or self.shadow or self.noise

    def check(self, params: SampleParams) -> None:
        """Raise ValueError if ``params`` ask for an op the graph leaves out (it would be ignored silently)."""
        asked = {
            "hue/saturation": (params.hue != 0.0 or params.saturation != 1.0, self.hsv),
            "brightness/contrast": (
                params.brightness != 1.0 or params.contrast != 1.0,
                self.brightness_contrast,
            ),
            "shadow": (params.shadow[4] != 0.0, self.shadow),
            "noise": (params.noise_sigma != 0.0, self.noise),
        }
        missing = [name for name, (wants, present) in asked.items() if wants and not present]
        if missing:
            raise ValueError(
                f"SampleParams ask for {', '.join(missing)}, which the AugmentConfig of this DALI graph never "
                f"enables; draw the parameters from the same config (draw_params(rng, cfg)): {params}"
            )


@dataclass(frozen=True)
class GraphSpec:
    """What the graph is built from; fixed for a pipeline's lifetime.

    out_size     : (H, W) of image, semantic and instance; maps are (H / stride, W / stride)
    stride       : the cache's target-map stride (docs/design.md, "Stride")
    offset_scale : offset PNG code = round(v · offset_scale) + 32768 (the cache manifest's)
    heat_scale   : heatmap PNG code = round(heat · heat_scale)
    fit          : "contain" | "cover" (AugmentConfig.geometry.fit)
    photometric  : which photometric ops the graph holds
    mean, std    : normalisation per RGB channel, 0..1 scale
    """

    out_size: tuple[int, int]
    stride: int = 1
    offset_scale: int = 8
    heat_scale: int = 255
    fit: str = "contain"
    photometric: PhotometricOps = PhotometricOps()
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        map_hw(self.out_size, self.stride)  # ConfigError unless the size is divisible by the stride

    @classmethod
    def create(cls, *, out_size: Sequence[int], augment: AugmentConfig, manifest: Any) -> GraphSpec:
        """The spec for an output size, the augmentation config and a cache's manifest."""
        return cls(
            out_size=(int(out_size[0]), int(out_size[1])),
            stride=int(manifest.stride),
            offset_scale=int(manifest.offset_scale),
            heat_scale=int(manifest.heat_scale),
            fit=augment.geometry.fit,
            photometric=PhotometricOps.from_config(augment.photometric),
            mean=tuple(float(m) for m in augment.normalize.mean),
            std=tuple(float(s) for s in augment.normalize.std),
        )

    @property
    def map_size(self) -> tuple[int, int]:
        return map_hw(self.out_size, self.stride)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The external source's outputs, in order (``scalars`` only when a photometric op uses them)."""
        return MEMBERS + (PARAMS if self.photometric.any else PARAMS[:-1])


# ----------------------------------------------------------------------------- per-sample parameter tensors


def sample_inputs(params: SampleParams, src_hw: tuple[int, int], spec: GraphSpec) -> dict[str, np.ndarray]:
    """One sample's parameter tensors, computed from its `SampleParams` (names: `PARAMS`).

    image_affine  : float32 (2, 3) forward affine, source image → output (``inverse_map=False``)
    map_affine    : float32 (2, 3) the same for the target maps (``S(1/s)·M·S(s)``)
    offset_matrix : float32 (2, 3) ``[L | 0]``, L the forward linear part acting on (dy, dx); the zero
                    column drops the offset PNG's third channel
    scalars       : float32 (len(SCALARS),) in the order of `SCALARS`; the shadow band in output pixels
    """
    spec.photometric.check(params)
    image = affine_matrix(params, src_hw, spec.out_size, fit=spec.fit)
    offset = np.zeros((2, 3), np.float64)
    offset[:, :2] = offset_linear(image)
    seed = np.float32(params.noise_seed)
    values = {
        "hue": params.hue,
        "saturation": params.saturation,
        "brightness": params.brightness,
        "contrast": params.contrast,
        **dict(zip(SCALARS[4:9], shadow_band(params, spec.out_size), strict=True)),
        "noise_sigma": params.noise_sigma,
        "noise_seed_a": seed,
        "noise_seed_b": np.float32(_HASH_SEED_B) * seed,  # float32, as the reference computes it
    }
    return {
        "image_affine": image.astype(np.float32),
        "map_affine": map_affine(image, spec.stride).astype(np.float32),
        "offset_matrix": offset.astype(np.float32),
        "scalars": np.array([values[name] for name in SCALARS], dtype=np.float32),
    }


# ----------------------------------------------------------------------------------------------- the graph


class _Ops:
    """DALI's fn / types / math and the graph's device, so the graph's helpers read like the design."""

    def __init__(self, device: Literal["cpu", "gpu"]) -> None:
        self.fn, self.types, self.math, _ = _dali()
        self.device = device

    def decode(self, data, output_type, dtype=None):
        # "mixed": nvJPEG (or nvImageCodec's CPU codecs for PNG) with the result on the GPU.
        # EXIF orientation is ignored: annotations address the stored pixel grid (fastload.cache.format).
        return self.fn.decoders.image(
            data,
            device="mixed" if self.device == "gpu" else "cpu",
            output_type=output_type,
            dtype=self.types.UINT8 if dtype is None else dtype,
            adjust_orientation=False,
        )

    def warp(self, data, matrix, size: tuple[int, int], *, nearest: bool, fill: float):
        return self.fn.warp_affine(
            data,
            matrix=matrix,
            size=list(size),
            inverse_map=False,  # forward matrices, docs/design.md "Coordinates"
            fill_value=float(fill),
            interp_type=self.types.INTERP_NN if nearest else self.types.INTERP_LINEAR,
        )

    def cast(self, data, dtype):
        return self.fn.cast(data, dtype=dtype)

    def constant(self, array: np.ndarray):
        return self.types.Constant(np.ascontiguousarray(array, dtype=np.float32), device=self.device)


def define_graph(inputs: Mapping[str, Any], spec: GraphSpec, device: Literal["cpu", "gpu"]) -> dict[str, Any]:
    """The DALI graph, ``spec.inputs`` data nodes in, `OUTPUTS` data nodes out (call in a pipeline scope).

    The per-sample parameters stay CPU nodes: DALI takes them as argument inputs, on either device.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    ops = _Ops(device)
    types = ops.types
    (out_h, out_w), (map_h, map_w) = spec.out_size, spec.map_size
    affine, maps = inputs["image_affine"], inputs["map_affine"]

    image = ops.decode(inputs["image"], types.RGB)
    image = ops.warp(image, affine, spec.out_size, nearest=False, fill=0)
    if spec.photometric.any:
        image = _photometric(ops, image, inputs["scalars"], spec)
    image = ops.fn.crop_mirror_normalize(
        image,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in spec.mean],
        std=[255.0 * s for s in spec.std],
    )

    semantic = ops.decode(inputs["sem"], types.ANY_DATA)
    semantic = ops.warp(semantic, affine, spec.out_size, nearest=True, fill=255)
    semantic = ops.fn.reshape(ops.cast(semantic, types.INT64), shape=[out_h, out_w], layout="HW")

    # warp_affine has no uint16 kernel; float32 holds every id 0..65535 exactly and nearest only copies
    instance = ops.cast(ops.decode(inputs["ins"], types.ANY_DATA, types.UINT16), types.FLOAT)
    instance = ops.warp(instance, affine, spec.out_size, nearest=True, fill=0)
    instance = ops.fn.reshape(ops.cast(instance, types.INT32), shape=[out_h, out_w], layout="HW")

    heatmap = ops.decode(inputs["heat"], types.ANY_DATA) / float(spec.heat_scale)  # uint8 / float → float32
    heatmap = ops.warp(heatmap, maps, spec.map_size, nearest=False, fill=0)
    heatmap = ops.fn.reshape(heatmap, shape=[1, map_h, map_w], layout="CHW")

    offset = ops.decode(inputs["off"], types.ANY_DATA, types.UINT16)  # (H', W', 3) codes of (dy, dx, 0)
    offset = (offset - OFFSET_ZERO) / float(spec.offset_scale)  # uint16 − int → int32; / float → float32
    offset = ops.warp(offset, maps, spec.map_size, nearest=True, fill=0)
    offset = ops.fn.coord_transform(offset, M=inputs["offset_matrix"])  # (H', W', 2) forward (dy, dx)
    offset = ops.fn.transpose(offset, perm=[2, 0, 1], output_layout="CHW")
    return {"image": image, "semantic": semantic, "instance": instance, "heatmap": heatmap, "offset": offset}


def _photometric(ops: _Ops, image, scalars, spec: GraphSpec):
    """hsv → brightness/contrast (uint8, as DALI's ops round) → shadow → noise + clamp (float32)."""
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
    f32 = np.float32
    # broadcastable grids, (1, W, 1) columns and (H, 1, 1) rows, combined per sample by DALI's arithmetic;
    # the float32 operations and their order are the reference's, so the results are bit-identical
    col = np.arange(w, dtype=f32)[None, :, None]
    row = np.arange(h, dtype=f32)[:, None, None]
    channel = np.arange(3, dtype=f32)[None, None, :]
    if todo.shadow:
        x, y = ops.constant(col + f32(0.5)), ops.constant(row + f32(0.5))  # output pixel centres
        inside = (
            ops.math.abs(s["shadow_nx"] * x + s["shadow_ny"] * y - s["shadow_c"]) < s["shadow_half_width"]
        )
        image = image * (1.0 - s["shadow_strength"] * inside)  # (H, W, 3) · (H, W, 1)
    if todo.noise:
        a = _hash_base(ops, col, row, channel, _HASH_A) + s["noise_seed_a"]
        b = _hash_base(ops, col, row, channel, _HASH_B) + s["noise_seed_b"]
        u1 = ops.math.max(_frac(ops, ops.math.sin(a) * _HASH_MUL_A), _HASH_U1_MIN)
        u2 = _frac(ops, ops.math.sin(b) * _HASH_MUL_B)
        g = ops.math.sqrt(-2.0 * ops.math.log(u1)) * ops.math.cos((2.0 * math.pi) * u2)
        image = ops.math.clamp(image + s["noise_sigma"] * g, 0.0, 255.0)
    return image


def _hash_base(ops: _Ops, col, row, channel, k: tuple[float, float, float]):
    """``x·k0 + y·k1 + ch·k2`` as (H, W, 3), left to right in float32 like the reference."""
    f32 = np.float32
    return ops.constant(col * f32(k[0])) + ops.constant(row * f32(k[1])) + ops.constant(channel * f32(k[2]))


def _frac(ops: _Ops, t):
    return t - ops.math.floor(t)


def build_pipeline(
    spec: GraphSpec,
    source: Any,
    *,
    device: Literal["cpu", "gpu"],
    device_id: int | None,
    batch_size: int,
    num_threads: int,
    prefetch: int,
):
    """A built DALI pipeline of `define_graph`, fed by ``source``: a batch callback returning ``spec.inputs``
    columns (one list of per-sample arrays each) and raising StopIteration at the end of the plan."""
    fn, _, _, Pipeline = _dali()
    pipe = Pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if device == "gpu" else None,
        prefetch_queue_depth=prefetch,
    )
    with pipe:
        nodes = fn.external_source(source=source, num_outputs=len(spec.inputs), batch=True)
        outputs = define_graph(dict(zip(spec.inputs, nodes, strict=True)), spec, device)
        pipe.set_outputs(*(outputs[key] for key in OUTPUTS))
    pipe.build()
    return pipe


# --------------------------------------------------------------------------------------------- the backend


class _PlanFeed:
    """DALI's input callback for one pass, fed by a reader thread; remembers in order what comes out.

    A daemon thread pulls plans and reads their members from the cache (``read``) up to ``depth`` plans
    ahead, so a slow disk overlaps the training step instead of stalling the caller's thread inside DALI's
    callback. Each call returns the next non-empty plan's columns; every plan is appended to `pending` as
    ``(plan, names)``: the samples' ``shard:key`` names for a plan sent to DALI, ``None`` for an empty plan
    (N = 0), which never reaches DALI (the consumer yields it itself, in its place). An error while
    reading (a CacheError from a CRC check, or one from the plans themselves) ends DALI's epoch and is kept
    in `failure`: the consumer raises it, as is, after the batches before it.
    """

    _END = object()

    def __init__(self, plans: Iterator[BatchPlan], read, depth: int) -> None:
        self.pending: deque[tuple[BatchPlan, list[str] | None]] = deque()
        self.failure: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._work, args=(plans, read), name="fastload-reader", daemon=True
        )
        self._thread.start()

    def _work(self, plans: Iterator[BatchPlan], read) -> None:
        try:
            for plan in plans:
                if len(plan.indices) == 0:
                    item = (plan, None, None)
                else:
                    with nvtx_range("fastload/read"):
                        item = (plan, *read(plan))
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there in order
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._stop.is_set():  # wake up now and then: an abandoned pass must let the thread end
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __call__(self):
        while True:
            item = self._get()
            if item is self._END or isinstance(item, BaseException):
                if item is not self._END:
                    self.failure = item
                self._queue.put(self._END)  # DALI may ask again (drain); keep answering "the end"
                raise StopIteration
            plan, columns, names = item
            self.pending.append((plan, names))
            if columns is not None:
                return columns

    def _get(self):
        while True:
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                # a stopped feed, or a reader that ended without a word, has nothing more: never wait forever
                if self._stop.is_set() or not self._thread.is_alive():
                    try:  # the reader may have put its last items between the timeout and the check
                        return self._queue.get_nowait()
                    except queue.Empty:
                        return self._END

    def stop(self) -> None:
        """Let the reader thread end (after the read in progress, if any); never blocks."""
        self._stop.set()


class _Switch:
    """The callable DALI holds for the pipeline's lifetime; each pass plugs in its own feed."""

    def __init__(self) -> None:
        self.feed: _PlanFeed | None = None

    def __call__(self):
        if self.feed is None:
            raise StopIteration
        return self.feed()


class DaliBackend:
    """Runs batch plans through the DALI graph (on the GPU, or the same graph on CPU); yields torch tensors.

    Parameters
    ----------
    cache : an opened cache (``fastload.open_cache``): ``read_members``, ``image_size``, ``manifest``
    out_size : (H, W) of the outputs; divisible by the cache's stride
    augment : the AugmentConfig the plans' parameters come from (it decides which ops the graph holds)
    device : "cuda": decode and augment on the GPU, tensors on it; "cpu": DALI on CPU, CPU tensors
    device_id : the CUDA device for "cuda" (None: torch's current device); None for "cpu"
    batch_size : the largest N of a plan
    num_threads : DALI CPU threads
    prefetch : batches DALI prepares ahead of the one being consumed (``prefetch_queue_depth``)

    `iterate` yields dicts with `BATCH_KEYS` (dtypes and shapes: docs/design.md, "Loader"); ``index`` comes
    from the plan. On "cuda" every tensor is on the GPU, ready on torch's current stream (no host sync).
    """

    def __init__(
        self,
        *,
        cache: Any,
        out_size: Sequence[int],
        augment: AugmentConfig,
        device: Literal["cpu", "cuda"],
        device_id: int | None,
        batch_size: int,
        num_threads: int,
        prefetch: int,
    ) -> None:
        if device not in DEVICES:
            raise ValueError(f"device must be one of {list(DEVICES)}, got {device!r}")
        for name, value in (("batch_size", batch_size), ("num_threads", num_threads), ("prefetch", prefetch)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if device == "cpu" and device_id is not None:
            raise ValueError(f"device_id must be None with device='cpu', got {device_id!r}")
        _dali()  # fail now, with the install hint, not at the first batch
        if device == "cuda":
            if not torch.cuda.is_available():
                raise ValueError("device='cuda' but torch sees no CUDA device; pass device='cpu'")
            device_id = torch.cuda.current_device() if device_id is None else int(device_id)
        self.cache = cache
        self.spec = GraphSpec.create(out_size=out_size, augment=augment, manifest=cache.manifest)
        self.device = device
        self.device_id = device_id
        self.batch_size = int(batch_size)
        self.num_threads = int(num_threads)
        self.prefetch = int(prefetch)
        self._torch_device = torch.device("cuda", device_id) if device == "cuda" else torch.device("cpu")
        self._switch = _Switch()
        self._pipe = None
        self._dirty = False  # a pass left batches in flight: drain (or rebuild) before the next one
        self._generation = 0

    def iterate(self, batches: Iterator[BatchPlan]) -> Iterator[dict[str, torch.Tensor]]:
        """One batch dict per plan, in order. A later call supersedes an unfinished earlier iterator."""
        self._generation += 1
        return self._pass(iter(batches), self._generation)

    def close(self) -> None:
        """Free the pipeline (threads, buffers). Iterating again builds a new one; open iterators end."""
        self._generation += 1
        if self._switch.feed is not None:
            self._switch.feed.stop()
        self._switch.feed = None
        self._pipe = None
        self._dirty = False

    # --- one pass -----------------------------------------------------------------------------------------
    def _pass(self, plans: Iterator[BatchPlan], generation: int) -> Iterator[dict[str, torch.Tensor]]:
        pipe = self._ready_pipeline()
        feed = _PlanFeed(plans, self._read_batch, depth=self.prefetch)
        self._switch.feed = feed
        self._dirty = True
        try:
            pipe.schedule_run()  # the first call queues `prefetch` plans
            while feed.pending:
                if generation != self._generation:
                    raise RuntimeError(
                        "this DaliBackend iterator was superseded by a later iterate() call or close()"
                    )
                plan, names = feed.pending.popleft()
                if names is None:
                    yield self._empty_batch()
                    continue
                batch = self._collect(pipe, plan, names)
                pipe.schedule_run()  # queues the next plan while the caller uses this batch
                yield batch
            if feed.failure is not None:
                raise feed.failure  # after every batch before the plan that failed
            pipe.reset()  # the plans ran out and every batch was consumed: reusable without draining
            self._dirty = False
        finally:
            feed.stop()  # finished, failed or abandoned: the reader thread ends

    def _collect(self, pipe, plan: BatchPlan, names: list[str]) -> dict[str, torch.Tensor]:
        """Wait for one batch, make torch tensors of it, hand DALI its buffers back."""
        stream = torch.cuda.current_stream(self._torch_device) if self.device == "cuda" else None
        try:
            with nvtx_range("fastload/dali_outputs"):
                # with a stream, DALI orders its outputs before work queued on it: no host synchronisation
                outputs = pipe.share_outputs(stream) if stream is not None else pipe.share_outputs()
        except RuntimeError as exc:
            self._pipe = None  # never reuse a pipeline that failed
            failure = _named_failure(names, exc)
            if failure is exc:
                raise
            raise failure from exc
        with nvtx_range("fastload/h2d" if stream is not None else "fastload/to_torch"):
            batch = {
                key: self._to_torch(out, dtype, stream)
                for (key, dtype), out in zip(OUTPUTS.items(), outputs, strict=True)
            }
            batch["index"] = self._index(plan)
        pipe.release_outputs()
        return batch

    # --- pipeline lifecycle -------------------------------------------------------------------------------
    def _ready_pipeline(self):
        """The pipeline, ready for a pass: built on first use; after an abandoned pass drained or rebuilt."""
        if self._pipe is not None and self._dirty:
            try:
                _drain(self._pipe, self._switch)
            except Exception:  # noqa: BLE001 - a pipeline that cannot drain is replaced, never reused
                self._pipe = None
        if self._pipe is None:
            self._pipe = build_pipeline(
                self.spec,
                self._switch,
                device="gpu" if self.device == "cuda" else "cpu",
                device_id=self.device_id,
                batch_size=self.batch_size,
                num_threads=self.num_threads,
                prefetch=self.prefetch,
            )
        self._dirty = False
        return self._pipe

    # --- inputs and outputs -------------------------------------------------------------------------------
    def _read_batch(self, plan: BatchPlan) -> tuple[tuple[list[np.ndarray], ...], list[str]]:
        """The external source's columns (``spec.inputs``) for one plan, and its samples' names."""
        columns: dict[str, list[np.ndarray]] = {name: [] for name in self.spec.inputs}
        names = []
        for index, params in zip(plan.indices, plan.params, strict=True):
            i = int(index)
            members = self.cache.read_members(i)  # CacheError (missing shard, bad CRC) surfaces as is
            names.append(f"{members.shard}:{members.key} (cache index {i})")
            encoded = (members.image, members.semantic, members.instance, members.offset, members.heatmap)
            values = dict(zip(MEMBERS, (np.frombuffer(b, dtype=np.uint8) for b in encoded), strict=True))
            values.update(sample_inputs(params, self.cache.image_size(i), self.spec))
            for name, column in columns.items():
                column.append(values[name])
        return tuple(columns.values()), names

    def _to_torch(self, output, dtype: torch.dtype, stream) -> torch.Tensor:
        dense = output.as_tensor()  # (N, ...) view of the batch
        if stream is None:
            # default executor: an output buffer is never recycled once handed out, so the view stays valid
            return _checked(torch.from_numpy(np.asarray(dense)), dtype)
        from nvidia.dali.plugin.pytorch import feed_ndarray

        tensor = torch.empty(tuple(dense.shape()), dtype=dtype, device=self._torch_device)
        feed_ndarray(dense, tensor, cuda_stream=stream)  # asynchronous, on torch's current stream
        return tensor

    def _index(self, plan: BatchPlan) -> torch.Tensor:
        index = torch.as_tensor(np.asarray(plan.indices, dtype=np.int64))
        if self.device == "cpu":
            return index
        # from pinned memory the copy is asynchronous on the current stream (from pageable memory it would sync)
        return index.pin_memory().to(self._torch_device, non_blocking=True)

    def _empty_batch(self) -> dict[str, torch.Tensor]:
        """A batch with N = 0 (a short last step of a distributed epoch), made without running DALI."""
        (h, w), (mh, mw) = self.spec.out_size, self.spec.map_size
        shapes = {
            "image": (3, h, w),
            "semantic": (h, w),
            "instance": (h, w),
            "heatmap": (1, mh, mw),
            "offset": (2, mh, mw),
            "index": (),
        }
        dtypes = {**OUTPUTS, "index": torch.int64}
        return {
            key: torch.empty((0, *shapes[key]), dtype=dtypes[key], device=self._torch_device)
            for key in BATCH_KEYS
        }


def _drain(pipe, switch: _Switch) -> None:
    """Consume what an abandoned pass left queued, then end DALI's epoch so the next pass prefetches anew."""
    if switch.feed is not None:
        switch.feed.stop()  # a superseded pass may still be suspended, its reader thread alive
    switch.feed = None
    while not pipe.empty():
        pipe.share_outputs()
        pipe.release_outputs()
    pipe.schedule_run()  # the switch has no feed: StopIteration, DALI marks the end of the epoch
    pipe.reset()


def _checked(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if tensor.dtype != dtype:
        raise TypeError(f"DALI produced {tensor.dtype} where the batch contract says {dtype}")
    return tensor


def _named_failure(names: list[str], exc: RuntimeError) -> Exception:
    """A DALI error for a batch: a decoder's becomes a CacheError naming the samples; others get a note."""
    text = str(exc)
    op = re.search(r"rror in \w+ operator `([^`]+)`", text)
    if op is None or "decoders" not in op.group(1):
        add_note(exc, f"fastload: DALI was processing the samples {', '.join(names)}")
        return exc
    cause = text.split("encountered:", 1)[-1].strip().splitlines()
    return CacheError(
        f"{op.group(1)} failed ({cause[0] if cause else 'no detail'}) on the batch of samples "
        f"{', '.join(names)}: a member of one of them does not decode. Run `fastload cache verify` on the "
        "cache to find it, and rebuild its shard with `fastload cache build ... --resume`"
    )
