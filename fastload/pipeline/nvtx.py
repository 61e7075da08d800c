"""NVTX ranges for profiling the loaders (Nsight Systems shows them on the CPU timeline).

The `nvtx` package comes with DALI. Without a profiler attached its ranges cost almost nothing; without the
package at all `nvtx_range` is a no-op, so the CPU loader never needs it. Range names in use:

- ``fastload/wait_for_data``: the training loop waiting for the next batch (the loader shell)
- ``fastload/read``: reading a batch's members from the cache (the DALI input callback)
- ``fastload/dali_outputs``: waiting for DALI to finish a batch
- ``fastload/h2d`` / ``fastload/to_torch``: copying DALI's outputs into torch tensors
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

__all__ = ["nvtx_range"]


def _make_range() -> Callable[[str], contextlib.AbstractContextManager[None]]:
    try:
        import nvtx
    except ImportError:  # nvtx ships with DALI; the CPU-only path may lack it
        return lambda name: contextlib.nullcontext()
    if not hasattr(nvtx, "annotate"):  # an unrelated module named nvtx
        return lambda name: contextlib.nullcontext()
    return lambda name: nvtx.annotate(name, domain="fastload")


_range = None


def nvtx_range(name: str) -> contextlib.AbstractContextManager[None]:
    """A context manager that marks ``name`` as an NVTX range in the ``fastload`` domain.

    Parameters
    ----------
    name : str
        Range name, by convention ``"fastload/<what>"`` (e.g. ``"fastload/wait_for_data"``).
    """
    global _range
    if _range is None:  # resolve the nvtx import once, on first use, not at import time
        _range = _make_range()
    return _range(name)
