"""The DALI backend: one graph, parametrised by device, that turns batch plans into training tensors.

The loader shell (`fastload.loader`) decides the order, the sharding and every sample's `SampleParams`; this
module only executes plans. Per sample, `fn.external_source` hands the graph the sample's cache members and a
few small parameter tensors computed from `SampleParams` (:func:`sample_inputs`). Reading is concurrent
(`fastload.pipeline.readahead`): a pool of threads reads many samples at once, so a slow disk or a NAS overlaps
the training step. The graph (:func:`define_graph`) is the same on both devices but for where the labels are
decoded:

- ``"gpu"``: the image goes through nvJPEG (``"mixed"`` decoding); the LZ4 label members are inflated on the
  GPU (``fn.decoders.inflate``, nvCOMP). No label touches a host decoder: the host reads bytes, parses two
  small headers and draws parameters.
- ``"cpu"`` (CI, machines without a GPU): everything on the CPU; the labels are decoded from LZ4 by the reader
  threads (the lz4 package releases the GIL) and enter the graph as arrays.

From there on, per sample, in the canonical order of docs/design.md ("Augmentation"):

============  ===========================================================================================
output        ops
============  ===========================================================================================
``image``     decode RGB → warp_affine (linear, fill 0, uint8) → hsv → brightness_contrast → shadow band
              and texture noise (float32) → uint8 → crop_mirror_normalize → CHW float32. Photometric ops the
              config never enables are left out: ``none`` is warp + normalise.
``semantic``  uint8 → warp_affine (nearest, fill 255) → int64 (H, W)
``instance``  the uint16 member read as int16 (ids <= 32767) → warp_affine (nearest, fill 0) → int32 (H, W)
============  ===========================================================================================

Heatmap, offsets and semantic weights are rendered after the graph, from the warped ``instance`` output, on the
same device (`fastload.pipeline.batch`). Each op mirrors a kernel of `fastload.augment.reference`;
``tests/test_fidelity.py`` replays the same parameters through both. DALI is imported lazily, here only:
``import fastload`` never loads it.
"""

from __future__ import annotations

import logging
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
from fastload.augment.params import SampleParams, affine_matrix, map_hw, shadow_band
from fastload.augment.reference import SEMANTIC_FILL, noise_texture
from fastload.cache.format import decode_label, parse_label
from fastload.errors import CacheError, add_note
from fastload.pipeline.batch import render_batch_targets
from fastload.pipeline.nvtx import nvtx_range
from fastload.pipeline.plan import BATCH_KEYS, BatchPlan
from fastload.pipeline.readahead import DEFAULT_IO_THREADS, DEFAULT_MAX_BYTES, ReadAhead, plans_for

__all__ = ["DaliBackend", "GraphSpec", "PhotometricOps", "build_pipeline", "define_graph", "sample_inputs"]

DEVICES = ("cpu", "cuda")

MEMBERS = ("image", "sem", "ins")
"""Cache members, in the order the external source hands them to the graph."""
GPU_LABEL_INPUTS = ("band_shape", "label_shape", "sem_offsets", "sem_sizes", "ins_offsets", "ins_sizes")
"""With ``"gpu"``: where each label's LZ4 bands lie (``fn.decoders.inflate``'s chunks) and the shapes they make."""
PARAMS = ("image_affine", "scalars", "noise_anchor")
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
)
"""The per-sample scalars, packed in this order into one float32 vector (the ``scalars`` input)."""

