"""The fastload loader a tool measures or draws: ``"cpu"`` (`fastload.CpuLoader`) or ``"dali"`` (`fastload.Loader`).

``fastload bench`` and ``fastload show`` name the engine they want, and want that engine even on a machine
without a GPU: ``device="auto"`` alone would make `fastload.Loader` fall back to the CPU engine there, so "dali"
asks for it by ``engine="dali"`` (DALI's CPU graph without a GPU).
"""

from __future__ import annotations

from typing import Any

ENGINES = ("cpu", "dali")


def fastload_loader(engine: str, cache: Any, *, device: str, **kwargs: Any) -> Any:
    """``fastload.CpuLoader(cache, device=device, **kwargs)`` for "cpu", ``fastload.Loader(..., engine="dali")``
    for "dali": the engine named, GPU or not."""
    import fastload

    if engine not in ENGINES:
        raise ValueError(f"unknown fastload loader {engine!r}; choose from {', '.join(ENGINES)}")
    if engine == "dali":
        return fastload.Loader(cache, engine="dali", device=device, **kwargs)
    return fastload.CpuLoader(cache, device=device, **kwargs)
