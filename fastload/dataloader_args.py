"""The loaders' arguments: their checks, and torch DataLoader's vocabulary on `Loader` and `CpuLoader`.

A script written for ``torch.utils.data.DataLoader`` should run with its loader swapped for fastload's. Each of
DataLoader's arguments is honoured with its meaning, mapped onto fastload's own, or refused with an error that
names what to use instead — never a bare ``TypeError`` about an internal class. The table (also in the README):

| DataLoader | `Loader` / `CpuLoader` |
| --- | --- |
| ``dataset`` | the first argument, ``cache`` |
| ``batch_size`` | the same, positional too: ``Loader(cache, 48)``; required (``None``, no batching, is refused) |
| ``shuffle``, ``drop_last`` | the same (``drop_last``: the last incomplete *global* step, `fastload.pipeline.sampling`) |
| ``sampler``, ``batch_sampler`` | refused: ``shuffle``/``seed``/``set_epoch``, ``rank``/``world_size`` |
| ``num_workers`` | ``num_threads`` under DataLoader's name (both given and different: an error) |
| ``collate_fn`` | refused: batches are dicts of tensors; ``keys=`` yields tuples |
| ``pin_memory`` | accepted, changes nothing: batches arrive on ``loader.device`` |
| ``timeout`` | ``0`` only: no per-batch deadline (see `check_timeout`) |
| ``worker_init_fn`` | called in each worker process after fastload's own set-up; refused on a DALI backend |
| ``multiprocessing_context`` | refused: workers start with forkserver |
| ``generator`` | the seed: one int64 drawn from it at construction |
| ``prefetch_factor`` | ``prefetch`` = factor × worker processes (worker engine), = factor (DALI, one producer) |
| ``persistent_workers`` | ``True``: workers always persist; ``False`` refused where there are workers |
| ``pin_memory_device``, ``in_order`` | refused unless DataLoader's default (``""``, ``True``) |

Every function is a pure check of the arguments; the loader shell calls them from its constructor (the peer loaders
of the benchmark too, so that they take the same arguments the same way). Bounds come from `fastload.validation`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastload import validation
from fastload.augment.config import AugmentConfig, load_augment
from fastload.errors import CacheError, ConfigError
from fastload.pipeline.plan import BATCH_KEYS, NATIVE_KEYS, TARGET_KEYS

DEFAULT_PREFETCH = 2

# DataLoader arguments without a use here: the value that asks for nothing (DataLoader's default, accepted so
# that `sampler=None` in a ported script just works) and what to use instead
_REFUSED: dict[str, tuple[Any, str]] = {
    "dataset": (None, "the cache is the dataset: pass it first, {loader}(cache, batch_size)"),
    "sampler": (
        None,
        "fastload orders the samples itself: shuffle= and seed= give one permutation of the whole cache per epoch "
        "(call set_epoch(epoch) as with a DistributedSampler), and rank=/world_size= split it over processes "
        "(read from torch.distributed when it is initialised, so a DDP script needs neither)",
    ),
    "batch_sampler": (
        None,
        "batches follow from batch_size=, drop_last=, shuffle=/seed= and rank=/world_size= (each rank its share of "
        "every global step, no padding)",
    ),
    "collate_fn": (
        None,
        "the engine makes whole batches, a dict of tensors with keys {batch_keys}; keys=('image', 'semantic') "
        "yields tuples in that order instead; transform a batch in your training loop",
    ),
    "multiprocessing_context": (
        None,
        "CpuLoader workers always start with forkserver (clean processes that inherit no DALI or CUDA state)",
    ),
    "pin_memory_device": ("", "batches are delivered on the loader's device: pass device='cuda:N'"),
    "in_order": (True, "batches always come in order (exactly-once and resume depend on it)"),
}


def refuse_unknown(loader: str, extra: Mapping[str, Any], accepted: Sequence[str]) -> None:
    """Raise a TypeError naming ``loader`` for a keyword it does not take; DataLoader's own get their equivalent.

    ``extra`` holds the keywords the signature did not bind; DataLoader's arguments in ``_REFUSED`` pass when
    they carry DataLoader's default (they ask for nothing).
    """
    for key, value in extra.items():
        if key in _REFUSED:
            default, instead = _REFUSED[key]
            if value is default or (isinstance(value, str) and value == default):
                continue
            raise TypeError(
                f"{loader}: {key}= is torch DataLoader's and has no counterpart here; "
                + instead.format(loader=loader, batch_keys=list(BATCH_KEYS))
            )
        close = difflib.get_close_matches(key, [*accepted, *_REFUSED], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(
            f"{loader}() got an unexpected keyword argument {key!r}{hint}; {loader} accepts: {', '.join(accepted)}"
        )


def require_batch_size(loader: str, batch_size: Any) -> None:
    """``batch_size`` has no default: DataLoader's ``None`` (no batching) has no meaning for a batch engine."""
    if batch_size is None:
        raise TypeError(
            f"{loader}: batch_size is required, e.g. {loader}(cache, 48) or batch_size=48 (samples per batch and "
            "rank); DataLoader's batch_size=None (single samples) does not exist here"
        )


