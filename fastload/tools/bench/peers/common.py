"""What every peer loader shares: reading the cache, the resize-to-fit, the epoch sampler, the loader shell.

A peer reads the same cache bytes as fastload (`fastload.cache.reader.CacheDataset.read_members`, OpenCV decode
through `fastload.cache.format.decode_image`, LZ4 masks through `decode_labels`) and yields the same batch dict
(`fastload.pipeline.plan.BATCH_KEYS`, dtypes and shapes of docs/design.md, "Loader"), so the bench times the
augmentation libraries and nothing else. What differs per peer is only how a sample is augmented, and where.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fastload import validation
from fastload.augment.params import fit_scale
from fastload.cache.format import decode_image
from fastload.cache.reader import decode_labels
from fastload.errors import ConfigError
from fastload.labels import INSTANCE_FILL, SEMANTIC_FILL
from fastload.pipeline.plan import BATCH_KEYS
from fastload.pipeline.sampling import epoch_order
from fastload.pipeline.workers import mp_context
from fastload.validation import check_int

EXTRA_HINT = 'pip install "fastload[peers]"'


def require(module: str, *, peer: str) -> Any:
    """Import an optional peer library, or raise a one-line ConfigError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"the {peer!r} peer loader needs {module}, which is not installed: {EXTRA_HINT}") from None


def any_gate(*ps: float) -> float:
    """P(at least one of independent gates is on): the one gate a peer library has for several fastload gates
    (e.g. one affine for fastload's independent rotation, scale and translation gates)."""
    off = 1.0
    for p in ps:
        off *= 1.0 - p
    return 1.0 - off


# ------------------------------------------------------------------------------------------------- samples


