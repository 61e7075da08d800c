"""Run by tests/test_distributed.py under torchrun: one rank of a 2-process CPU (gloo) job.

Each rank builds the loader with no rank/world_size arguments (they come from torch.distributed), iterates
three epochs, and rank 0 gathers every rank's sample indices into a JSON file.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from fastload import CpuLoader, Loader


def main(cache: str, kind: str, out: str) -> None:
    dist.init_process_group("gloo")
    cls = Loader if kind == "dali" else CpuLoader
    loader = cls(cache, batch_size=3, size=(32, 32), device="cpu", num_threads=1, seed=4)
    epochs = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        indices, steps = [], 0
        for batch in loader:
            indices += batch["index"].tolist()
            steps += 1
            dist.all_reduce(torch.ones(1))  # a DDP-like collective per step: hangs if step counts differ
        epochs.append({"indices": indices, "steps": steps})
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"rank": dist.get_rank(), "world_size": loader.world_size, "epochs": epochs})
    if dist.get_rank() == 0:
        with open(out, "w") as fh:
            json.dump(gathered, fh)
    loader.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
