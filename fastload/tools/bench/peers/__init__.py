"""Peer loaders: what users run today, behind fastload's batch contract, for ``fastload bench --loaders``.

=======================  ========================================================================================
name                     what it is
=======================  ========================================================================================
``albumentations``       torch DataLoader workers: OpenCV decode, ``A.Compose``, `fastload.targets.center_targets`
``albumentations-loop``  the same with Panoptic-DeepLab's per-instance target loop (`center_targets_per_instance`)
``kornia``               DataLoader workers decode + resize; Kornia batch augmentation and
                         `fastload.targets.render_targets` on the loader's device
=======================  ========================================================================================

Each reads the same cache (`fastload.open_cache`) and draws its augmentation from the same YAML
(`fastload.augment.config.AugmentConfig`) as closely as its library allows; each module's docstring has the table
of differences. The libraries are optional (``pip install "fastload[peers]"``) and are imported only when a peer
is made: ``import fastload`` and ``fastload.tools.bench`` never import them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PEERS = ("albumentations", "albumentations-loop", "kornia")
_LIBRARY = {"albumentations": "albumentations", "albumentations-loop": "albumentations", "kornia": "kornia.augmentation"}


def require_peer(name: str) -> None:
    """Raise the one-line ConfigError naming the ``peers`` extra unless peer ``name``'s library imports."""
    from fastload.tools.bench.peers.common import require

    require(_LIBRARY[name], peer=name)


def make_peer(
    name: str,
    cache: Any,
    *,
    batch_size: int,
    size: Sequence[int] = (512, 512),
    augment: Any = "default",
    device: str = "cpu",
    num_workers: int = 2,
    seed: int = 0,
    prefetch: int = 2,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Any:
    """A peer loader (``name`` from `PEERS`) over ``cache`` (a path or an opened cache).

    ``augment`` is what `fastload.Loader` takes (None, "default", "none", a YAML path, an AugmentConfig);
    ``device`` "auto" | "cpu" | "cuda[:N]" as there. The loader yields fastload's batch dicts on ``device``.
    """
    # the loaders' own argument rules: a peer takes the same arguments the same way
    from fastload.dataloader_args import augment_argument, cache_argument, size_argument
    from fastload.pipeline.devices import resolve_device
    from fastload.pipeline.plan import batch_keys
    from fastload.tools.bench.peers.common import CacheSamples, PeerLoader

    if name not in PEERS:
        raise ValueError(f"unknown peer loader {name!r}; choose from {', '.join(PEERS)}")
    cfg = augment_argument(augment)
    size = size_argument(size, stride=cfg.map_stride)
    if size is None:
        raise ValueError(f"{name}: the peers resize to a fixed size; size=None (native size) is fastload's evaluation mode")
    device = resolve_device(device)
    if name == "kornia":
        from fastload.tools.bench.peers.kornia_peer import kornia_parts

        parts = kornia_parts(cfg, seed=seed)
    else:
        from fastload.tools.bench.peers.albu import albumentations_parts

        parts = albumentations_parts(cfg, device=device, seed=seed, loop=name == "albumentations-loop")
    cache = cache_argument(cache)
    return PeerLoader(
        CacheSamples(cache, size, cfg.geometry.fit, parts.transform),
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        shuffle=shuffle,
        drop_last=drop_last,
        device=device,
        prefetch=prefetch,
        finish=parts.finish,
        keys=batch_keys(cfg),
        worker_init=parts.worker_init,
    )