OUTPUTS = {
    "image": torch.float32,  # (N, 3, H, W)
    "semantic": torch.int64,  # (N, H, W)
    "instance": torch.int32,  # (N, H, W)
}
"""The graph's outputs, in order, and their torch dtypes; the targets and ``index`` complete `BATCH_KEYS`."""

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

    out_size     : (H, W) of image, semantic and instance
    device       : "cpu" | "gpu": where the graph runs, and so where the labels are decoded
    fit          : "contain" | "cover" (AugmentConfig.geometry.fit)
    photometric  : which photometric ops the graph holds
    mean, std    : normalisation per RGB channel, 0..1 scale
    """

    out_size: tuple[int, int]
    device: Literal["cpu", "gpu"] = "cpu"
    fit: str = "contain"
    photometric: PhotometricOps = PhotometricOps()
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {self.device!r}")

    @classmethod
    def create(cls, *, out_size: Sequence[int], augment: AugmentConfig, device: Literal["cpu", "gpu"]) -> GraphSpec:
        """The spec for an output size, the augmentation config and a device."""
        map_hw(tuple(out_size), augment.targets.stride)  # ConfigError unless the size is divisible by the stride
        return cls(
            out_size=(int(out_size[0]), int(out_size[1])),
            device=device,
            fit=augment.geometry.fit,
            photometric=PhotometricOps.from_config(augment.photometric),
            mean=tuple(float(m) for m in augment.normalize.mean),
            std=tuple(float(s) for s in augment.normalize.std),
        )

    @property
    def inputs(self) -> tuple[str, ...]:
        """The external source's outputs, in order."""
        labels = GPU_LABEL_INPUTS if self.device == "gpu" else ()
        params = PARAMS if self.photometric.noise else PARAMS[:-1]
        return MEMBERS + labels + (params if self.photometric.any else params[:1])


# ----------------------------------------------------------------------------- per-sample input tensors


def sample_inputs(params: SampleParams, src_hw: tuple[int, int], spec: GraphSpec) -> dict[str, np.ndarray]:
    """One sample's parameter tensors, computed from its `SampleParams` (names: `PARAMS`).

    image_affine : float32 (2, 3) forward affine, source image → output (``inverse_map=False``)
    scalars      : float32 (len(SCALARS),) in the order of `SCALARS`; the shadow band in output pixels
    noise_anchor : int32 (2,) (row, column) of the sample's window in the noise texture
    """
    spec.photometric.check(params)
    values = {
        "hue": params.hue,
        "saturation": params.saturation,
        "brightness": params.brightness,
        "contrast": params.contrast,
        **dict(zip(SCALARS[4:9], shadow_band(params, spec.out_size), strict=True)),
        "noise_sigma": params.noise_sigma,
    }
    return {
        "image_affine": affine_matrix(params, src_hw, spec.out_size, fit=spec.fit).astype(np.float32),
        "scalars": np.array([values[name] for name in SCALARS], dtype=np.float32),
        "noise_anchor": np.asarray(params.noise_offset, dtype=np.int32),
    }


def label_inputs(semantic: bytes, instance: bytes, hw: tuple[int, int], spec: GraphSpec) -> dict[str, np.ndarray]:
    """A sample's label inputs for the graph: encoded members and their band tables ("gpu"), or decoded arrays.

    "cpu": ``sem`` uint8 and ``ins`` int16 (the uint16 ids, all <= 32767, read as int16: DALI's warp has no
    uint16 kernel), each (padded height, W, 1): the last band's fill rows are what a warp reads outside the
    image anyway. "gpu": the members as bytes plus `GPU_LABEL_INPUTS`, parsed from the members' headers.

    Raises CacheError when a member's header disagrees with the sample's size ``hw``.
    """
    layouts = {"sem": parse_label(semantic, what="semantic"), "ins": parse_label(instance, what="instance")}
    for kind, layout in layouts.items():
        if (layout.height, layout.width) != tuple(hw):
            raise CacheError(f"{kind} member is {layout.height} x {layout.width}, the sample {hw[0]} x {hw[1]}")
    if spec.device == "cpu":
        return {
            "sem": decode_label(semantic, kind="sem", padded=True)[..., None],
            "ins": decode_label(instance, kind="ins", padded=True).view(np.int16)[..., None],
        }
    sem = layouts["sem"]
    out = {"sem": np.frombuffer(semantic, np.uint8), "ins": np.frombuffer(instance, np.uint8)}
    out["band_shape"] = np.array(sem.band_shape, dtype=np.int32)
    out["label_shape"] = np.array([sem.padded_height, sem.width, 1], dtype=np.int32)
    for kind, layout in layouts.items():
        out[f"{kind}_offsets"] = layout.band_offsets.astype(np.int32)
        out[f"{kind}_sizes"] = layout.band_sizes.astype(np.int32)
    return out


# ----------------------------------------------------------------------------------------------- the graph


