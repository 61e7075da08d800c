"""Torch ops per `render_targets` call, and its time against the NumPy definition called per sample.

Run: ``python benchmarks/render_targets_ops.py [--device cpu|meta|cuda] [--time] [--threads N] [--rounds R]``
(the device check: ``python benchmarks/render_targets_ops.py --device cuda --time --rounds 20``)

Ops: the aten ops one call dispatches (a ``TorchDispatchMode`` counts them; views such as ``unsqueeze`` or
``select`` are ops without a kernel and are counted apart), ``max_id`` 20, for 1 and 48 masks of 512x512
with 2 and 20 instances, stride 1 and 4: the counts must not move with the batch or its instances. On CUDA
the device activities (kernels, copies, memsets) are counted too (``torch.profiler``).

Time (``--time``): on the CPU, the workloads of ``benchmarks/test_bench_targets.py`` — 48 masks of 512x512 with
20 instances (``ellipses``), 48 of 64x64 with 2-6 — rendered by ``render_targets`` (``max_id`` the batch's
largest id, and None) and by ``sample_targets`` per sample, the arrays dropped one by one ("numpy") or
copied into batch arrays as the CPU loader does ("numpy+batch"); rounds alternate the kernels, and the
medians of wall time and of the process's CPU time (every thread) are printed. With ``--device cuda``,
``render_targets`` alone (``max_id`` given): the host time until the call returns, and the device time
between CUDA events recorded around it (first kernel to last, with any gap where the GPU waits for the host).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_bench_targets import ellipses  # noqa: E402

from fastload.targets import render_targets, sample_targets  # noqa: E402


class CountOps(TorchDispatchMode):
    """Every aten op dispatched inside the ``with`` block, in order."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


def batch_of(n: int, size: int, instances: int) -> np.ndarray:
    return np.stack([ellipses(size, size, instances, seed=100 + k) for k in range(n)])


def count(masks: np.ndarray, device: str, stride: int) -> tuple[int, int]:
    batch = torch.from_numpy(masks).to(device)
    render_targets(batch, stride=stride, max_id=20)  # warm: pinned memory, lazy inits
    with CountOps() as ops:
        render_targets(batch, stride=stride, max_id=20)
    views = sum(op.is_view for op in ops.ops)
    return len(ops.ops) - views, views


def cuda_kernels(masks: np.ndarray, stride: int) -> int:
    from torch.profiler import ProfilerActivity, profile

    batch = torch.from_numpy(masks).to("cuda")
    render_targets(batch, stride=stride, max_id=20)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        render_targets(batch, stride=stride, max_id=20)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def print_counts(device: str) -> None:
    print(f"render_targets on {device}, max_id 20: aten ops per call (kernels + views)")
    for stride in (1, 4):
        for n, instances in ((1, 2), (48, 2), (48, 20)):
            masks = batch_of(n, 512, instances)
            ops, views = count(masks, device, stride)
            line = f"  stride {stride}, N {n:2d}, {instances:2d} instances: {ops} + {views} views"
            if device == "cuda":
                line += f", {cuda_kernels(masks, stride)} CUDA kernels and copies"
            print(line)


def numpy_per_sample(masks: np.ndarray, stride: int) -> None:
    for mask in masks:
        sample_targets(mask, stride=stride)


def numpy_into_batch(masks: np.ndarray, stride: int) -> None:
    heat = offset = weight = None
    for k, mask in enumerate(masks):
        h, o, w = sample_targets(mask, stride=stride)
        if heat is None:
            heat = np.empty((len(masks), 1, *h.shape), np.float32)
            offset = np.empty((len(masks), *o.shape), np.float32)
            weight = np.empty((len(masks), *w.shape), np.float32)
        heat[k, 0], offset[k], weight[k] = h, o, w


def workloads() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "48x512x512, 20 instances": batch_of(48, 512, 20),
        "48x64x64, 2-6 instances": np.stack(
            [ellipses(64, 64, int(rng.integers(2, 7)), seed=200 + k) for k in range(48)]
        ),
    }


def print_times(rounds: int) -> None:
    print(f"CPU, {torch.get_num_threads()} torch thread(s): median wall / process CPU ms over {rounds} rounds")
    for name, masks in workloads().items():
        for stride in (1, 4):
            print(f"  {name}, stride {stride}: " + ", ".join(time_kernels(masks, stride, rounds)))


def print_cuda_times(rounds: int) -> None:
    print(f"CUDA, max_id the batch's largest id: median ms over {rounds} calls, host (the call returns) / device")
    for name, masks in workloads().items():
        batch, largest = torch.from_numpy(masks).to("cuda"), int(masks.max())
        for stride in (1, 4):
            host, device = [], []
            for k in range(rounds + 3):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                wall = time.perf_counter()
                start.record()
                render_targets(batch, stride=stride, max_id=largest)
                end.record()
                returned = time.perf_counter() - wall
                torch.cuda.synchronize()
                if k >= 3:  # warm-up: kernels loaded, pinned memory, allocator
                    host.append(returned * 1e3)
                    device.append(start.elapsed_time(end))
            print(f"  {name}, stride {stride}: {np.median(host):.3f} / {np.median(device):.3f}")


def time_kernels(masks: np.ndarray, stride: int, rounds: int) -> list[str]:
    batch, largest = torch.from_numpy(masks), int(masks.max())
    kernels = {
        "numpy": partial(numpy_per_sample, masks, stride),
        "numpy+batch": partial(numpy_into_batch, masks, stride),
        f"twin max_id={largest}": partial(render_targets, batch, stride=stride, max_id=largest),
        "twin max_id=None": partial(render_targets, batch, stride=stride),
    }
    times = {key: ([], []) for key in kernels}
    for fn in kernels.values():
        fn()
    for _ in range(rounds):
        for key, fn in kernels.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[key][0].append(time.perf_counter() - wall)
            times[key][1].append(time.process_time() - cpu)
    return [f"{key} {np.median(w) * 1e3:.1f}/{np.median(c) * 1e3:.1f}" for key, (w, c) in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "meta", "cuda"])
    parser.add_argument("--time", action="store_true", help="also time the kernels (on the CPU, or CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_counts(args.device)
    if args.time and args.device == "cuda":
        print_cuda_times(args.rounds)
    elif args.time:
        print_times(args.rounds)


if __name__ == "__main__":
    main()
