"""The DALI engine: batch plans → the DALI graph (on the GPU, or the same graph on the CPU) → torch tensors.

Its parts, in the order a batch meets them:

- `spec`: what a graph is built from (`GraphSpec`) and the dense input columns it takes;
- `feed`: the feed workers' job (read, check, draw parameters, assemble the columns; `inputs` holds the pure
  NumPy assembly) and DALI's input callback in the training process;
- `graph`: the graph itself, one definition for both devices, and the pipeline around it;
- `backend`: `DaliBackend`, the lifecycle (workers, pipeline, passes) and the torch side of each batch;
- `nvcomp`, `failures`: the GPU inflate's library, DALI's errors in fastload's terms.

DALI is imported lazily, by `graph` only: ``import fastload`` (and this package) never loads it.
"""

from fastload.pipeline.dali.backend import DaliBackend
from fastload.pipeline.dali.graph import build_pipeline, define_graph, shutdown_pipeline
from fastload.pipeline.dali.nvcomp import nvcomp_available, nvcomp_missing
from fastload.pipeline.dali.spec import GraphSpec, PhotometricOps

__all__ = [
    "DaliBackend",
    "GraphSpec",
    "PhotometricOps",
    "build_pipeline",
    "define_graph",
    "nvcomp_available",
    "nvcomp_missing",
    "shutdown_pipeline",
]