class _Ops:
    """DALI's fn / types / math and the graph's device, so the graph's helpers read like the design."""

    def __init__(self, device: Literal["cpu", "gpu"]) -> None:
        self.fn, self.types, self.math, _ = _dali()
        self.device = device

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
        """The (padded height, W, 1) label array: inflated on the GPU, or as the reader decoded it."""
        if self.device == "cpu":
            return inputs[kind]
        bands = self.fn.decoders.inflate(
            inputs[kind].gpu(),
            shape=inputs["band_shape"],
            chunk_offsets=inputs[f"{kind}_offsets"],
            chunk_sizes=inputs[f"{kind}_sizes"],
            dtype=dtype,
            algorithm="LZ4",
        )  # (bands, rows, W)
        return self.fn.reshape(bands, shape=inputs["label_shape"], layout="HWC")

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


def define_graph(inputs: Mapping[str, Any], spec: GraphSpec) -> dict[str, Any]:
    """The DALI graph, ``spec.inputs`` data nodes in, `OUTPUTS` data nodes out (call in a pipeline scope).

    The per-sample parameters stay CPU nodes: DALI takes them as argument inputs, on either device.
    """
    ops = _Ops(spec.device)
    types = ops.types
    out_h, out_w = spec.out_size
    affine = inputs["image_affine"]

    image = ops.decode_image(inputs["image"])
    image = ops.warp(image, affine, spec.out_size, nearest=False, fill=0)
    if spec.photometric.any:
        image = _photometric(ops, image, inputs, spec)
    image = ops.fn.crop_mirror_normalize(
        image,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in spec.mean],
        std=[255.0 * s for s in spec.std],
    )

    semantic = ops.warp(ops.label(inputs, "sem", types.UINT8), affine, spec.out_size, nearest=True, fill=SEMANTIC_FILL)
    semantic = ops.fn.reshape(ops.cast(semantic, types.INT64), shape=[out_h, out_w], layout="HW")

    instance = ops.warp(ops.label(inputs, "ins", types.INT16), affine, spec.out_size, nearest=True, fill=0)
    instance = ops.fn.reshape(ops.cast(instance, types.INT32), shape=[out_h, out_w], layout="HW")
    return {"image": image, "semantic": semantic, "instance": instance}


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
    columns (one list of per-sample arrays each) and raising StopIteration at the end of the plan."""
    fn, _, _, Pipeline = _dali()
    pipe = Pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if spec.device == "gpu" else None,
        prefetch_queue_depth=prefetch,
    )
    labels_decoded = spec.device == "cpu"
    layouts = ["HWC" if labels_decoded and name in ("sem", "ins") else "" for name in spec.inputs]
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
    """
    shutdown = getattr(pipe, "_shutdown", None)
    if shutdown is not None:
        shutdown()


# --------------------------------------------------------------------------------------------- the backend


@dataclass(frozen=True)
class _Prepared:
    """One sample, ready for the graph: its name for error messages, its instance count, its inputs."""

    name: str
    instances: int
    inputs: dict[str, np.ndarray]


