"""NVIDIA nvCOMP, which DALI's GPU inflate needs: where DALI looks for it, and what to do when it is missing.

An H200 run with a hand-assembled DALI lacked it, and the message then sent the user to `verify` a cache that was
fine: a missing library is named as such, with its install command, never blamed on a sample.
"""

from __future__ import annotations


def nvcomp_missing(problem: str) -> str:
    """What to do when DALI's GPU inflate lacks nvCOMP; ``problem`` says how it showed."""
    return (
        "fastload.Loader on the GPU: DALI inflates the LZ4 label members with NVIDIA nvCOMP 5 (libnvcomp.so.5), and "
        f"{problem}. The nvidia-dali-cuda120 wheel normally brings it (nvidia-libnvcomp-cu12); an environment "
        "assembled by hand may lack it: pip install 'nvidia-libnvcomp-cu12>=5,<6' (for a CUDA 13 build of DALI, "
        "nvidia-libnvcomp-cu13), or put a libnvcomp.so.5 on LD_LIBRARY_PATH. The cache is fine: rebuilding or "
        "verifying it changes nothing"
    )


def nvcomp_available() -> bool:
    """Whether DALI's ``fn.decoders.inflate`` will find nvCOMP: beside DALI, as the nvidia-libnvcomp wheels put
    it (DALI's own search path), or anywhere the dynamic loader looks."""
    import ctypes
    from pathlib import Path

    import nvidia.dali

    nvidia_dir = Path(nvidia.dali.__file__).resolve().parent.parent
    # DALI's own search path (its RUNPATH): beside it, as the nvidia-libnvcomp wheels install it, then CUDA's
    places = (nvidia_dir / "libnvcomp" / "lib64", nvidia_dir / "cu12" / "lib", Path("/usr/local/cuda/lib64"))
    names = ("libnvcomp.so.5", "libnvcomp.so")
    if any((place / name).exists() for place in places for name in names):
        return True
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False
