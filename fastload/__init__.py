"""fastload: GPU data loading for segmentation training.

Public names: ``build_cache``, ``open_cache``, ``Loader``, ``CpuLoader``, ``AugmentConfig``, ``sample_data``. Importing
fastload never imports DALI; only the DALI pipeline module does, when a ``Loader`` is built.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "build_cache": ("fastload.build.build", "build_cache"),
    "open_cache": ("fastload.samples", "open_cache"),
    "Loader": ("fastload.loader", "Loader"),
    "CpuLoader": ("fastload.loader", "CpuLoader"),
    "AugmentConfig": ("fastload.augment.config", "AugmentConfig"),
    "sample_data": ("fastload.data", "sample_data"),
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    # lazy so that `import fastload` stays light (no torch, no DALI) for the CLI and the cache builder
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastload' has no attribute {name!r}")