def fit_to_output(
    image: np.ndarray, semantic: np.ndarray, instance: np.ndarray, out_hw: tuple[int, int], fit: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize to the output size as fastload's ``geometry.fit`` does, the way an OpenCV user writes it.

    ``contain``: resize (aspect kept) to fit inside, pad centred (image 0, semantic 255, instance 0);
    ``cover``: resize to fill, crop centred. Image bilinear, masks nearest. uint8 (H, W, 3), uint8 (H, W),
    uint16 (H, W) in; the same dtypes at ``out_hw`` out. (fastload folds this resize into its one affine warp;
    a peer resizes first and then runs its own affine at the output size.)
    """
    oh, ow = out_hw
    s = fit_scale(image.shape[:2], out_hw, fit)
    h, w = image.shape[:2]
    rh, rw = max(1, round(h * s)), max(1, round(w * s))
    if (rh, rw) != (h, w):
        image = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
        semantic = cv2.resize(semantic, (rw, rh), interpolation=cv2.INTER_NEAREST)
        instance = cv2.resize(instance, (rw, rh), interpolation=cv2.INTER_NEAREST)
    if fit == "cover":  # crop the centre
        y0, x0 = max(0, (rh - oh) // 2), max(0, (rw - ow) // 2)
        image, semantic, instance = (a[y0 : y0 + oh, x0 : x0 + ow] for a in (image, semantic, instance))
        rh, rw = image.shape[:2]
    if (rh, rw) != (oh, ow):  # pad the rest centred (contain; or a rounding pixel under cover)
        top, left = (oh - rh) // 2, (ow - rw) // 2
        pads = (top, oh - rh - top, left, ow - rw - left)
        image = cv2.copyMakeBorder(image, *pads, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        semantic = cv2.copyMakeBorder(semantic, *pads, cv2.BORDER_CONSTANT, value=SEMANTIC_FILL)
        instance = cv2.copyMakeBorder(instance, *pads, cv2.BORDER_CONSTANT, value=INSTANCE_FILL)
    # decoded members may be read-only views of the read buffer: torch's collate wants arrays it may own
    return tuple(a if a.flags.writeable and a.flags.c_contiguous else np.array(a) for a in (image, semantic, instance))


class CacheSamples(Dataset):
    """Map-style dataset over a fastload cache: sample ``i`` read, decoded and resized to fit the output.

    ``transform(sample) -> dict`` finishes a sample in the worker (the peer's augmentation); the sample it gets
    has ``image`` uint8 (oh, ow, 3) RGB, ``semantic`` uint8 (oh, ow), ``instance`` uint16 (oh, ow),
    ``index`` int and ``max_id`` int (the sample's instance count: ids are 1..max_id).
    """

    def __init__(self, cache: Any, out_hw: tuple[int, int], fit: str, transform: Callable[[dict], dict]) -> None:
        self.cache = cache
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        self.fit = fit
        self.transform = transform

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict[str, Any]:
        members = self.cache.read_members(index)
        semantic, instance = decode_labels(members, self.cache.image_size(index))
        image = decode_image(members.image)
        image, semantic, instance = fit_to_output(image, semantic, instance, self.out_hw, self.fit)
        sample = {"image": image, "semantic": semantic, "instance": instance, "index": int(index)}
        sample["max_id"] = members.instance_count
        return self.transform(sample)


# -------------------------------------------------------------------------------------------- the shell


class EpochSampler(Sampler[int]):
    """fastload's epoch order (`fastload.pipeline.sampling.epoch_order`): a permutation per (seed, epoch)."""

    def __init__(self, n: int, *, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_order(self.n, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle).tolist())

    def __len__(self) -> int:
        return self.n


def _one_opencv_thread(_worker_id: int) -> None:
    # the parallelism is the worker processes, as in fastload's CpuLoader
    cv2.setNumThreads(1)


@dataclass(frozen=True)
class PeerParts:
    """What makes one peer: ``transform`` finishes a sample in the worker (`CacheSamples`), ``finish`` turns the
    collated worker output into the batch dict on the device (`PeerLoader`), ``worker_init`` sets up a worker."""

    transform: Callable[[dict], dict]
    finish: Callable[[dict[str, torch.Tensor], torch.device], dict[str, torch.Tensor]]
    worker_init: Callable[[int], None] = _one_opencv_thread


class PeerLoader:
    """A torch DataLoader over `CacheSamples` with the surface the bench uses (and fastload's loaders have):
    ``__iter__`` (one epoch of batch dicts with exactly ``keys``: `BATCH_KEYS`, or `batch_keys(cfg)`), ``__len__``, ``set_epoch``, ``device``,
    ``close``.

    Workers are persistent and start with ``forkserver`` (as CpuLoader's: the bench runs DALI in the same
    process, and a plain fork would copy its threads); batches are pinned when the device is CUDA.
    ``finish(raw, device)`` turns the collated worker output into the batch dict on ``device``.
    """

    def __init__(
        self,
        dataset: CacheSamples,
        *,
        batch_size: int,
        num_workers: int,
        seed: int,
        shuffle: bool,
        drop_last: bool,
        device: torch.device,
        prefetch: int,
        finish: Callable[[dict[str, torch.Tensor], torch.device], dict[str, torch.Tensor]],
        keys: Sequence[str] = BATCH_KEYS,
        worker_init: Callable[[int], None] = _one_opencv_thread,
    ) -> None:
        batch_size = check_int("batch_size", batch_size, 1, validation.MAX_BATCH_SIZE, error=ValueError)
        num_workers = check_int("num_workers", num_workers, 0, validation.MAX_THREADS, error=ValueError)
        prefetch = check_int("prefetch", prefetch, 1, validation.MAX_PREFETCH, error=ValueError)
        seed = check_int("seed", seed, 0, validation.MAX_SEED, error=ValueError)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._finish = finish
        self._keys = tuple(keys)
        self._sampler = EpochSampler(len(dataset), seed=seed, shuffle=shuffle)
        workers = num_workers > 0
        self._loader: DataLoader | None = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self._sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=worker_init if workers else None,
            multiprocessing_context=mp_context() if workers else None,  # fastload's fork server: same preload, same guard
            prefetch_factor=max(1, -(-prefetch // num_workers)) if workers else None,
            persistent_workers=workers,
        )

    def __len__(self) -> int:
        return len(self._loader) if self._loader is not None else 0

    def set_epoch(self, epoch: int) -> None:
        self._sampler.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._loader is None:
            raise RuntimeError("iterating a closed peer loader; make a new one")
        for raw in self._loader:
            batch = self._finish(raw, self.device)
            yield {key: batch[key] for key in self._keys}
        self._sampler.epoch += 1  # a completed pass moves on, as fastload's loaders do

    def close(self) -> None:
        """Stop the worker processes. Idempotent."""
        loader, self._loader = self._loader, None
        # no public call stops a DataLoader's persistent workers now (see OpencvBackend.close)
        shutdown = getattr(getattr(loader, "_iterator", None), "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing useful left to report
            pass


def widen_labels(raw: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """``semantic`` uint8 → int64, ``instance`` int16 → int32, ``index`` int64, on ``device``: the compact
    worker output widened where it is used (the bytes between processes stay small)."""
    cuda = device.type == "cuda"
    return {
        "semantic": raw["semantic"].to(device, non_blocking=cuda).to(torch.int64),
        "instance": raw["instance"].to(device, non_blocking=cuda).to(torch.int32),
        "index": raw["index"].to(device, non_blocking=cuda).to(torch.int64),
    }
