"""The benchmark loop's NVTX ranges, so that ``nsys profile`` separates data from compute.

Ranges go through ``fastload.pipeline.nvtx.nvtx_range`` (a no-op without the ``nvtx`` package, almost free
without a profiler attached). The loader shell marks ``fastload/wait_for_data`` itself; the benchmark loop adds
its own ranges around the same wait and around the phases that follow it.
"""

from __future__ import annotations

from fastload.pipeline.nvtx import nvtx_range

__all__ = ["H2D", "STEP", "WAIT", "nvtx_range"]

WAIT = "fastload/bench/wait_for_data"  # next(loader) as the training loop sees it
H2D = "fastload/bench/host_to_device"  # moving a batch the loader left elsewhere to the model's device
STEP = "fastload/bench/step"  # forward, loss, backward, optimizer step (enqueue only, on CUDA)