class _PlanFeed:
    """DALI's input callback for one pass, fed by a thread that reads ahead; remembers in order what comes out.

    A thread iterates a `ReadAhead` over the pass's plans (many samples read at once on its pool) and queues
    each plan's columns for DALI's callback, up to ``depth`` plans ahead. Each call returns the next non-empty
    plan's columns; every plan is appended to `pending` as ``(plan, names, max_id)``: the samples' ``shard:key``
    names and the largest instance count (for the target renderer), ``names`` None for an empty plan (N = 0),
    which never reaches DALI (the consumer yields it itself, in its place). An error (a CacheError from a CRC
    check or a label header, or one from the plans themselves) ends DALI's epoch and is kept in `failure`: the
    consumer raises it, as is, after the batches before it.
    """

    _END = object()

    def __init__(self, reads: ReadAhead, inputs: Sequence[str], depth: int) -> None:
        self.pending: deque[tuple[BatchPlan, list[str] | None, int]] = deque()
        self.failure: BaseException | None = None
        self._inputs = tuple(inputs)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(reads,), name="fastload-feed", daemon=True)
        self._thread.start()

    def _work(self, reads: ReadAhead) -> None:
        try:
            while not self._stop.is_set():
                with nvtx_range("fastload/read"):
                    item = next(reads, None)
                if item is None:
                    self._put(self._END)
                    return
                plan, samples = item
                if not self._put((plan, self._columns(samples))):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there in order
            self._put(exc)
        finally:
            reads.close()  # cancel what was read ahead, wait for reads in progress: no thread left behind

    def _columns(self, samples: list[_Prepared]) -> tuple[tuple[list[np.ndarray], ...], list[str], int] | None:
        if not samples:
            return None
        columns = tuple([s.inputs[name] for s in samples] for name in self._inputs)
        return columns, [s.name for s in samples], max(s.instances for s in samples)

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
            plan, prepared = item
            if prepared is None:
                self.pending.append((plan, None, 0))
                continue
            columns, names, max_id = prepared
            self.pending.append((plan, names, max_id))
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

    def stop(self, *, wait: bool = True) -> None:
        """End the feed thread: it finishes the plan it is on (its reads are bounded) and closes its pool."""
        self._stop.set()
        if wait and self._thread is not threading.current_thread():
            self._thread.join()


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
    cache : an opened cache (``fastload.open_cache``): ``read_members``, ``image_size``, ``span_bytes``
    out_size : (H, W) of the outputs; divisible by the targets' stride
    augment : the AugmentConfig the plans' parameters come from (it decides which ops the graph holds, the
        normalisation and the targets)
    device : "cuda": decode and augment on the GPU, tensors on it; "cpu": DALI on CPU, CPU tensors
    device_id : the CUDA device for "cuda" (None: torch's current device); None for "cpu"
    batch_size : the largest N of a plan
    num_threads : DALI CPU threads
    prefetch : batches DALI prepares ahead of the one being consumed (``prefetch_queue_depth``)
    io_threads : reads in flight at most (`fastload.pipeline.readahead`)
    max_read_bytes : bytes read ahead and not yet handed to DALI, at most (one batch may exceed it)

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
        io_threads: int = DEFAULT_IO_THREADS,
        max_read_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if device not in DEVICES:
            raise ValueError(f"device must be one of {list(DEVICES)}, got {device!r}")
        for name, value in (
            ("batch_size", batch_size),
            ("num_threads", num_threads),
            ("prefetch", prefetch),
            ("io_threads", io_threads),
            ("max_read_bytes", max_read_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if device == "cpu" and device_id is not None:
            raise ValueError(f"device_id must be None with device='cpu', got {device_id!r}")
        _dali()  # fail now, with the install hint, not at the first batch
        if device == "cuda":
            if not torch.cuda.is_available():
                raise ValueError("device='cuda' but torch sees no CUDA device; pass device='cpu'")
            if not nvcomp_available():  # a warning, not an error: DALI may still find it where we do not look
                logging.getLogger("fastload").warning(nvcomp_missing("fastload cannot find it where DALI looks"))
            device_id = torch.cuda.current_device() if device_id is None else int(device_id)
        self.cache = cache
        self.augment = augment
        self.spec = GraphSpec.create(out_size=out_size, augment=augment, device="gpu" if device == "cuda" else "cpu")
        self.device = device
        self.device_id = device_id
        self.batch_size = int(batch_size)
        self.num_threads = int(num_threads)
        self.prefetch = int(prefetch)
        self.io_threads = int(io_threads)
        self.max_read_bytes = int(max_read_bytes)
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
        """Stop the feed and reader threads and shut the pipeline down now. Iterating again builds a new one."""
        self._generation += 1
        self._stop_feed()
        self._discard_pipeline()

    # --- one pass -----------------------------------------------------------------------------------------
    def _pass(self, plans: Iterator[BatchPlan], generation: int) -> Iterator[dict[str, torch.Tensor]]:
        pipe = self._ready_pipeline()
        reads = ReadAhead(
            plans,
            self._prepare,
            sample_bytes=self.cache.span_bytes,
            io_threads=self.io_threads,
            max_bytes=self.max_read_bytes,
            # enough plans that io_threads reads can be in flight (batch 8 with one plan: 8 at most), and at
            # least one beyond what DALI prefetches; the byte bound still caps the memory this holds
            max_plans=max(self.prefetch, plans_for(self.io_threads, self.batch_size)) + 1,
        )
        feed = _PlanFeed(reads, self.spec.inputs, depth=self.prefetch)
        self._switch.feed = feed
        self._dirty = True
        try:
            pipe.schedule_run()  # the first call queues `prefetch` plans
            while feed.pending:
                if generation != self._generation:
                    raise RuntimeError(
                        "this DaliBackend iterator was superseded by a later iterate() call or close()"
                    )
                plan, names, max_id = feed.pending.popleft()
                if names is None:
                    yield self._empty_batch()
                    continue
                batch = self._collect(pipe, plan, names, max_id)
                pipe.schedule_run()  # queues the next plan while the caller uses this batch
                yield batch
            if feed.failure is not None:
                raise feed.failure  # after every batch before the plan that failed
            pipe.reset()  # the plans ran out and every batch was consumed: reusable without draining
            self._dirty = False
        except GeneratorExit:  # abandoned (break, a new pass): the next pass drains the pipeline and reuses it
            raise
        except BaseException:
            # a failed pass (a bad sample, DALI's own error): nothing of it may keep running, in this process or
            # in one forked later; the next pass builds a fresh pipeline
            if generation == self._generation:
                self._stop_feed()
                self._discard_pipeline()
            raise
        finally:
            feed.stop()  # finished, failed or abandoned: the feed thread and its readers end

    def _collect(self, pipe, plan: BatchPlan, names: list[str], max_id: int) -> dict[str, torch.Tensor]:
        """Wait for one batch, make torch tensors of it, hand DALI its buffers back, render the targets."""
        stream = torch.cuda.current_stream(self._torch_device) if self.device == "cuda" else None
        try:
            with nvtx_range("fastload/dali_outputs"):
                # with a stream, DALI orders its outputs before work queued on it: no host synchronisation
                outputs = pipe.share_outputs(stream) if stream is not None else pipe.share_outputs()
        except RuntimeError as exc:
            failure = _named_failure(names, exc)
            if failure is exc:
                raise
            raise failure from exc
        with nvtx_range("fastload/h2d" if stream is not None else "fastload/to_torch"):
            batch = {
                key: self._to_torch(out, dtype, stream)
                for (key, dtype), out in zip(OUTPUTS.items(), outputs, strict=True)
            }
        pipe.release_outputs()
        batch.update(render_batch_targets(batch["instance"], self.augment.targets, max_id=max_id))
        batch["index"] = self._index(plan)
        return {key: batch[key] for key in BATCH_KEYS}

    # --- pipeline lifecycle -------------------------------------------------------------------------------
    def _ready_pipeline(self):
        """The pipeline, ready for a pass: built on first use; after an abandoned pass drained or rebuilt."""
        if self._pipe is not None and self._dirty:
            try:
                _drain(self._pipe, self._switch)
            except Exception:  # noqa: BLE001 - a pipeline that cannot drain is replaced, never reused
                self._discard_pipeline()
        if self._pipe is None:
            self._pipe = build_pipeline(
                self.spec,
                self._switch,
                device_id=self.device_id,
                batch_size=self.batch_size,
                num_threads=self.num_threads,
                prefetch=self.prefetch,
            )
        self._dirty = False
        return self._pipe

    def _stop_feed(self) -> None:
        feed, self._switch.feed = self._switch.feed, None
        if feed is not None:
            feed.stop()

    def _discard_pipeline(self) -> None:
        pipe, self._pipe = self._pipe, None
        self._dirty = False
        if pipe is not None:
            shutdown_pipeline(pipe)

    # --- inputs and outputs -------------------------------------------------------------------------------
    def _prepare(self, index: int, params: SampleParams) -> _Prepared:
        """Read one sample and make its graph inputs; runs on a reader thread (`ReadAhead`)."""
        members = self.cache.read_members(index)  # CacheError (missing shard, bad CRC) names shard and sample
        name = f"{members.shard}:{members.key} (cache index {index})"
        hw = self.cache.image_size(index)
        try:
            inputs = label_inputs(members.semantic, members.instance, hw, self.spec)
        except CacheError as exc:
            raise CacheError(
                f"{name}: {exc}; run `fastload cache verify` on the cache and rebuild the shard with "
                "`fastload cache build ... --resume`"
            ) from None
        inputs["image"] = np.frombuffer(members.image, dtype=np.uint8)
        inputs.update(sample_inputs(params, hw, self.spec))
        return _Prepared(name, len(members.meta.get("instances", ())), inputs)

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
        h, w = self.spec.out_size
        batch = {
            "image": torch.empty((0, 3, h, w), dtype=torch.float32, device=self._torch_device),
            "semantic": torch.empty((0, h, w), dtype=torch.int64, device=self._torch_device),
            "instance": torch.empty((0, h, w), dtype=torch.int32, device=self._torch_device),
        }
        batch.update(render_batch_targets(batch["instance"], self.augment.targets, max_id=0))
        batch["index"] = torch.empty((0,), dtype=torch.int64, device=self._torch_device)
        return {key: batch[key] for key in BATCH_KEYS}


def _drain(pipe, switch: _Switch) -> None:
    """Consume what an abandoned pass left queued, then end DALI's epoch so the next pass prefetches anew."""
    feed, switch.feed = switch.feed, None
    if feed is not None:
        feed.stop()  # a superseded pass may still be suspended, its feed thread alive
    while not pipe.empty():
        pipe.share_outputs()
        pipe.release_outputs()
    pipe.schedule_run()  # the switch has no feed: StopIteration, DALI marks the end of the epoch
    pipe.reset()


def _checked(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if tensor.dtype != dtype:
        raise TypeError(f"DALI produced {tensor.dtype} where the batch contract says {dtype}")
    return tensor


def nvcomp_missing(problem: str) -> str:
    """What to do when DALI's GPU inflate lacks nvCOMP; ``problem`` says how it showed."""
    return (
        "fastload.Loader on the GPU: DALI inflates the LZ4 label members with NVIDIA nvCOMP 5 (libnvcomp.so.5), and "
        f"{problem}. The nvidia-dali-cuda120 wheel normally brings it (nvidia-libnvcomp-cu12); an environment "
        "assembled by hand may lack it: pip install 'nvidia-libnvcomp-cu12>=5,<6' (for a CUDA 13 build of DALI, "
        "nvidia-libnvcomp-cu13), or put a libnvcomp.so.5 on LD_LIBRARY_PATH. The cache is fine: rebuilding or "
        "verifying it changes nothing"
    )


def nvcomp_available() -> bool:
    """Whether DALI's ``fn.decoders.inflate`` will find nvCOMP: beside DALI, as the nvidia-libnvcomp wheels put
    it (DALI's own search path), or anywhere the dynamic loader looks."""
    import ctypes
    from pathlib import Path

    import nvidia.dali

    nvidia_dir = Path(nvidia.dali.__file__).resolve().parent.parent
    # DALI's own search path (its RUNPATH): beside it, as the nvidia-libnvcomp wheels install it, then CUDA's
    places = (nvidia_dir / "libnvcomp" / "lib64", nvidia_dir / "cu12" / "lib", Path("/usr/local/cuda/lib64"))
    names = ("libnvcomp.so.5", "libnvcomp.so")
    if any((place / name).exists() for place in places for name in names):
        return True
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def _named_failure(names: list[str], exc: RuntimeError) -> Exception:
    """A DALI error for a batch: a decoder's becomes a CacheError naming the samples; others get a note."""
    text = str(exc)
    if "nvcomp" in text.lower():  # the library is missing or broken: no sample is at fault
        return RuntimeError(nvcomp_missing(f"DALI cannot load it (DALI said: {text.strip().splitlines()[0]})"))
    op = re.search(r"rror in \w+ operator `([^`]+)`", text)
    if op is None or "decoders" not in op.group(1):
        add_note(exc, f"fastload: DALI was processing the samples {', '.join(names)}")
        return exc
    cause = text.split("encountered:", 1)[-1].strip().splitlines()
    # verify decodes with OpenCV: it finds damaged bytes, but passes an image that OpenCV decodes and DALI
    # cannot (the build normalises every such case known, see fastload.cache.images); say both fixes
    return CacheError(
        f"{op.group(1)} failed ({cause[0] if cause else 'no detail'}) on the batch of samples "
        f"{', '.join(names)}: a member of one of them does not decode. Run `fastload cache verify` on the "
        "cache: if it names a sample, its bytes are damaged; rebuild its shard with `fastload cache build ... "
        "--resume`. If verify passes, OpenCV decodes the image and DALI cannot, and rebuilding changes nothing: "
        "re-encode that image file (e.g. as PNG) and rebuild with --resume, and report it to fastload with the "
        "file (a sample key is the image's position in the COCO images list; "
        "`open_cache(CACHE)[i]['meta']['file_name']` names the file of cache index i)"
    )
