"""NVTX ranges around the phases of a training step, so that ``nsys profile`` separates data from compute.

Uses ``fastload.pipeline.nvtx`` when the pipeline provides it, else the ``nvtx`` package, else
``torch.cuda.nvtx`` when CUDA is present; with none of them a range costs nothing. Ranges are cheap no-ops
when no profiler is attached.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager

WAIT = "fastload/wait_for_data"
H2D = "fastload/host_to_device"
STEP = "fastload/step"


def _pick() -> Callable[[str], ContextManager[None]]:
    try:
        from fastload.pipeline import nvtx as ours  # owned by the pipeline; optional

        fn = getattr(ours, "nvtx_range", None) or getattr(ours, "range", None)
        if callable(fn):
            return fn
    except ImportError:
        pass
    try:
        import nvtx  # the NVIDIA package: works without a GPU, records only under a profiler

        return lambda name: nvtx.annotate(name, domain="fastload")
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.nvtx.range
    except ImportError:
        pass
    return lambda name: contextlib.nullcontext()


_RANGE: Callable[[str], ContextManager[None]] | None = None


@contextlib.contextmanager
def nvtx_range(name: str) -> Iterator[None]:
    """``with nvtx_range(WAIT): batch = next(it)`` — a named range on the profiler's timeline."""
    global _RANGE
    if _RANGE is None:
        _RANGE = _pick()
    with _RANGE(name):
        yield
