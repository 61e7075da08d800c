"""What machine a benchmark ran on: CPU, cores, GPU, OS, and the versions of the libraries that matter."""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from importlib import metadata
from typing import Any

from fastload.cores import usable_cores


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX); else torch emulates it, slowly."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _dali_version() -> str | None:
    for dist in ("nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali-cuda130", "nvidia-dali"):
        v = _version(dist)
        if v:
            return v
    return None


def _opencv_version() -> str | None:
    for dist in ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless"):
        v = _version(dist)
        if v:
            return v
    return None


def machine_info() -> dict[str, Any]:
    """A JSON-ready description of this machine and software stack."""
    import numpy
    import psutil
    import torch

    gpu = None
    gpu_count = 0
    if torch.cuda.is_available():
        gpu_count = torch.cuda.device_count()
        gpu = torch.cuda.get_device_name(0)
    return {
        "cpu": cpu_model(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_usable": usable_cores(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu,
        "gpu_count": gpu_count,
        "cuda": torch.version.cuda if gpu else None,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "dali": _dali_version(),
        "numpy": numpy.__version__,
        "opencv": _opencv_version(),
        "date": now_iso(),
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")

