"""Instance mask → centre heatmap + offsets (Panoptic-DeepLab), instance tables, table batching.

Definitions (Panoptic-DeepLab's target generator as detectron2 implements it, vectorized)
    * centre of an instance = (mean row, mean column) of its visible pixel indices (index coordinates);
    * heatmap ``float32 (H', W')`` = max over instances of ``exp(-((y - y0)² + (x - x0)²) / (2σ²))`` with
      ``(y0, x0)`` the centre rounded half-to-even (as Python's ``round``), inside the square window
      ``|y - y0| ≤ r, |x - x0| ≤ r``, ``r = round(3σ + 1)`` (the ``(6σ + 3)²`` patch Panoptic-DeepLab
      pastes; for an integer σ identical, for another σ the patch is centred on the peak); 0 outside;
    * offsets ``float32 (2, H', W')`` = centre − pixel index, ``(dy, dx)``, on instance pixels, 0 elsewhere.

Stride (``docs/design.md``): with ``stride = s`` the maps are ``(ceil(H/s), ceil(W/s))``; map pixel
``(u, v)`` samples the mask at ``(min(u·s + s//2, H−1), min(v·s + s//2, W−1))``; centres are computed at
full resolution and expressed in map pixels as ``(c + 0.5)/s − 0.5``; offsets and σ are in map pixels.
Every instance of the mask gets its Gaussian, also one too small to be hit by the sampling grid.

Semantic weights (Panoptic-DeepLab): ``float32 (H, W)``, ``small_instance_weight`` (3) on the pixels of an
instance with fewer than ``small_instance_area`` (4096) visible pixels in the mask, 1 elsewhere.

One definition, two kernels: ``center_targets`` and ``semantic_weights`` (NumPy, one mask) are the
definition; ``render_targets`` is their batched torch twin, for rendering targets after augmentation on the
loader's device. It equals them bit for bit, and with ``max_id`` given it never synchronises with the host.

Modules: ``definition`` (the NumPy definition, instance tables, ``batch_tables``), ``twin`` (the torch twin
``render_targets``), ``reference`` (detectron2's per-instance loop, what the benchmarks start from).
Only ``batch_tables`` and ``render_targets`` need torch, and import it when called: the package is
NumPy-only at import.
"""

from fastload.targets.definition import (
    batch_tables,
    center_targets,
    check_target_params,
    instance_centres,
    panoptic_weights,
    sample_targets,
    semantic_weights,
)
from fastload.targets.reference import center_targets_per_instance
from fastload.targets.twin import render_targets, render_weights

__all__ = [
    "check_target_params",
    "batch_tables",
    "center_targets",
    "center_targets_per_instance",
    "instance_centres",
    "panoptic_weights",
    "render_targets",
    "render_weights",
    "sample_targets",
    "semantic_weights",
]