def workers(loader: str, num_threads: Any, num_workers: Any, *, in_process: bool) -> int | None:
    """The worker count from ``num_threads`` or DataLoader's ``num_workers`` (the same thing); None = default.

    ``in_process``: whether 0 is allowed (CpuLoader: load in the calling process, as DataLoader does).
    """
    if num_threads is not None and num_workers is not None and num_threads != num_workers:
        raise ValueError(
            f"{loader}: num_workers={num_workers!r} and num_threads={num_threads!r} disagree; num_workers is "
            "DataLoader's name for num_threads: pass one of them"
        )
    name, value = ("num_threads", num_threads) if num_threads is not None else ("num_workers", num_workers)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if in_process else 1):
        if in_process:
            raise ValueError(f"{name} must be 0 (load in the calling process) or a positive integer, got {value!r}")
        raise ValueError(
            f"{name} must be a positive integer (1, 2, ...), got {value!r}; {loader} needs at least one thread "
            "(fastload.CpuLoader(num_workers=0) loads in the calling process)"
        )
    return validation.check_int(
        name, value, 1 if value else 0, validation.MAX_THREADS, error=ValueError,
        why="each is a thread, or for the CpuLoader a worker process",
    )  # fmt: skip


def prefetch(loader: str, prefetch: Any, prefetch_factor: Any, *, worker_processes: int | None) -> Any:
    """``prefetch`` (batches ahead in all), or DataLoader's ``prefetch_factor`` (batches ahead *per worker*).

    ``worker_processes``: the engine's worker processes (0 = in-process counts as one producer), or None for
    DALI, whose pipeline is one producer however many threads it runs: prefetch = prefetch_factor there.
    """
    if prefetch_factor is None:
        return prefetch
    if isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, (int, np.integer)) or prefetch_factor < 1:
        raise ValueError(f"prefetch_factor must be a positive integer (1, 2, ...), got {prefetch_factor!r}")
    if prefetch != DEFAULT_PREFETCH:
        raise ValueError(
            f"{loader}: pass prefetch={prefetch!r} (batches ahead in all) or prefetch_factor={prefetch_factor!r} "
            "(DataLoader's: batches ahead per worker), not both"
        )
    producers = 1 if worker_processes is None else max(1, worker_processes)
    total = int(prefetch_factor) * producers
    if total > validation.MAX_PREFETCH:  # named by what the caller passed, not by the prefetch it became
        raise ValueError(
            f"{loader}: prefetch_factor={prefetch_factor} x {producers} producer(s) = {total} batches ahead, above "
            f"the {validation.MAX_PREFETCH} fastload allows ({_UPPER['prefetch'][1]}); lower prefetch_factor"
        )
    return total


def seed(loader: str, seed: Any, generator: Any) -> Any:
    """``seed``, or one int64 drawn from DataLoader's ``generator`` (as DataLoader draws its base seed).

    Every rank must end up with the same seed (one permutation per epoch, split over ranks): seed the
    generator alike on every rank, e.g. ``torch.Generator().manual_seed(0)``.
    """
    if generator is None:
        return seed
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{loader}: generator must be a torch.Generator, got {type(generator).__name__}")
    if seed != 0:
        raise ValueError(f"{loader}: pass seed={seed!r} or a generator to draw the seed from, not both")
    draw = torch.empty((), dtype=torch.int64, device=generator.device).random_(generator=generator)
    return int(draw.item())


