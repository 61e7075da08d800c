"""The bounds on every number a user passes fastload, in one place, and the checks that name the key and range.

A bound here is one a real user never meets but that stops a runaway before anything is allocated from the
value: a typo (``sigma: 8e6``, ``batch_size=1000000``) must be a one-line error naming the key and the
allowed range, not a MemoryError (or ``std::bad_alloc`` inside DALI) minutes later. Each limit says what it
protects. The checks take the error class to raise: `ConfigError` for config files, ``ValueError`` for the
loaders' arguments (their documented contract); both name the key.

Integers are Python ``int`` or NumPy integers, never ``bool`` (``True`` is an ``int`` to Python, not a count to
a user); numbers are also finite floats. Messages show a value through `short_repr`, which never prints more
than a line of it, however large the value.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Sequence
from typing import Any

from fastload.errors import ConfigError

# ----------------------------------------------------------------------------------------------- limits

# output size: a batch row is ~40 bytes per output pixel when finished (image float32 12, semantic int64 8,
# instance int32 4, semantic_weight 4, heatmap + offsets 12 / stride²), so one 8192 x 8192 sample is 2.5 GiB.
MAX_SIDE = 16384
MAX_PIXELS = 64 << 20  # per output image (H·W): 64 MP, e.g. 8192 x 8192 or 4096 x 16384
# per batch (batch_size·H·W): 2^30 output pixels are ~40 GiB of finished batch, 16x a batch of 64 samples of
# 1024 x 1024; DALI and the CPU workers allocate whole batches before the first sample is read
MAX_BATCH_PIXELS = 1 << 30
MAX_BATCH_SIZE = 65536
MAX_PREFETCH = 64  # batches prepared ahead: each is a whole batch of memory
MAX_THREADS = 1024  # DALI threads, CpuLoader worker processes, build workers, reads in flight per process
MAX_WORLD_SIZE = 1 << 20
MAX_SEED = (1 << 64) - 1
# targets: each instance's Gaussian window is (2r+1)² float32, r = round(3σ + 1), built whole and pasted per
# instance; the batched torch twin holds one window per instance slot of the batch at once (~26 bytes per
# window pixel with its indices), so σ = 64 costs ~4 MB per instance and σ = 1e6 asked for 262 TiB.
MAX_SIGMA = 64.0  # output (map) pixels: 8x the default
MAX_STRIDE = 64  # Panoptic-DeepLab predicts at 4; the output size must also be divisible by it
MAX_SMALL_INSTANCE_WEIGHT = 1000.0  # a loss weight; larger ones overflow bfloat16 losses
MIN_STD = 1e-3  # normalize.std: (x/255 - mean)/std stays within ±1000
MAX_STD = 10.0
# augmentation ranges (configs/default.yaml states each)
MAX_DEGREES = 180.0  # rotation and hue, either way
MIN_SCALE = 1 / 64  # below it the warp's float32 matrix of a large image underflows to a singular one
MAX_SCALE = 8.0
MAX_FACTOR = 10.0  # saturation, brightness, contrast
MAX_NOISE_SIGMA = 255.0  # 0..255 units
# cache builds
MAX_SAMPLES_PER_SHARD = 1 << 20  # a shard's JSON index (~300 B per sample) is parsed whole when a cache opens
MAX_NUM_NODES = 99999  # partial manifests are named manifest.part-RRRRR-of-NNNNN.json (5 digits)
# config files: a few hundred bytes each; a bound on what the YAML parser may read and nest
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 32

_REPR_LIMIT = 80


def short_repr(value: Any, limit: int = _REPR_LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters: safe in an error message whatever the value.

    Containers are cut while they are printed, each item within what is left of ``limit`` (a YAML alias
    bomb's list repr()s to gigabytes), so the cost is bounded by ``limit``, not by the value.
    """
    text = _cut(value, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cut(value: Any, budget: int) -> str:
    if isinstance(value, (list, tuple, dict)):
        brackets = {list: "[]", tuple: "()", dict: "{}"}.get(type(value), "[]")
        if budget < 8:
            return f"{brackets[0]}...{brackets[1]}"
        items = value.items() if isinstance(value, dict) else value
        parts, used = [], 2
        for item in itertools.islice(items, budget // 2):
            if isinstance(value, dict):
                key = _cut(item[0], budget - used)
                part = f"{key}: {_cut(item[1], budget - used - len(key) - 2)}"
            else:
                part = _cut(item, budget - used)
            parts.append(part)
            used += len(part) + 2
            if used >= budget:
                break
        more = ", ..." if len(parts) < len(value) else ""
        return f"{brackets[0]}{', '.join(parts)}{more}{brackets[1]}"
    if isinstance(value, (str, bytes)) and len(value) > budget:
        return repr(value[: max(budget, 0)])
    if is_int(value) and int(value).bit_length() > 256:
        return f"<an integer of {int(value).bit_length()} bits>"  # int -> str is quadratic (and capped by Python)
    return repr(value)


# ----------------------------------------------------------------------------------------------- checks


def is_int(value: Any) -> bool:
    """A Python or NumPy integer, and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_words(lo: int, hi: int | None) -> str:
    upto = f" up to {hi}" if hi is not None else ""
    if lo == 1:
        return f"a positive integer (1, 2, ...{upto})"
    if lo == 0:
        return f"a non-negative integer (0, 1, ...{upto})"
    return f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"


def check_int(
    key: str, value: Any, lo: int, hi: int | None = None, *, error: type[Exception] = ConfigError, why: str = ""
) -> int:
    """``value`` as an ``int`` in ``[lo, hi]`` (``hi=None``: no upper bound), else ``error`` naming ``key``.

    ``why`` is added to the message when the value is above ``hi``: what the limit protects.
    """
    if not is_int(value) or value < lo or (hi is not None and value > hi):
        reason = f"; {why}" if why and is_int(value) and hi is not None and value > hi else ""
        raise error(f"{key} must be {_int_words(lo, hi)}, got {short_repr(value)}{reason}")
    return int(value)


def check_number(
    key: str,
    value: Any,
    lo: float,
    hi: float,
    *,
    open_low: bool = False,
    error: type[Exception] = ConfigError,
    why: str = "",
) -> float:
    """``value`` as a finite ``float`` in ``[lo, hi]`` (``(lo, hi]`` with ``open_low``), else ``error``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{key} = {short_repr(value)}: expected a number")
    v = float(value)
    ok = (lo < v if open_low else lo <= v) and v <= hi  # also False for NaN
    if not ok:
        left = "(" if open_low else "["
        reason = f": {why}" if why and v > hi else ""
        raise error(f"{key} = {short_repr(value)} is outside the allowed range {left}{lo:g}, {hi:g}]{reason}")
    return v


def check_probability(key: str, value: Any, *, error: type[Exception] = ConfigError) -> float:
    return check_number(key, value, 0.0, 1.0, error=error)


def check_pair(
    key: str, pair: Any, lo: float, hi: float, *, open_low: bool = False, error: type[Exception] = ConfigError
) -> tuple[float, float]:
    """``[min, max]`` with both in the range and ``min <= max``."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise error(f"{key} = {short_repr(pair)}: expected [min, max]")
    low = check_number(f"{key}[0]", pair[0], lo, hi, open_low=open_low, error=error)
    high = check_number(f"{key}[1]", pair[1], lo, hi, open_low=open_low, error=error)
    if low > high:
        raise error(f"{key} = {short_repr(list(pair))}: min > max; write [min, max]")
    return low, high


def check_size(key: str, size: Any, *, error: type[Exception] = ValueError) -> tuple[int, int]:
    """An output size ``(H, W)``: two positive integers, each <= `MAX_SIDE`, H·W <= `MAX_PIXELS`."""
    if not isinstance(size, Sequence) or isinstance(size, str) or len(size) != 2 or not all(
        is_int(v) and v >= 1 for v in size
    ):
        raise error(f"{key} must be two positive integers (H, W), got {short_repr(size)}")
    h, w = int(size[0]), int(size[1])
    if max(h, w) > MAX_SIDE or h * w > MAX_PIXELS:
        raise error(
            f"{key} = ({h}, {w}) is larger than fastload allows: at most {MAX_SIDE} per side and {MAX_PIXELS >> 20} "
            f"MP ({MAX_PIXELS} pixels) per image; a finished sample takes ~40 bytes per output pixel"
        )
    return h, w


def check_batch_pixels(batch_size: int, size: tuple[int, int], *, error: type[Exception] = ValueError) -> None:
    """batch_size·H·W <= `MAX_BATCH_PIXELS`: a whole batch is allocated before its first sample is read."""
    pixels = batch_size * size[0] * size[1]
    if pixels > MAX_BATCH_PIXELS:
        raise error(
            f"batch_size {batch_size} x size {size[0]} x {size[1]} = {pixels} output pixels per batch, above the "
            f"{MAX_BATCH_PIXELS} (2^30, ~40 GiB of finished batch) fastload allows; lower batch_size or size"
        )
