"""`Loader` (DALI) and `CpuLoader` (torch DataLoader + OpenCV reference kernels): DataLoader-shaped shells.

The shell owns everything both loaders must agree on — arguments, epoch order, rank sharding, per-sample
augmentation parameters, resumable state — and hands a backend an iterator of `BatchPlan`s. The backends
(`fastload.pipeline.dali.DaliBackend`, `fastload.pipeline.opencv.OpencvBackend`) only turn plans into tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from fastload import dataloader_args, validation
from fastload.augment.config import AugmentConfig
from fastload.cores import usable_cores
from fastload.pipeline.devices import choose_engine, feed_workers, rank_world, resolve_device
from fastload.pipeline.native import check_native
from fastload.pipeline.nvtx import nvtx_range
from fastload.pipeline.plan import Backend, BatchPlan
from fastload.pipeline.prefetch import DEFAULT_IO_THREADS
from fastload.pipeline.sampling import epoch_order, num_batches, rank_batches

STATE_VERSION = 2  # 2: the fingerprint of the cache, the augmentation and the size (1 had none; still loads)


class _LoaderShell:
    """Arguments, sharding, epochs and state shared by `Loader` and `CpuLoader`."""

    _name = "Loader"
    _in_process = False  # whether num_threads=0 (load in the calling process) is allowed

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Python names a function's class in its own argument errors ("_LoaderShell.__init__() got multiple
        # values for argument 'batch_size'"): each public loader gets __init__ under its own name
        if "__init__" not in cls.__dict__:
            cls.__init__ = dataloader_args.renamed(_LoaderShell.__init__, f"{cls.__qualname__}.__init__")

    def __init__(
        self,
        cache: Any,
        batch_size: int | None = None,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        size: Sequence[int] | None = (512, 512),
        augment: Any = None,
        device: str = "auto",
        engine: str = "auto",
        num_threads: int | None = None,
        prefetch: int = dataloader_args.DEFAULT_PREFETCH,
        rank: int | None = None,
        world_size: int | None = None,
        io_threads: int = DEFAULT_IO_THREADS,
        keys: Sequence[str] | None = None,
        # torch DataLoader's words for the same things (fastload.dataloader_args has the table)
        num_workers: int | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        prefetch_factor: int | None = None,
        timeout: float = 0,
        generator: torch.Generator | None = None,
        worker_init_fn: Callable[[int], None] | None = None,
        **dataloader_only: Any,
    ) -> None:
        name = self._name
        dataloader_args.refuse_unknown(name, dataloader_only, accepted=dataloader_args.parameters(_LoaderShell.__init__))
        dataloader_args.require_batch_size(name, batch_size)
        self.cache = dataloader_args.cache_argument(cache)
        self._owns_cache = self.cache is not cache  # opened here from a path: close() closes its files too
        self.batch_size = dataloader_args.positive_int("batch_size", batch_size)
        self.augment: AugmentConfig = dataloader_args.augment_argument(augment)
        self.size = dataloader_args.size_argument(size, stride=self.augment.map_stride)
        if self.size is None:  # each sample at its own size: evaluation (fastload.pipeline.native)
            check_native(self.augment, loader=name)
        validation.check_batch_pixels(self.batch_size, self.size or dataloader_args.largest_image(self.cache), error=ValueError)
        self.device = resolve_device(device)
        self.backend = self._engine(engine, device)
        workers = dataloader_args.workers(name, num_threads, num_workers, in_process=self._in_process)
        self.num_threads = usable_cores() if workers is None else workers
        processes = self.num_threads if self.backend == "opencv-workers" else None
        dataloader_args.check_persistent_workers(name, persistent_workers, has_workers=processes != 0)
        dataloader_args.check_pin_memory(pin_memory)
        dataloader_args.check_timeout(name, timeout)
        prefetch = dataloader_args.prefetch(name, prefetch, prefetch_factor, worker_processes=processes)
        self.prefetch = dataloader_args.positive_int("prefetch", prefetch)
        self.io_threads = dataloader_args.positive_int("io_threads", io_threads)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        seed = dataloader_args.seed(name, seed, generator)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.rank, self.world_size = rank_world(rank, world_size)
        self.keys = dataloader_args.batch_keys(name, keys, native=self.size is None)
        self._rendered = dataloader_args.rendered_config(name, self.augment, self.keys)  # what the engine runs
        self.worker_init_fn = dataloader_args.worker_init_fn(name, worker_init_fn, backend=self.backend)
        self._epoch = 0  # the epoch of the current (or next) pass
        self._yielded = 0  # batches of that pass yielded so far
        self._resume: int | None = None  # set by load_state_dict: where the next pass starts
        self._iterating: threading.Thread | None = None  # the thread whose pass is running
        self._backend = None

    def _engine(self, engine: str, device: Any) -> str:
        """``backend``: what makes the batches (`fastload.pipeline.devices.choose_engine`)."""
        return choose_engine(engine, device_asked=device, device=self.device, loader=self._name)

    # --- what a training script asks a DataLoader's dataset -------------------------------------------------
    @property
    def dataset(self):
        """The opened cache (`fastload.open_cache`): ``len(loader.dataset)`` samples, ``loader.dataset[i]`` one
        unaugmented sample; a rank's share of an epoch is ``len(loader)`` batches."""
        return self.cache

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names by train id, as in the batches' ``semantic``: ``classes[0] == "__background__"`` (train id
        0), then the K categories (train ids 1..K, COCO-id order). 255 = ignore (crowd regions, outside the
        image) is not a class: pass ``ignore_index=255`` to the loss."""
        return self.cache.manifest.classes

    @property
    def num_classes(self) -> int:
        """K + 1, background included: the number of logits the model needs (``len(classes)``)."""
        return self.cache.manifest.num_classes

    def _output(self, batch: dict[str, torch.Tensor]) -> Any:
        """What the training loop gets: the batch dict, or with ``keys=`` a tuple of those entries in that order."""
        return batch if self.keys is None else tuple(batch[key] for key in self.keys)

    # --- the DataLoader-shaped surface -------------------------------------------------------------------
    def __len__(self) -> int:
        return num_batches(
            len(self.cache), batch_size=self.batch_size, world_size=self.world_size, drop_last=self.drop_last
        )

    def set_epoch(self, epoch: int) -> None:
        """Use the order and augmentation of ``epoch`` for the next iteration (as DistributedSampler does).

        Without calls to set_epoch, each completed pass advances the epoch by one by itself. After
        `load_state_dict`, ``set_epoch`` of the state's own epoch keeps the resume position (a DDP loop calls
        it before every pass, the resumed one too); another epoch starts that epoch from its first batch.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        if self._resume is not None and int(epoch) == self._epoch:
            return
        self._epoch, self._yielded, self._resume = int(epoch), 0, None

    @property
    def epoch(self) -> int:
        return self._epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        me, other = threading.current_thread(), self._iterating
        if other is not None and other is not me and other.is_alive():
            raise RuntimeError(
                f"{self._name} is being iterated in thread {other.name!r}: a loader makes one pass at a time (a second "
                "pass would take its batches); give each thread its own loader, or end that thread's loop first"
            )
        self._iterating = me
        # a new pass starts at batch 0 of the current epoch, or where load_state_dict said
        epoch, start = self._epoch, self._resume or 0
        self._resume, self._yielded = None, start
        batches = self._get_backend().iterate(self.plans(epoch, start=start))
        try:
            while True:
                with nvtx_range("fastload/wait_for_data"):
                    batch = next(batches, None)
                if batch is None:
                    break
                self._yielded += 1
                yield self._output(batch)
        finally:
            if self._iterating is me:
                self._iterating = None
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        # a completed pass moves on to the next epoch, so `for epoch ...: for batch in loader` reshuffles
        # even without set_epoch
        if self._epoch == epoch and self._yielded == len(self):
            self._epoch, self._yielded = epoch + 1, 0

    def plans(self, epoch: int, *, start: int = 0) -> Iterator[BatchPlan]:
        """This rank's batch plans for ``epoch`` from batch ``start`` on: each batch's indices, and the (seed, epoch)
        the worker that makes the batch draws the samples' augmentation from (nothing per sample happens here)."""
        order = epoch_order(len(self.cache), seed=self.seed, epoch=epoch, shuffle=self.shuffle)
        batches = rank_batches(
            order,
            batch_size=self.batch_size,
            rank=self.rank,
            world_size=self.world_size,
            drop_last=self.drop_last,
        )
        for indices in batches[start:]:
            yield BatchPlan(indices=np.asarray(indices, dtype=np.int64), seed=self.seed, epoch=epoch)

    # --- resumable state (torchdata StatefulDataLoader convention) ---------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where this loader stands: resuming from it yields exactly the remaining batches, same augmentation."""
        return {
            "version": STATE_VERSION,
            "loader": self._name,
            "epoch": self._epoch,
            "batches_yielded": self._yielded if self._resume is None else self._resume,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_samples": len(self.cache),
            "fingerprint": self.fingerprint,
        }

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the saved one beyond the counts: the cache's content (the hash of its
        shards' sha256s; None for a cache object that has none), the augmentation config and the output size."""
        config = json.dumps(dataclasses.asdict(self.augment), sort_keys=True, default=str).encode()
        return {
            "cache": getattr(self.cache, "fingerprint", None),
            "augment": hashlib.sha256(config).hexdigest()[:16],
            "size": None if self.size is None else list(self.size),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; the next iteration starts at its batch. Mismatched setups are errors."""
        if not isinstance(state, dict) or state.get("version") not in (1, STATE_VERSION):
            raise ValueError(
                f"state must be a dict from state_dict() with version {STATE_VERSION}, got {validation.short_repr(state)}"
            )
        current = self.state_dict()
        saved = state.get("fingerprint") or {}  # version 1 states have none
        what = {"cache": "the cache's content (another cache, or one rebuilt)", "augment": "the augmentation config",
                "size": "the output size"}  # fmt: skip
        for key, words in what.items():
            if key in saved and saved[key] is not None and current["fingerprint"][key] is not None:
                if saved[key] != current["fingerprint"][key]:
                    raise ValueError(
                        f"load_state_dict: {words} differs from the run that saved the state ({key}: "
                        f"{validation.short_repr(saved[key])} then, {current['fingerprint'][key]!r} now); a resumed "
                        "run must see the same samples with the same augmentation to continue it exactly"
                    )
        for key in ("seed", "shuffle", "drop_last", "batch_size", "rank", "world_size", "num_samples"):
            mine = current[key]
            if state.get(key) != mine:
                raise ValueError(
                    f"load_state_dict: {key} was {state.get(key)!r} when the state was saved but is {mine!r} now; "
                    "resuming needs the same dataset, batch size, seed, shuffle, drop_last and ranks"
                )
        epoch, done = int(state["epoch"]), int(state["batches_yielded"])
        if not 0 <= done <= len(self):
            raise ValueError(f"load_state_dict: batches_yielded={done} is outside 0..{len(self)}")
        self._epoch, self._yielded, self._resume = epoch, done, done

    # --- lifecycle ---------------------------------------------------------------------------------------
    def _make_backend(self) -> Backend:
        """The engine named by ``backend``: the DALI graph on ``device``, or OpenCV in worker processes."""
        if self.backend == "opencv-workers":
            from fastload.pipeline.opencv import OpencvBackend

            return OpencvBackend(
                cache=self.cache,
                out_size=self.size,
                augment=self._rendered,
                device=self.device,
                batch_size=self.batch_size,
                num_workers=self.num_threads,
                prefetch=self.prefetch,
                io_threads=self.io_threads,
                worker_init_fn=self.worker_init_fn,
            )
        from fastload.pipeline.dali import DaliBackend

        return DaliBackend(
            cache=self.cache,
            out_size=self.size,
            augment=self._rendered,
            device=self.device,
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            prefetch=self.prefetch,
            workers=feed_workers(self.num_threads),
            io_threads=self.io_threads,
        )

    def _get_backend(self):
        if self._backend is None:
            self._backend = self._make_backend()
        return self._backend

    def close(self) -> None:
        """Stop worker threads/processes, free the pipeline, and close the shard files of a cache this loader
        opened (from a path). The loader can be iterated again afterwards (the files reopen on demand)."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        if getattr(self, "_owns_cache", False):
            self.cache.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing useful left to report
            pass

    def __repr__(self) -> str:
        return (
            f"{self._name}(cache={str(getattr(self.cache, 'root', '?'))!r}, samples={len(self.cache)}, "
            f"batch_size={self.batch_size}, size={self.size}, device={str(self.device)!r}, "
            f"rank={self.rank}/{self.world_size}, batches={len(self)})"
        )


class Loader(_LoaderShell):
    """The DALI loader: decodes and augments on the GPU (with device="cpu", runs the same graph on the CPU).

    With ``device="auto"`` and no GPU it makes the batches with the CpuLoader's engine instead, the faster one on
    a CPU (README, Benchmarks), and says so once (``backend`` tells which engine runs; ``engine=`` forces one).

    Parameters
    ----------
    cache : path or opened cache (``fastload.open_cache``)
    batch_size : samples per batch and rank; also positional, as DataLoader's: ``Loader(cache, 48)``
    shuffle, seed : a full-dataset permutation per epoch, a function of (seed, epoch)
    drop_last : drop the last incomplete global step (see fastload.pipeline.sampling)
    size : (H, W) output size; divisible by the targets' stride. None: every sample at its own size, for
        evaluation (no augmentation allowed: ``augment="none"``); a batch is padded to its largest sample (each
        side a multiple of the stride) with image 0, semantic 255, instance 0, and holds ``valid`` bool
        (N, H, W), True on the samples' own pixels (`fastload.pipeline.native`)
    augment : AugmentConfig, a YAML path, or a shipped config's name: "default", "none" (None = "none"); its
        ``targets`` section sets the heatmap sigma, the stride and the semantic loss weights
    device : "auto" (CUDA when available, else the CPU engine above), "cuda", "cuda:N" or "cpu" (DALI's graph
        on the CPU); "auto" and "cuda" pick ``cuda:$LOCAL_RANK`` under torchrun, else torch's current device
    num_threads : DALI CPU threads (default: the usable cores); worker processes for the CPU engine
    prefetch : batches prepared ahead of the one being consumed
    rank, world_size : default to torch.distributed's when it is initialised, else 0 and 1
    io_threads : cache reads in flight at most, per reading process (default 64); within it each keeps as many
        as it measures it needs (`fastload.pipeline.prefetch`)
    keys : e.g. ``("image", "semantic")``: yield tuples of those batch entries in that order (``for image,
        target in loader``); None (default) yields the dict. Keys naming no target turn the targets off
    num_workers, pin_memory, persistent_workers, prefetch_factor, timeout, generator, worker_init_fn :
        torch DataLoader's arguments, honoured, mapped or refused as `fastload.dataloader_args` tabulates
        (``num_workers`` = ``num_threads``; ``generator``: the seed is drawn from it; ``worker_init_fn`` only
        for worker processes, not DALI); DataLoader's ``sampler``, ``batch_sampler``, ``collate_fn`` raise a
        TypeError naming what to use instead

    Each batch: ``image`` float32 (N, 3, H, W) normalised, ``semantic`` int64 (N, H, W) with 255 = ignore,
    ``instance`` int32 (N, H, W), ``heatmap`` float32 (N, 1, H', W'), ``offset`` float32 (N, 2, H', W')
    in (dy, dx), ``semantic_weight`` float32 (N, H, W), ``center_weight`` and ``offset_weight`` float32
    (N, 1, H', W') (Panoptic-DeepLab's loss weights: `fastload.targets.panoptic_weights`), ``index`` int64 (N,).
    H' = H / stride. The targets are rendered after augmentation from the batch's own masks, on the loader's
    device; with ``targets: none``, or ``keys=`` that name none of them, nothing is rendered.
    ``semantic`` holds train ids: ``loader.classes[k]`` names id k (0 = ``"__background__"``), and a model
    needs ``loader.num_classes`` (K + 1) logits. N may be 0 on a rank's share of a short last step
    (``drop_last=False``): `fastload.tools.bench.model.segnet_loss` gives 0 there, and a plain cross-entropy needs
    ``loss = criterion(out, target) if len(target) else out.sum() * 0``.
    """

    _name = "Loader"


class CpuLoader(_LoaderShell):
    """The CPU reference loader: torch DataLoader worker processes + OpenCV/NumPy kernels.

    Same signature and batches as `Loader`; ``num_threads`` (``num_workers``) is the number of worker processes
    (0 = load in the main process), ``io_threads`` the concurrent reads of each, ``worker_init_fn(worker_id)``
    runs in each worker after fastload's own set-up (not with 0 workers, as in DataLoader), and
    ``prefetch_factor`` is per worker (``prefetch`` = factor × workers). Workers start with ``forkserver`` (a
    script using it needs the ``if __name__ == "__main__":`` guard, as with any non-fork DataLoader). It is
    the benchmark's "before" and the reference the DALI path is checked against.
    """

    _name = "CpuLoader"
    _in_process = True  # num_threads=0 loads in the calling process, as DataLoader's num_workers=0 does

    def _engine(self, engine: str, device: Any) -> str:
        if engine not in ("auto", "opencv"):
            raise ValueError(f"CpuLoader: engine must be 'opencv' (or 'auto'), got {engine!r}; fastload.Loader runs DALI")
        return "opencv-workers"


