"""The fastload loader a tool measures or draws: ``"cpu"`` (`fastload.CpuLoader`) or ``"dali"`` (`fastload.Loader`).

``fastload bench`` and ``fastload show`` name the engine they want, and want that engine even on a machine
without a GPU: ``device="auto"`` would make `fastload.Loader` fall back to the CPU engine there, so `dali_device`
asks for DALI's CPU graph instead.
"""

from __future__ import annotations

from typing import Any

ENGINES = ("cpu", "dali")


def dali_device(device: str) -> str:
    """The device that makes ``fastload.Loader`` run DALI: "auto" without a GPU would pick the CPU engine."""
    import torch

    return "cpu" if device == "auto" and not torch.cuda.is_available() else device


def fastload_loader(engine: str, cache: Any, *, device: str, **kwargs: Any) -> Any:
    """``fastload.CpuLoader(cache, device=device, **kwargs)`` for "cpu", ``fastload.Loader`` on `dali_device`
    for "dali": the engine named, GPU or not."""
    import fastload

    if engine not in ENGINES:
        raise ValueError(f"unknown fastload loader {engine!r}; choose from {', '.join(ENGINES)}")
    if engine == "dali":
        return fastload.Loader(cache, device=dali_device(device), **kwargs)
    return fastload.CpuLoader(cache, device=device, **kwargs)