def check_timeout(loader: str, timeout: Any) -> None:
    """DataLoader's ``timeout``: only 0 (no deadline, DataLoader's default) is possible.

    A deadline on one batch would have to interrupt the engine while it waits: DALI waits inside its C++
    pipeline, which Python cannot interrupt, and the CpuLoader's worker queue belongs to its engine. Rather than
    a timeout that works for one loader only, both refuse it; what it guards against is reported anyway (a
    worker that dies raises at once, a bad sample raises a CacheError naming it).
    """
    ok = not isinstance(timeout, bool) and isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout >= 0
    if not ok:
        raise ValueError(f"timeout must be a non-negative number of seconds, got {timeout!r}")
    if timeout > 0:
        raise ValueError(
            f"{loader}: timeout={timeout!r} is not supported, only 0: fastload's engines have no per-batch deadline "
            "(DALI waits inside its C++ pipeline, which cannot be interrupted from Python). A worker that dies "
            "raises at once and a bad sample raises a CacheError naming it; for a hung filesystem or GPU rely on "
            "your launcher's watchdog (torch.distributed's timeout under torchrun). Drop the argument."
        )


def check_persistent_workers(loader: str, value: Any, *, has_workers: bool) -> None:
    """``persistent_workers=True`` is what fastload always does; ``False`` cannot be honoured where there are workers."""
    if not isinstance(value, bool):
        raise ValueError(f"persistent_workers must be True or False, got {value!r}")
    if not value and has_workers:
        raise ValueError(
            f"{loader}: persistent_workers=False cannot be honoured: fastload's workers (CpuLoader's processes, "
            "DALI's pipeline) start once and serve every epoch until close(); drop the argument, and call "
            "loader.close() when you want them gone (the next pass starts them again)"
        )


def check_pin_memory(value: Any) -> None:
    """``pin_memory`` changes nothing: batches arrive on the loader's device (on a GPU, staged through pinned
    memory by the engine already), so there is nothing left to pin."""
    if not isinstance(value, bool):
        raise ValueError(f"pin_memory must be True or False, got {value!r}")


def worker_init_fn(loader: str, fn: Any, *, backend: str) -> Callable[[int], None] | None:
    """DataLoader's ``worker_init_fn(worker_id)``: for worker processes only (``backend == "opencv-workers"``).

    The workers start with forkserver and receive it pickled, as with DataLoader under spawn: it must be a
    module-level function (or a ``functools.partial`` of one); a lambda fails when the workers start. As with
    DataLoader, it is not called when there are no workers (``num_workers=0``).
    """
    if fn is None:
        return None
    if not callable(fn):
        raise TypeError(f"{loader}: worker_init_fn must be callable (worker_id) -> None, got {type(fn).__name__}")
    if backend != "opencv-workers":
        raise ValueError(
            f"{loader}: worker_init_fn cannot apply to the {backend!r} backend: DALI decodes and augments in its own "
            "C++ threads, and its feed worker processes only read and check cache bytes and draw fastload's "
            "parameters, so no Python of yours runs where a batch is made; do that set-up in your script before "
            "iterating, or use fastload.CpuLoader(worker_init_fn=...), whose workers are the processes that make "
            "the batches"
        )
    return fn


def batch_keys(loader: str, keys: Any, *, native: bool = False) -> tuple[str, ...] | None:
    """``keys=("image", "semantic")``: yield tuples of those batch entries, in that order; None = the dict.
    ``valid`` exists at native size (``size=None``) only."""
    if keys is None:
        return None
    if isinstance(keys, str) or not isinstance(keys, Sequence) or not keys:
        raise ValueError(f"{loader}: keys must be a non-empty tuple of batch keys, e.g. ('image', 'semantic'); got {keys!r}")
    known = (*BATCH_KEYS, *NATIVE_KEYS) if native else BATCH_KEYS
    unknown = [key for key in keys if key not in known]
    if unknown:
        hint = "; 'valid' comes with size=None" if "valid" in unknown else ""
        raise ValueError(f"{loader}: keys {unknown} are not batch keys; a batch has {list(known)}{hint}")
    return tuple(keys)


def rendered_config(loader: str, augment: AugmentConfig, keys: tuple[str, ...] | None) -> AugmentConfig:
    """The config the engine runs: ``augment``, without targets when ``keys=`` asks for none of `TARGET_KEYS`
    (semantic-only training renders nothing it does not return). Keys asking for targets that ``targets: none``
    turned off are an error."""
    if keys is None:
        return augment
    wanted = [key for key in keys if key in TARGET_KEYS]
    if augment.targets is None and wanted:
        raise ValueError(
            f"{loader}: keys {wanted} are targets, but the augment config has `targets: none`; give it a `targets:` "
            "section or leave those keys out"
        )
    return augment if wanted else dataclasses.replace(augment, targets=None)


