"""Which device and which engine a loader runs on, and which rank it is: decided once, here.

`resolve_device` turns ``device`` into a `torch.device` (under torchrun the rank's GPU); `choose_engine` picks the
engine for ``engine="auto"`` by the table in the README ("Which engine makes the batches") and says so when it is
not the obvious one; `rank_world` reads rank and world size from torch.distributed when it is initialised.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import numpy as np
import torch

from fastload import validation

DEVICES = ("auto", "cuda", "cuda:N", "cpu")
ENGINES = ("auto", "dali", "opencv")
"""``engine=``: "dali" (DALI's graph, on the loader's device), "opencv" (OpenCV in worker processes: the CpuLoader's
engine), or "auto": DALI on a GPU; without one, the OpenCV engine (the faster one on a CPU), except that an
explicit ``device="cpu"`` means DALI's graph on the CPU, as it always has (how CI tests the graph)."""


def choose_engine(engine: str, *, device_asked: Any, device: torch.device, loader: str) -> str:
    """The engine that makes the batches, by name as ``loader.backend`` reports it: ``"dali-gpu"``,
    ``"dali-cpu"`` or ``"opencv-workers"`` (`ENGINES` has the rule for "auto")."""
    if engine not in ENGINES:
        raise ValueError(f"{loader}: engine must be one of {list(ENGINES)}, got {validation.short_repr(engine)}")
    if engine == "opencv":
        return "opencv-workers"
    if device.type == "cuda":
        return "dali-gpu"
    if engine == "dali" or str(device_asked) == "cpu":
        return "dali-cpu"
    _notice_opencv_engine(loader)
    return "opencv-workers"


_noticed: set[str] = set()


def _notice_opencv_engine(loader: str) -> None:
    """Say once per process that ``engine="auto"`` found no GPU and runs the OpenCV engine."""
    if loader in _noticed:
        return
    _noticed.add(loader)
    logging.getLogger("fastload").warning(
        f"fastload.{loader}: no CUDA GPU is visible, so engine='auto' makes the batches with the OpenCV engine "
        "(the CpuLoader's: OpenCV in worker processes), the faster one on a CPU (README, 'Which engine makes the "
        "batches'); the batches are the same. Pass engine='dali' (or device='cpu') to run DALI's graph on the CPU."
    )


def resolve_device(device: Any) -> torch.device:
    """The loader's device: "cpu", "auto" / "cuda" (the rank's GPU), or an explicit "cuda:N" / torch.device."""
    name = str(device) if isinstance(device, torch.device) else device
    explicit = re.fullmatch(r"cuda:(\d+)", name) if isinstance(name, str) else None
    if not (name in ("auto", "cuda", "cpu") or explicit):
        raise ValueError(f"device must be one of {list(DEVICES)} (or a torch.device), got {device!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    count = torch.cuda.device_count()
    if explicit:
        index = int(explicit.group(1))
        if index >= count:
            raise ValueError(f"device={device!r} but torch sees {count} CUDA GPU(s): cuda:0..cuda:{count - 1}")
        return torch.device("cuda", index)
    return torch.device("cuda", rank_gpu(count))


def rank_gpu(count: int) -> int:
    """This process's GPU for "auto"/"cuda": ``LOCAL_RANK`` under torchrun, else torch's current device.

    Under torchrun every rank of a node sees all its GPUs and must take its own (a DDP model lives on
    cuda:LOCAL_RANK); a launcher that gives each process one GPU (CUDA_VISIBLE_DEVICES per rank) leaves it
    cuda:0 whatever its local rank.
    """
    local = os.environ.get("LOCAL_RANK")
    if local is None:
        return torch.cuda.current_device()
    try:
        index = int(local)
    except ValueError:
        raise ValueError(f"LOCAL_RANK={local!r} is not an integer; unset it or pass device='cuda:N'") from None
    if count == 1:
        return 0
    if not 0 <= index < count:
        raise ValueError(
            f"LOCAL_RANK={index} but torch sees {count} CUDA GPU(s) in this process; pass device='cuda:N' "
            "or run one process per GPU"
        )
    return index


def rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    dist = torch.distributed
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    world_size = validation.check_int("world_size", world_size, 1, validation.MAX_WORLD_SIZE, error=ValueError)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in 0..{world_size - 1} (world_size={world_size}), got {rank!r}")
    return int(rank), world_size


def feed_workers(num_threads: int) -> int:
    """Feed worker processes for a DALI loader given ``num_threads`` cores: one per four (at least one, at most
    eight). A feed worker reads, checks and prepares ~4,000-8,000 samples/s (benchmarks/cpu_proxy.py), so a few
    keep a GPU pipeline fed while leaving DALI's own threads (nvJPEG's host work) their cores."""
    return max(1, min(8, num_threads // 4))