# --- errors that name the public class ------------------------------------------------------------------------


def parameters(init: Callable[..., None]) -> list[str]:
    """The arguments a loader's ``__init__`` takes, in signature order (for the unknown-keyword error)."""
    params = inspect.signature(init).parameters
    return [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]


def renamed(function: Any, qualname: str) -> Any:
    """A copy of ``function`` under ``qualname`` (same code, defaults, annotations).

    Python's own argument errors ("got multiple values for argument 'batch_size'", "missing ... 'cache'") name
    the function's ``__qualname__``: a copy per public loader makes them say ``Loader.__init__()`` or
    ``CpuLoader.__init__()``, not the shared shell's private name.
    """
    copy = types.FunctionType(
        function.__code__, function.__globals__, function.__name__, function.__defaults__, function.__closure__
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__annotations__ = function.__annotations__
    copy.__doc__ = function.__doc__
    copy.__module__ = function.__module__
    copy.__qualname__ = qualname
    return copy


# --- the loaders' own arguments: ValueErrors that name the argument and the allowed values -----------------
def cache_argument(cache: Any):
    """``cache=``: an opened cache as is, or a folder opened here; a ValueError naming what is wrong."""
    if isinstance(cache, (str, os.PathLike)):
        from fastload.samples import open_cache

        path = Path(cache)
        if not path.exists():
            raise ValueError(f"cache: {str(path)!r} does not exist; build one with `fastload cache build`")
        try:
            return open_cache(path)
        except CacheError as exc:
            raise ValueError(f"cache: {exc}") from exc
    if not (hasattr(cache, "read_members") and hasattr(cache, "manifest") and hasattr(cache, "__len__")):
        raise ValueError(f"cache must be a path or an opened cache (fastload.open_cache), got {type(cache).__name__}")
    return cache


def augment_argument(value: Any) -> AugmentConfig:
    """``augment=``: an AugmentConfig, a shipped config's name, a YAML path, or None; a ConfigError naming it."""
    try:
        return load_augment(value)
    except ConfigError as exc:
        if str(exc).startswith("augment"):
            raise
        raise ConfigError(
            f"augment: {exc}; pass an AugmentConfig, 'default', 'none', or the path of a YAML file"
        ) from exc


# the largest value of each positive-integer argument, and what the bound protects (fastload.validation)
_UPPER = {
    "batch_size": (validation.MAX_BATCH_SIZE, "a batch is allocated whole, on the device, before its first sample"),
    "num_threads": (validation.MAX_THREADS, "each is a thread, or for the CpuLoader a worker process"),
    "prefetch": (validation.MAX_PREFETCH, "each batch prepared ahead holds a whole batch of memory"),
    "io_threads": (validation.MAX_THREADS, "each is a thread per reading process"),
    "world_size": (validation.MAX_WORLD_SIZE, ""),
}


def positive_int(name: str, value: Any) -> int:
    """A positive-integer argument within its upper bound (`_UPPER`), else a ValueError naming it."""
    high, why = _UPPER.get(name, (None, ""))
    return validation.check_int(name, value, 1, high, error=ValueError, why=why)


def largest_image(cache: Any) -> tuple[int, int]:
    """The largest height and the largest width of the cache's samples (what a native-size batch may reach)."""
    sizes = getattr(cache, "image_sizes", None)
    if sizes is None:  # a cache object without the vectorised table
        sizes = [cache.image_size(i) for i in range(len(cache))]
    sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
    return (int(sizes[:, 0].max()), int(sizes[:, 1].max())) if len(sizes) else (1, 1)


def size_argument(size: Any, *, stride: int) -> tuple[int, int] | None:
    """``size=``: (H, W) within bounds and divisible by the targets' stride, else a ValueError; None (each sample
    at its own size) stays None."""
    if size is None:
        return None
    height, width = validation.check_size("size", size, error=ValueError)
    if height % stride or width % stride:
        raise ValueError(
            f"size {(height, width)} must be divisible by the targets' stride {stride} (augment config, targets.stride)"
        )
    return height, width


